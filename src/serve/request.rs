//! What a request carries along its way: who sent it ([`ClientInfo`]), and its
//! context once keyed ([`Ctx`]): method, target, fields, key, directives, ids and
//! the time it spent waiting for the origin. Plain data; no I/O.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue, HOST};
use http::{Method, Uri, Version};

use crate::directives::Directives;
use crate::key::CacheKey;

/// Who sent the request, as seen by the listener.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// "http" or "https": the scheme the client used.
    pub scheme: &'static str,
    /// The origin requests this client's connection may have in flight at once
    /// (`server.max_origin_requests_per_connection`; `None`: no bound).
    pub budget: Option<Arc<tokio::sync::Semaphore>>,
}

impl ClientInfo {
    /// A client with no bound on its origin requests (tests, internal callers).
    pub fn new(addr: SocketAddr, scheme: &'static str) -> ClientInfo {
        ClientInfo {
            addr,
            scheme,
            budget: None,
        }
    }
}

/// What a request needs to know about itself along the way (its body excepted).
#[derive(Clone)]
pub(crate) struct Ctx {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub client: ClientInfo,
    /// The host the client asked for, normalized (what keys use), when that
    /// differs from [`Ctx::host`]: see [`Ctx::host_norm`].
    pub host_normalized: Option<String>,
    pub key: CacheKey,
    pub req_dirs: Directives,
    /// This request's id in logs (a process-wide counter).
    pub request_id: u64,
    /// No field that can change how a stored response is answered (conditional or
    /// range fields, RFC 9110 §13.1, §14.2): a fresh 200 is served as stored.
    pub plain: bool,
    /// Time spent waiting for the origin's response head, in microseconds (a flight
    /// task fetching on this request's behalf reports it back).
    pub origin_micros: OriginTime,
    /// Sent by a node of this fleet (an edge to its shield): the answer keeps its
    /// tag fields, and is never the cached rendering of a plain hit.
    pub peer: bool,
}

/// The host a request asked for: its target's authority, else its (first) `Host`
/// field when that is visible ASCII, else empty.
pub(crate) fn request_host<'a>(uri: &'a Uri, host_field: Option<&'a HeaderValue>) -> &'a str {
    match uri.authority() {
        Some(a) => a.as_str(),
        None => host_field.and_then(|v| v.to_str().ok()).unwrap_or_default(),
    }
}

/// Microseconds spent waiting for the origin. An atomic so that it can be set
/// through a shared `&Ctx`; cloning copies the value (no allocation per request).
#[derive(Default)]
pub(crate) struct OriginTime(std::sync::atomic::AtomicU64);

impl OriginTime {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set(&self, micros: u64) {
        self.0.store(micros, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clone for OriginTime {
    fn clone(&self) -> Self {
        OriginTime(std::sync::atomic::AtomicU64::new(self.get()))
    }
}

impl Ctx {
    /// The host the client asked for, as received: the request target's authority,
    /// else the `Host` field (empty when neither is there, or when the field is not
    /// visible ASCII or was stripped). Read from the request, not copied per request.
    pub(crate) fn host(&self) -> &str {
        request_host(&self.uri, self.headers.get(HOST))
    }

    /// The normalized host (what keys use).
    pub(crate) fn host_norm(&self) -> &str {
        self.host_normalized.as_deref().unwrap_or(self.host())
    }

    pub(crate) fn record_origin_time(&self, since: std::time::Instant) {
        let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.origin_micros.set(micros);
    }
}
