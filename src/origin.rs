//! The origin client: one pooled hyper-util client per origin, with the connect
//! and first-byte timeouts of its config, and errors that say which side failed
//! and what the client should get (502 or 504).

use std::error::Error as _;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::OriginSettings;

/// What went wrong talking to an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginErrorKind {
    /// Connection refused, host unreachable, DNS failure.
    Unreachable,
    /// No connection within `connect_timeout`.
    ConnectTimeout,
    /// No response head within `first_byte_timeout`.
    FirstByteTimeout,
    /// The connection broke or the origin spoke invalid HTTP.
    Protocol,
}

impl OriginErrorKind {
    /// The status the client gets: 504 for timeouts, 502 otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            OriginErrorKind::ConnectTimeout | OriginErrorKind::FirstByteTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            OriginErrorKind::Unreachable | OriginErrorKind::Protocol => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OriginErrorKind::Unreachable => "origin-unreachable",
            OriginErrorKind::ConnectTimeout => "connect-timeout",
            OriginErrorKind::FirstByteTimeout => "first-byte-timeout",
            OriginErrorKind::Protocol => "origin-protocol-error",
        }
    }
}

#[derive(Debug)]
pub struct OriginError {
    pub kind: OriginErrorKind,
    pub origin: String,
    pub message: String,
}

impl std::fmt::Display for OriginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "origin `{}`: {}: {}",
            self.origin,
            self.kind.as_str(),
            self.message
        )
    }
}

/// A client bound to one origin.
pub struct Upstream {
    pub settings: OriginSettings,
    client: Client<HttpConnector, Body>,
}

impl Upstream {
    pub fn new(settings: OriginSettings) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Upstream { settings, client }
    }

    /// Sends a request (its URI already points at this origin) and waits for the
    /// response head, within the first-byte timeout.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, OriginError> {
        let err = |kind, message: String| OriginError {
            kind,
            origin: self.settings.name.clone(),
            message,
        };
        let deadline = self.settings.connect_timeout + self.settings.first_byte_timeout;
        match tokio::time::timeout(deadline, self.client.request(req)).await {
            Err(_) => Err(err(
                OriginErrorKind::FirstByteTimeout,
                format!("no response within {deadline:?}"),
            )),
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) => {
                let mut message = e.to_string();
                let mut source = e.source();
                let mut timed_out = false;
                while let Some(s) = source {
                    message.push_str(": ");
                    message.push_str(&s.to_string());
                    if let Some(io) = s.downcast_ref::<std::io::Error>() {
                        timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
                    }
                    source = s.source();
                }
                let kind = if e.is_connect() {
                    if timed_out {
                        OriginErrorKind::ConnectTimeout
                    } else {
                        OriginErrorKind::Unreachable
                    }
                } else {
                    OriginErrorKind::Protocol
                };
                Err(err(kind, message))
            }
        }
    }
}
