//! The origin side: one pooled hyper-util client per origin, with the connect and
//! first-byte timeouts of its config; active health checks; failover to the next
//! origin in priority order; a cap on concurrent requests per origin; one retry
//! when a connection could not be made (the request never reached the origin).
//! Errors say what the client should get (502, 503 or 504).

use std::error::Error as _;

use crate::error::Kind as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::body::Body;
use crate::config::{HealthCheck, OriginSettings};

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
    /// Every origin is marked unhealthy by its health check: fail fast.
    Unhealthy,
    /// The origin's `max_connections` are all busy and none freed up in time.
    Busy,
}

impl OriginErrorKind {
    /// The status the client gets: 504 for timeouts, 503 when we did not even try,
    /// 502 otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            OriginErrorKind::ConnectTimeout | OriginErrorKind::FirstByteTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            OriginErrorKind::Unhealthy | OriginErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
            OriginErrorKind::Unreachable | OriginErrorKind::Protocol => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OriginErrorKind::Unreachable => "origin-unreachable",
            OriginErrorKind::ConnectTimeout => "connect-timeout",
            OriginErrorKind::FirstByteTimeout => "first-byte-timeout",
            OriginErrorKind::Protocol => "origin-protocol-error",
            OriginErrorKind::Unhealthy => "origin-unhealthy",
            OriginErrorKind::Busy => "origin-busy",
        }
    }

    /// True when the origin itself is down (as opposed to answering badly).
    pub fn origin_down(self) -> bool {
        matches!(
            self,
            OriginErrorKind::Unhealthy
                | OriginErrorKind::Unreachable
                | OriginErrorKind::ConnectTimeout
        )
    }
}

#[derive(Debug)]
pub struct OriginError {
    pub kind: OriginErrorKind,
    pub origin: String,
    /// What went wrong, with the causes' texts (for logs).
    pub message: String,
    /// The client's error, when there was one.
    pub source: Option<hyper_util::client::legacy::Error>,
}

impl crate::error::Kind for OriginErrorKind {
    fn side(&self) -> crate::error::Side {
        match self {
            // Lacquer's own cap on requests in flight to the origin.
            OriginErrorKind::Busy => crate::error::Side::Internal,
            _ => crate::error::Side::Origin,
        }
    }

    /// True when the request certainly never reached the origin, so sending it
    /// again cannot repeat its effect.
    fn retry_safe(&self) -> bool {
        matches!(
            self,
            OriginErrorKind::Unreachable | OriginErrorKind::ConnectTimeout | OriginErrorKind::Busy
        )
    }
}

impl std::error::Error for OriginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
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

/// A response body from an origin; it holds the origin's connection permit until
/// the body is finished or dropped.
pub struct OriginBody {
    inner: Incoming,
    _permit: Option<OwnedSemaphorePermit>,
}

impl HttpBody for OriginBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client bound to one origin.
pub struct Upstream {
    pub settings: OriginSettings,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    healthy: AtomicBool,
    health: watch::Sender<bool>,
    permits: Option<Arc<Semaphore>>,
}

impl Upstream {
    pub fn new(settings: OriginSettings) -> Upstream {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        // https origins use their TLS config (webpki roots + optional CA); plain http
        // origins never start a handshake.
        let tls = (*settings.tls).clone();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(if settings.keepalive { usize::MAX } else { 0 })
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let permits = (settings.max_connections > 0)
            .then(|| Arc::new(Semaphore::new(settings.max_connections)));
        Upstream {
            settings,
            client,
            healthy: AtomicBool::new(true),
            health: watch::channel(true).0,
            permits,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Watches this origin's health.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.health.subscribe()
    }

    fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                info!(origin = %self.settings.name, "origin is healthy again");
            } else {
                warn!(origin = %self.settings.name, "origin is unhealthy");
            }
            self.health.send_replace(healthy);
        }
    }

    fn error(&self, kind: OriginErrorKind, message: String) -> OriginError {
        OriginError {
            kind,
            origin: self.settings.name.clone(),
            message,
            source: None,
        }
    }

    /// Sends a request (its URI already points at this origin) and waits for the
    /// response head, within the connect + first-byte timeouts.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<OriginBody>, OriginError> {
        let permit = match &self.permits {
            None => None,
            Some(sem) => match tokio::time::timeout(
                self.settings.connect_timeout,
                sem.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(p)) => Some(p),
                _ => {
                    let n = self.settings.max_connections;
                    return Err(
                        self.error(OriginErrorKind::Busy, format!("all {n} connections busy"))
                    );
                }
            },
        };
        let deadline = self.settings.connect_timeout + self.settings.first_byte_timeout;
        match tokio::time::timeout(deadline, self.client.request(req)).await {
            Err(_) => Err(self.error(
                OriginErrorKind::FirstByteTimeout,
                format!("no response within {deadline:?}"),
            )),
            Ok(Ok(res)) => Ok(res.map(|inner| OriginBody {
                inner,
                _permit: permit,
            })),
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
                let kind = match (e.is_connect(), timed_out) {
                    (true, true) => OriginErrorKind::ConnectTimeout,
                    (true, false) => OriginErrorKind::Unreachable,
                    (false, _) => OriginErrorKind::Protocol,
                };
                let mut error = self.error(kind, message);
                error.source = Some(e);
                Err(error)
            }
        }
    }

    /// One health probe: a GET of the check path within the check's timeout.
    async fn probe(&self, check: &HealthCheck) -> bool {
        let s = &self.settings;
        let uri = format!(
            "{}://{}{}{}",
            s.scheme, s.authority, s.base_path, check.path
        );
        let Ok(uri) = uri.parse::<Uri>() else {
            return false;
        };
        let mut req = Request::new(crate::body::empty());
        *req.uri_mut() = uri;
        if let Ok(host) = http::HeaderValue::from_str(s.authority.as_str()) {
            req.headers_mut().insert(http::header::HOST, host);
        }
        let fut = async {
            let res = self.client.request(req).await.ok()?;
            let status = res.status();
            // Drain the body so the connection can be reused.
            let _ = res.into_body().collect().await;
            Some(status)
        };
        match tokio::time::timeout(check.timeout, fut).await {
            Ok(Some(status)) => match check.expect_status {
                Some(want) => status.as_u16() == want,
                None => status.is_success() || status.is_redirection(),
            },
            _ => false,
        }
    }
}

/// The origins of a site, in priority order.
pub struct Origins {
    list: Vec<Arc<Upstream>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Health-check tasks; they stop when these origins are replaced (reload).
    checks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Origins {
    fn drop(&mut self) {
        if let Ok(tasks) = self.checks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

impl Origins {
    pub fn new(settings: &[OriginSettings], metrics: Arc<crate::metrics::Metrics>) -> Origins {
        Origins {
            list: settings
                .iter()
                .cloned()
                .map(|s| Arc::new(Upstream::new(s)))
                .collect(),
            metrics,
            checks: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn list(&self) -> &[Arc<Upstream>] {
        &self.list
    }

    /// True when health checks say no origin can take requests.
    pub fn all_unhealthy(&self) -> bool {
        self.list.iter().all(|u| !u.is_healthy())
    }

    /// The order to try origins in: healthy ones by priority. Empty when all are down.
    fn candidates(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.list.iter().filter(|u| u.is_healthy())
    }

    /// Sends a request to the first healthy origin. `build` makes the request for a
    /// given origin (it returns `None` once it cannot make another, e.g. a streamed
    /// body already sent). When `retry` is set and the request certainly never reached
    /// the origin (connection refused or timed out, all connections busy), it is tried
    /// once more, on the next healthy origin if there is one.
    pub async fn send(
        &self,
        mut build: impl FnMut(&Upstream) -> Option<Request<Body>>,
        retry: bool,
    ) -> Result<(Response<OriginBody>, &Upstream), OriginError> {
        let candidates: Vec<&Arc<Upstream>> = self.candidates().collect();
        let Some(first) = candidates.first() else {
            let name = self
                .list
                .first()
                .map(|u| u.settings.name.clone())
                .unwrap_or_default();
            return Err(OriginError {
                kind: OriginErrorKind::Unhealthy,
                origin: name,
                message: "every origin is failing its health check".into(),
                source: None,
            });
        };
        let attempts = if retry { 2 } else { 1 };
        let mut last = None;
        for attempt in 0..attempts {
            let upstream = if attempt == 0 {
                first
            } else {
                candidates.get(1).unwrap_or(first)
            };
            let Some(req) = build(upstream) else { break };
            let started = std::time::Instant::now();
            let result = upstream.send(req).await;
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            self.metrics.origin_response(
                &upstream.settings.name,
                status,
                started.elapsed().as_secs_f64(),
            );
            match result {
                Ok(res) => return Ok((res, upstream)),
                Err(e) if e.kind.retry_safe() && attempt + 1 < attempts => {
                    warn!(error = %e, "origin connection failed; retrying once");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| OriginError {
            kind: OriginErrorKind::Protocol,
            origin: first.settings.name.clone(),
            message: "request could not be built".into(),
            source: None,
        }))
    }

    /// Starts the active health checks of the origins that have one (they run until
    /// these `Origins` are dropped).
    pub fn spawn_health_checks(&self) {
        let mut tasks = Vec::new();
        for upstream in &self.list {
            let Some(check) = upstream.settings.health_check.clone() else {
                continue;
            };
            let upstream = upstream.clone();
            tasks.push(tokio::spawn(async move {
                let mut interval = tokio::time::interval(check.interval);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let (mut ok_run, mut fail_run) = (0u32, 0u32);
                loop {
                    interval.tick().await;
                    if upstream.probe(&check).await {
                        ok_run += 1;
                        fail_run = 0;
                        if ok_run >= check.rise {
                            upstream.set_healthy(true);
                        }
                    } else {
                        fail_run += 1;
                        ok_run = 0;
                        if fail_run >= check.fall {
                            upstream.set_healthy(false);
                        }
                    }
                }
            }));
        }
        if let Ok(mut checks) = self.checks.lock() {
            checks.extend(tasks);
        }
    }
}
