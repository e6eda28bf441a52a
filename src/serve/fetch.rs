//! Going to the origin for a GET/HEAD: misses and validations, coalesced so that a
//! burst costs the origin one request; stale-while-revalidate in the background;
//! stale-if-error when the origin fails; hit-for-miss for what cannot be shared.
//!
//! The shape: [`Fetcher::exchange`] talks to the origin and classifies the answer
//! ([`Exchange`]), touching nothing; [`Fetcher::settle`] applies it to the store and
//! decides who gets what; [`Fetcher::answer_shared`] turns a flight's [`Shared`]
//! result into one client's response (its conditionals, HEAD, Vary, stale rules).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, AGE, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, CONTENT_TYPE,
    DATE, ETAG, EXPECT, HOST, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, LOCATION,
    RANGE, TRANSFER_ENCODING,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::{debug, warn};

use crate::body::{self, Body};
use crate::coalesce::{FlightGuard, Flights, Interest, Join, Room, Shared, SharedBody};
use crate::conditional::{self, RangeAnswer};
use crate::config::Settings;
use crate::directives::Directives;
use crate::forward;
use crate::freshness::{self, NotStored, Reuse, ValidateReason};
use crate::key::{self, CacheKey, Variant};
use crate::metrics::Metrics;
use crate::origin::{OriginBody, OriginError, Origins, Upstream};
use crate::outcome::{Fwd, Outcome};
use crate::render::{
    self, content_length, content_length_value, plain, response, OutcomeLabel, VariantInfo,
    CACHE_STATUS,
};
use crate::request::{ClientInfo, Ctx};
use crate::store::{Fetched, Lookup, Store, StoredResponse};

/// One trip to the origin on behalf of a request (and whoever waits on it).
#[derive(Clone)]
pub(crate) struct Job {
    pub ctx: Ctx,
    pub stale: Option<Arc<StoredResponse>>,
    pub fwd: Fwd,
    /// For a flight's fetch: whether anybody still wants it. A fetch nobody wants
    /// by the time it may go to the origin (its clients left while it waited for
    /// their connection's budget) is not sent.
    pub interest: Option<Arc<Interest>>,
}

/// The origin's answer, classified.
enum Exchange {
    /// No usable answer: transport failure, or a 5xx.
    Failed {
        status: StatusCode,
        detail: &'static str,
        down: bool,
        response: Option<Response<Body>>,
    },
    /// 304 to our validation: the stale entry with refreshed headers.
    NotModified {
        updated: Fetched,
        verdict: Result<(), NotStored>,
    },
    /// A response that may be stored: its head as an entry (empty body) and the body.
    Storable {
        entry: Fetched,
        body: OriginBody,
        len: Option<u64>,
    },
    /// A response that may not be stored.
    NotStorable {
        response: Response<Body>,
        status: StatusCode,
        reason: NotStored,
    },
}

/// What the request that started a flight gets.
pub(crate) enum Own {
    Shared(Shared),
    Response(Response<Body>),
}

/// Reasons that belong to the URL's responses (remembered as hit-for-miss), as
/// opposed to reasons that belong to one request (`Authorization`, request `no-store`).
fn uncacheable_for_everyone(reason: NotStored) -> bool {
    !matches!(
        reason,
        NotStored::Authorization
            | NotStored::RequestNoStore
            | NotStored::Range
            | NotStored::Incomplete
            | NotStored::Credentials
    )
}

/// What became of a request sent to the origins ([`Fetcher::to_origin`]).
pub(crate) enum Sent {
    Answered(Response<crate::origin::OriginBody>),
    Failed(OriginError),
    /// Not sent: nobody waited for it any more.
    Abandoned,
}

/// The store and the origins: decides reuse (`cached`), serves stored responses,
/// fetches (coalesced, in the background, or alone), passes other methods through,
/// and keeps the hit-for-miss memory. Everything it answers leaves through
/// render.rs.
pub struct Fetcher {
    /// The configuration in force (the proxy swaps it whole on reload).
    config: Arc<arc_swap::ArcSwap<Settings>>,
    pub(crate) store: Arc<Store>,
    origins: arc_swap::ArcSwap<Origins>,
    /// Fetches in progress, for coalescing.
    pub(crate) flights: Arc<Flights>,
    /// Keys whose responses could not be shared recently (hit-for-miss).
    pub(crate) uncacheable: moka::sync::Cache<u128, ()>,
    pub(crate) metrics: Arc<Metrics>,
    /// Origin requests waiting for their client connection's budget, observable.
    budget_waits: tokio::sync::watch::Sender<usize>,
    /// In a fleet: the newest purge applied here, sent on every origin request.
    purged_through: Option<tokio::sync::watch::Receiver<crate::purge::StreamId>>,
}

/// One origin request waiting for its connection's budget ([`Fetcher::origin_slot`]).
struct Waiting<'a>(&'a tokio::sync::watch::Sender<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Fetcher {
    pub(crate) fn new(
        config: Arc<arc_swap::ArcSwap<Settings>>,
        store: Arc<Store>,
        flights: Arc<Flights>,
        metrics: Arc<Metrics>,
        purged_through: Option<tokio::sync::watch::Receiver<crate::purge::StreamId>>,
    ) -> Fetcher {
        let settings = config.load();
        let origins =
            arc_swap::ArcSwap::from_pointee(Origins::new(&settings.origins, metrics.clone()));
        let uncacheable = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(
                settings
                    .uncacheable_ttl
                    .max(std::time::Duration::from_millis(1)),
            )
            .build();
        drop(settings);
        Fetcher {
            config,
            store,
            origins,
            flights,
            uncacheable,
            metrics,
            budget_waits: tokio::sync::watch::channel(0).0,
            purged_through,
        }
    }

    /// The configuration for this moment (an `arc-swap` guard: no reference-count
    /// traffic on the hot path).
    pub(crate) fn cfg(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.config.load()
    }

    /// The configuration in force (held across an origin fetch).
    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.config.load_full()
    }

    /// The origins and their health.
    pub fn origins(&self) -> Arc<Origins> {
        self.origins.load_full()
    }

    /// New origins (a reload); the old ones go when the last request using them is
    /// done.
    pub(crate) fn set_origins(&self, origins: Origins) {
        self.origins.store(Arc::new(origins));
    }

    /// Origin requests waiting for a slot of their client connection's budget.
    pub fn budget_waits(&self) -> tokio::sync::watch::Receiver<usize> {
        self.budget_waits.subscribe()
    }

    /// A slot of the client connection's budget of origin requests, held while the
    /// request is at the origin (a fetch that goes on after its client left, or
    /// whose HTTP/2 stream was reset, still holds it): one connection cannot have
    /// more origin requests in flight than its budget, however many streams it
    /// opens and resets.
    pub(crate) async fn origin_slot(
        &self,
        client: &ClientInfo,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let budget = client.budget.clone()?;
        if let Ok(permit) = budget.clone().try_acquire_owned() {
            return Some(permit);
        }
        self.budget_waits.send_modify(|n| *n += 1);
        // Counted out however the wait ends: a request whose stream is reset drops
        // this future mid-wait.
        let _waiting = Waiting(&self.budget_waits);
        budget.acquire_owned().await.ok()
    }

    /// Goes to the origins with one request (`build` makes it for the origin
    /// chosen; `retry`: it may be sent again if it never left), within the client
    /// connection's budget, and records how long the answer's head took. A flight's
    /// fetch that nobody wants any more once it has its slot is not sent.
    pub(crate) async fn to_origin(
        &self,
        ctx: &Ctx,
        build: impl FnMut(&Upstream) -> Option<Request<Body>>,
        retry: bool,
        interest: Option<&crate::coalesce::Interest>,
    ) -> Sent {
        let slot = self.origin_slot(&ctx.client).await;
        if interest.is_some_and(|i| !i.wanted()) {
            return Sent::Abandoned;
        }
        let sent = std::time::Instant::now();
        let origins = self.origins();
        let result = origins.send(build, retry).await;
        drop(slot);
        ctx.record_origin_time(sent);
        match result {
            Ok((res, _)) => Sent::Answered(res),
            Err(e) => Sent::Failed(e),
        }
    }

    /// GET and HEAD: the answer from the store when there is one (or a 504 for
    /// only-if-cached); otherwise what going forward needs: the stored response to
    /// validate, if any, and why. The one place that decides reuse (a waiter whose
    /// variant did not come back decides here too).
    pub(crate) fn cached(
        self: &Arc<Self>,
        ctx: &Ctx,
        cfg: &Settings,
    ) -> Result<Response<Body>, (Option<Arc<StoredResponse>>, Fwd)> {
        let now = SystemTime::now();
        let found = match self.store.lookup(&ctx.key, &ctx.headers) {
            Lookup::Hit(entry) => Ok(entry),
            // Soft purge: from now on the entry counts as expired (stale content only).
            Lookup::SoftPurged(entry) => Ok(Arc::new(
                entry.restamped(std::time::Duration::ZERO, entry.fetched_gen),
            )),
            Lookup::VaryMiss => Err((None, Fwd::VaryMiss)),
            Lookup::Miss => Err((None, Fwd::UriMiss)),
            // Fetched before this node may have missed purges: reused only once the
            // origin confirms it (a conditional request; one per key in flight).
            Lookup::MustRevalidate(entry) => Err((Some(entry), Fwd::Stale)),
        };
        let (stale, fwd) = match found {
            Ok(entry) => {
                let age = entry.age(now);
                match freshness::reuse(
                    age,
                    entry.lifetime(),
                    &entry.directives.get(),
                    &ctx.req_dirs,
                    &cfg.policy,
                ) {
                    Reuse::Fresh => {
                        self.maybe_refresh_early(ctx, &entry, age, cfg.early_refresh);
                        return Ok(self.serve_fresh(ctx, &entry, now, age, cfg));
                    }
                    Reuse::StaleAccepted => {
                        return Ok(self.serve_stored(
                            ctx,
                            &entry,
                            Outcome::Hit { stale: true },
                            now,
                        ))
                    }
                    Reuse::Validate(ValidateReason::Stale)
                        if !ctx.req_dirs.only_if_cached
                            && freshness::within_stale_window(
                                age,
                                entry.lifetime(),
                                freshness::swr_window(
                                    &entry.directives.get(),
                                    cfg.stale_while_revalidate,
                                ),
                            ) =>
                    {
                        // RFC 5861 §3: serve stale now, revalidate once in the background.
                        self.background_revalidate(ctx, entry.clone());
                        return Ok(self.serve_stored(
                            ctx,
                            &entry,
                            Outcome::StaleWhileRevalidate,
                            now,
                        ));
                    }
                    Reuse::Validate(ValidateReason::Request) => (Some(entry), Fwd::Request),
                    Reuse::Validate(_) => (Some(entry), Fwd::Stale),
                }
            }
            Err(forward) => forward,
        };
        if ctx.req_dirs.only_if_cached {
            // RFC 9111 §5.2.1.7: nothing usable without going forward.
            let res = plain(
                StatusCode::GATEWAY_TIMEOUT,
                "504 Gateway Timeout: not in cache (only-if-cached)\n",
            );
            return Ok(self.finish(ctx, res, &Outcome::OnlyIfCached, None));
        }
        Err((stale, fwd))
    }

    /// Early refresh: during the last `early_refresh` of an entry's freshness, a hit
    /// triggers a background revalidation with a probability that grows towards
    /// expiry, so hot objects are refreshed before anyone has to wait for them.
    fn maybe_refresh_early(
        self: &Arc<Self>,
        ctx: &Ctx,
        entry: &Arc<StoredResponse>,
        age: std::time::Duration,
        window: std::time::Duration,
    ) {
        if window.is_zero() || entry.lifetime() <= age {
            return;
        }
        let left = entry.lifetime() - age;
        if left < window && fastrand::f64() > left.as_secs_f64() / window.as_secs_f64() {
            self.background_revalidate(ctx, entry.clone());
        }
    }

    /// Everything else: forwarded with its body, never stored.
    pub(crate) async fn pass(&self, ctx: &Ctx, body: Incoming) -> Response<Body> {
        let method = ctx.method.clone();
        // The body streams: the request can be built once, so no retry.
        let mut body = Some(body::boxed(body));
        let build = |up: &Upstream| {
            body.take()
                .and_then(|b| self.origin_request(up, ctx, method.clone(), b))
        };
        let res = match self.to_origin(ctx, build, false, None).await {
            Sent::Answered(res) => res,
            Sent::Failed(e) => return self.origin_error(ctx, e, Fwd::Method),
            Sent::Abandoned => {
                return self.error_answer(StatusCode::BAD_GATEWAY, "abandoned", Fwd::Method)
            }
        };
        let (mut rparts, rbody) = res.into_parts();
        self.clean_origin_headers(&mut rparts.headers, SystemTime::now());
        let status = rparts.status;
        // RFC 9111 §4.4: a non-error response to an unsafe method invalidates the
        // target URI and same-origin Location / Content-Location.
        if !method.is_safe() && (status.is_success() || status.is_redirection()) {
            self.store.invalidate(&ctx.key);
            for name in [&LOCATION, &CONTENT_LOCATION] {
                if let Some(k) = rparts
                    .headers
                    .get(name)
                    .and_then(|v| self.same_origin_key(ctx, v))
                {
                    self.store.invalidate(&k);
                }
            }
        }
        let outcome = Outcome::forwarded(Fwd::Method, status.as_u16(), None);
        self.finish(
            ctx,
            response(status, rparts.headers, body::boxed(rbody)),
            &outcome,
            None,
        )
    }

    /// The key of a `Location`/`Content-Location` value, if it names the same origin.
    fn same_origin_key(&self, ctx: &Ctx, value: &HeaderValue) -> Option<CacheKey> {
        let v = value.to_str().ok()?.trim();
        let rules = &self.cfg().key_rules;
        if v.starts_with('/') && !v.starts_with("//") {
            return Some(rules.key(ctx.client.scheme, ctx.host_norm(), v, &ctx.headers));
        }
        let (scheme, host, pq) = key::absolute_url(v)?;
        let same = scheme == ctx.client.scheme && host == ctx.host_norm();
        same.then(|| rules.key(scheme, &host, &pq, &ctx.headers))
    }

    /// Builds the request to the origin: its URI, hop-by-hop fields removed, `Host`,
    /// `Via` and `X-Forwarded-*` set.
    pub(crate) fn origin_request(
        &self,
        upstream: &Upstream,
        ctx: &Ctx,
        method: Method,
        body: Body,
    ) -> Option<Request<Body>> {
        let o = &upstream.settings;
        let pq = ctx.uri.path_and_query().map_or("/", |p| p.as_str());
        // The origin is sent the target the key was built from (normalized escapes,
        // the key rule's query: dropped parameters never reach it), so that what it
        // answers is what the key stands for.
        let path = match key::target(&ctx.key.full) {
            Some(target) if pq != "*" => format!("{}{}", o.base_path, target),
            _ => pq.to_string(),
        };
        let uri = Uri::builder()
            .scheme(o.scheme.clone())
            .authority(o.authority.clone())
            .path_and_query(path)
            .build();
        let uri = uri.ok()?;
        let mut headers = ctx.headers.clone();
        forward::strip_hop_by_hop(&mut headers);
        headers.remove(EXPECT); // 100-continue was handled on the client hop
                                // The host as the key has it (case, trailing dot and default port
                                // normalized), never the raw spelling.
        let host = if o.preserve_host && !ctx.host_norm().is_empty() {
            HeaderValue::from_str(ctx.host_norm()).ok()
        } else {
            None
        };
        let host = host.or_else(|| HeaderValue::from_str(o.authority.as_str()).ok());
        if let Some(h) = host {
            headers.insert(HOST, h);
        }
        forward::set_forwarded(
            &mut headers,
            ctx.client.addr.ip(),
            ctx.client.scheme,
            Some(ctx.host_norm()).filter(|h| !h.is_empty()),
        );
        if let Some(via) = forward::via_value(ctx.version, &self.cfg().via) {
            forward::append_via(&mut headers, &via);
        }
        if let Some(through) = &self.purged_through {
            // In a fleet: the node behind (a shield) catches up with this first.
            let id = through.borrow().to_string();
            if let Ok(v) = HeaderValue::from_str(&id) {
                headers.insert(crate::purge::PURGED_THROUGH.clone(), v);
            }
        }
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Some(req)
    }

    /// Hop-by-hop fields go; a missing `Date` is added (RFC 9110 §6.6.1).
    pub(crate) fn clean_origin_headers(&self, headers: &mut HeaderMap, received: SystemTime) {
        // RFC 9112 §6.3: with Transfer-Encoding, Content-Length is ignored (the body
        // was framed by the encoding), so it must not be passed on, nor stored: a
        // stored response's length is always its body's.
        if headers.contains_key(TRANSFER_ENCODING) {
            headers.remove(CONTENT_LENGTH);
        }
        forward::strip_hop_by_hop(headers);
        if !headers.contains_key(DATE) {
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(received)) {
                headers.insert(DATE, v);
            }
        }
    }

    /// A response just received from the origin, on the cached path: the client's
    /// conditionals are answered here, and HEAD gets no body.
    pub(crate) fn respond_fresh(
        &self,
        ctx: &Ctx,
        res: Response<Body>,
        outcome: &Outcome,
        ttl: Option<i64>,
    ) -> Response<Body> {
        let (parts, body) = res.into_parts();
        if conditional::not_modified(&ctx.headers, parts.status, &parts.headers) {
            let mut headers = conditional::not_modified_headers(&parts.headers);
            if let Some(age) = parts.headers.get(AGE) {
                headers.insert(AGE, age.clone());
            }
            let res = response(StatusCode::NOT_MODIFIED, headers, body::empty());
            return self.finish(ctx, res, outcome, ttl);
        }
        let body = if ctx.method == Method::HEAD {
            body::empty()
        } else {
            body
        };
        self.finish(
            ctx,
            response(parts.status, parts.headers, body),
            outcome,
            ttl,
        )
    }

    /// Serves a stored response: 304 for matching conditionals, 206/416 for ranges,
    /// `Age` always (RFC 9111 §5.1).
    /// A fresh hit. The common case (a plain GET of a stored 200) reuses the
    /// entry's cached rendering of the head when it was made for this second and
    /// this configuration; anything else, or a stale rendering, goes through
    /// [`Fetcher::serve_stored`], whose result becomes the new rendering. Both paths
    /// give the same headers (tested in tests/caching.rs).
    fn serve_fresh(
        &self,
        ctx: &Ctx,
        entry: &StoredResponse,
        now: SystemTime,
        age: std::time::Duration,
        cfg: &Settings,
    ) -> Response<Body> {
        if !(ctx.plain
            && ctx.method == Method::GET
            && entry.status == StatusCode::OK
            && !cfg.debug_headers)
        {
            return self.serve_stored(ctx, entry, Outcome::Hit { stale: false }, now);
        }
        let age_secs = freshness::age_header_secs(age);
        let ttl = freshness::ttl_secs(entry.lifetime(), age);
        let res = match entry.rendering(cfg.generation, age_secs, ttl) {
            Some(headers) => {
                let outcome = Outcome::Hit { stale: false };
                self.metrics.request(outcome.label());
                let mut res = response(entry.status, headers, body::full(entry.body()));
                if cfg.access_log {
                    res.extensions_mut().insert(OutcomeLabel(outcome.label()));
                }
                res
            }
            None => {
                let res = self.serve_stored(ctx, entry, Outcome::Hit { stale: false }, now);
                if entry.rendering_wanted(age_secs) {
                    let mut head = res.headers().clone();
                    // hyper writes the length of a body it knows, without a field
                    // to clone, look through and drop on every reuse.
                    let length = head.get(CONTENT_LENGTH).and_then(content_length_value);
                    if length == Some(entry.body_len() as u64) {
                        head.remove(CONTENT_LENGTH);
                    }
                    entry.keep_rendering(cfg.generation, age_secs, ttl, head);
                }
                res
            }
        };
        if cfg!(debug_assertions) {
            // Debug builds (every test) check the cached rendering against a new one.
            let mut again = self.stored_response(
                ctx,
                entry,
                entry.headers().to_map(),
                HeaderValue::from(age_secs),
            );
            render::finish_head(
                again.headers_mut(),
                &Outcome::Hit { stale: false },
                Some(ttl),
                cfg,
                false,
            );
            if !res.headers().contains_key(CONTENT_LENGTH) {
                // Left to hyper, which writes the body's length.
                if let Some(length) = again.headers_mut().remove(CONTENT_LENGTH) {
                    assert_eq!(content_length_value(&length), Some(entry.body_len() as u64));
                }
            }
            assert_eq!(
                res.headers(),
                again.headers(),
                "cached hit rendering is stale"
            );
        }
        res
    }

    pub(crate) fn serve_stored(
        &self,
        ctx: &Ctx,
        entry: &StoredResponse,
        outcome: Outcome,
        now: SystemTime,
    ) -> Response<Body> {
        let age = entry.age(now);
        let ttl = Some(freshness::ttl_secs(entry.lifetime(), age));
        let age_value = HeaderValue::from(freshness::age_header_secs(age));
        let stored = entry.headers().to_map();
        let mut res = if conditional::not_modified(&ctx.headers, entry.status, &stored) {
            let mut headers = conditional::not_modified_headers(&stored);
            headers.insert(AGE, age_value);
            response(StatusCode::NOT_MODIFIED, headers, body::empty())
        } else {
            self.stored_response(ctx, entry, stored, age_value)
        };
        if self.cfg().debug_headers {
            res.extensions_mut()
                .insert(VariantInfo(entry.variant.describe()));
        }
        self.finish(ctx, res, &outcome, ttl)
    }

    /// The full (or ranged) answer from a stored entry, before `finish`.
    fn stored_response(
        &self,
        ctx: &Ctx,
        entry: &StoredResponse,
        mut headers: HeaderMap,
        age_value: HeaderValue,
    ) -> Response<Body> {
        headers.insert(AGE, age_value);
        let len = entry.body_len() as u64;
        let head = ctx.method == Method::HEAD;
        let answer = if entry.status == StatusCode::OK && !head {
            conditional::range(&ctx.headers, &headers, len)
        } else {
            RangeAnswer::Full
        };
        let (status, payload) = match answer {
            RangeAnswer::Full => (entry.status, entry.body()),
            RangeAnswer::Partial { start, end } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                    headers.insert(CONTENT_RANGE, v);
                }
                (
                    StatusCode::PARTIAL_CONTENT,
                    entry.body().slice(start as usize..=end as usize),
                )
            }
            RangeAnswer::Unsatisfiable => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    headers.insert(CONTENT_RANGE, v);
                }
                headers.remove(CONTENT_TYPE);
                (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
            }
        };
        // A stored Content-Length is the stored body's (only complete responses are
        // stored); a partial or synthesized answer gets its own.
        let full_with_length =
            payload.len() == entry.body_len() && headers.contains_key(CONTENT_LENGTH);
        if status != StatusCode::NO_CONTENT
            && status != StatusCode::NOT_MODIFIED
            && !full_with_length
        {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(payload.len()));
        }
        let body = if head {
            body::empty()
        } else {
            body::full(payload)
        };
        response(status, headers, body)
    }

    pub(crate) fn origin_error(&self, ctx: &Ctx, e: OriginError, fwd: Fwd) -> Response<Body> {
        warn!(method = %ctx.method, host = %ctx.host(), uri = %ctx.uri, error = %e, "origin request failed");
        self.error_answer(e.kind.status(), e.kind.as_str(), fwd)
    }

    /// The one error answer ([`render::error_answer`]) with this proxy's settings.
    pub(crate) fn error_answer(
        &self,
        status: StatusCode,
        detail: &'static str,
        fwd: Fwd,
    ) -> Response<Body> {
        render::error_answer(status, detail, fwd, &self.cfg(), &self.metrics)
    }

    /// The last stop of every response ([`render::finish`]).
    pub(crate) fn finish(
        &self,
        ctx: &Ctx,
        res: Response<Body>,
        outcome: &Outcome,
        ttl: Option<i64>,
    ) -> Response<Body> {
        render::finish(res, outcome, ttl, &self.cfg(), &self.metrics, ctx.peer)
    }
}

/// How the cache takes an origin's answer to a GET, before its body arrives.
#[derive(Debug, PartialEq)]
pub(crate) enum Class {
    /// 304 to our validation: the stored entry is refreshed (RFC 9111 §4.3.4).
    NotModified,
    /// 5xx: a failure, for which stale content may stand in (RFC 5861 §4).
    ServerError,
    /// May be stored, with these directives, freshness lifetime and Vary names.
    Storable {
        dirs: Directives,
        lifetime: std::time::Duration,
        names: Vec<http::HeaderName>,
    },
    NotStorable(NotStored),
}

/// Classifies an origin's answer (pure): a 304 to a validation, a server error, or
/// storable unless RFC 9111 §3 forbids it, its declared length is over
/// `limits.0` (`max_object_size`), or it varies on a per-user field the route's
/// Vary rules (`limits.1`) do not allow.
#[allow(clippy::too_many_arguments)]
pub(crate) fn classify(
    req_headers: &HeaderMap,
    req_dirs: &Directives,
    validating: bool,
    status: StatusCode,
    res_headers: &HeaderMap,
    response_time: SystemTime,
    policy: &freshness::Policy,
    limits: (u64, &crate::vary::VaryRules),
) -> Class {
    if status == StatusCode::NOT_MODIFIED && validating {
        return Class::NotModified;
    }
    if status.is_server_error() {
        return Class::ServerError;
    }
    let (dirs, targeted) = freshness::effective_directives(res_headers, policy);
    let (lifetime, _) =
        freshness::freshness_lifetime(status, res_headers, &dirs, targeted, response_time, policy);
    let names = key::vary_names(res_headers).unwrap_or_default();
    let verdict = freshness::storable(
        req_headers,
        req_dirs,
        status,
        res_headers,
        &dirs,
        lifetime,
        policy,
    )
    .and_then(|()| match content_length(res_headers) {
        Some(n) if n > limits.0 => Err(NotStored::TooLarge),
        _ => Ok(()),
    })
    // Vary on Cookie/Authorization/User-Agent: one copy per user; only if allowed.
    .and_then(|()| match limits.1.refused(&names) {
        Some(_) => Err(NotStored::VaryPrivate),
        None => Ok(()),
    });
    match verdict {
        Ok(()) => Class::Storable {
            dirs,
            lifetime,
            names,
        },
        Err(reason) => Class::NotStorable(reason),
    }
}

impl Fetcher {
    /// GET/HEAD that must go forward: coalesced with concurrent requests for the key,
    /// unless the key is known to be uncacheable (then straight to the origin).
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        ctx: &Ctx,
        stale: Option<Arc<StoredResponse>>,
        fwd: Fwd,
    ) -> Response<Body> {
        let job = Job {
            ctx: ctx.clone(),
            stale,
            fwd,
            interest: None,
        };
        // A range request on a miss goes to the origin as is and is not stored.
        if job.stale.is_none() && ctx.headers.contains_key(RANGE) {
            return self.range_pass(ctx).await;
        }
        let res = if self.uncacheable.contains_key(&ctx.key.digest) {
            self.direct(&job).await
        } else {
            self.coalesced(&job).await
        };
        // The origin time measured on the job's (or its flight's) copy of the context.
        ctx.origin_micros.set(job.ctx.origin_micros.get());
        res
    }

    async fn coalesced(self: &Arc<Self>, job: &Job) -> Response<Body> {
        let ctx = &job.ctx;
        match self.flights.join(ctx.key.digest) {
            Join::Leader(guard) => {
                let this = self.clone();
                // Alive while this request waits for the flight.
                let wanted = Arc::new(());
                let flight = Job {
                    interest: Some(Arc::new(guard.interest(&wanted))),
                    ..job.clone()
                };
                // The fetch runs in its own task: it goes on if this client leaves.
                let task = tokio::spawn(async move {
                    let exchange = this.exchange(&flight).await;
                    let own = this.settle(&flight, exchange, Some(guard));
                    (own, flight.ctx.origin_micros.get())
                });
                let finished = task.await;
                drop(wanted);
                match finished {
                    Ok((own, origin_micros)) => {
                        ctx.origin_micros.set(origin_micros);
                        match own {
                            Own::Response(res) => res,
                            Own::Shared(shared) => self.answer_shared(job, shared, false).await,
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "fetch task failed");
                        self.error_answer(StatusCode::BAD_GATEWAY, "fetch-failed", job.fwd)
                    }
                }
            }
            Join::Waiter(mut waiter) => {
                self.metrics.coalesced_waiters.inc();
                match tokio::time::timeout(self.cfg().coalesce_wait, waiter.result()).await {
                    Ok(Some(shared)) => self.answer_shared(job, shared, true).await,
                    Ok(None) => self.error_answer(StatusCode::BAD_GATEWAY, "fetch-failed", job.fwd),
                    Err(_) => {
                        self.error_answer(StatusCode::GATEWAY_TIMEOUT, "coalesce-timeout", job.fwd)
                    }
                }
            }
        }
    }

    /// Stale-while-revalidate and early refresh: one background validation per key.
    pub(crate) fn background_revalidate(self: &Arc<Self>, ctx: &Ctx, entry: Arc<StoredResponse>) {
        if let Join::Leader(guard) = self.flights.join(ctx.key.digest) {
            self.metrics.background_revalidations.inc();
            let this = self.clone();
            let job = Job {
                ctx: ctx.clone(),
                stale: Some(entry),
                fwd: Fwd::Stale,
                interest: None,
            };
            tokio::spawn(async move {
                let exchange = this.exchange(&job).await;
                if let Exchange::Failed { detail, .. } = &exchange {
                    debug!(key = %job.ctx.key.full, detail, "background revalidation failed; stale entry kept");
                }
                let _ = this.settle(&job, exchange, Some(guard));
            });
        }
    }

    /// A fetch nobody else shares (hit-for-miss, Vary mismatch after a flight).
    async fn direct(self: &Arc<Self>, job: &Job) -> Response<Body> {
        let exchange = self.exchange(job).await;
        match self.settle(job, exchange, None) {
            Own::Response(res) => res,
            Own::Shared(shared) => Box::pin(self.answer_shared(job, shared, false)).await,
        }
    }

    async fn range_pass(&self, ctx: &Ctx) -> Response<Body> {
        let build = |up: &Upstream| self.origin_request(up, ctx, ctx.method.clone(), body::empty());
        match self.to_origin(ctx, build, true, None).await {
            Sent::Answered(res) => {
                let (mut parts, rbody) = res.into_parts();
                self.clean_origin_headers(&mut parts.headers, SystemTime::now());
                let outcome =
                    Outcome::forwarded(Fwd::Partial, parts.status.as_u16(), Some(NotStored::Range));
                self.finish(
                    ctx,
                    response(parts.status, parts.headers, body::boxed(rbody)),
                    &outcome,
                    None,
                )
            }
            Sent::Failed(e) => self.origin_error(ctx, e, Fwd::Partial),
            Sent::Abandoned => {
                self.error_answer(StatusCode::BAD_GATEWAY, "abandoned", Fwd::Partial)
            }
        }
    }

    /// Talks to the origin and classifies the answer. Touches no shared state.
    async fn exchange(&self, job: &Job) -> Exchange {
        let ctx = &job.ctx;
        let cfg = self.settings(); // held across the origin fetch
        let policy = &cfg.policy;
        let stale = job.stale.clone();
        let build = |up: &Upstream| {
            let mut oreq = self.origin_request(up, ctx, Method::GET, body::empty())?;
            // Client validators are answered by us from the full response; ours go instead.
            let h = oreq.headers_mut();
            for name in [&IF_NONE_MATCH, &IF_MODIFIED_SINCE, &IF_RANGE, &RANGE] {
                h.remove(name);
            }
            if let Some(s) = &stale {
                let stored = s.headers().to_map();
                if let Some(etag) = stored.get(ETAG) {
                    h.insert(IF_NONE_MATCH, etag.clone());
                }
                if let Some(lm) = stored.get(LAST_MODIFIED) {
                    h.insert(IF_MODIFIED_SINCE, lm.clone());
                }
            }
            Some(oreq)
        };

        // The purge generation before the request leaves: a purge after this point
        // covers whatever comes back (purge/mod.rs).
        let fetched_gen = self.store.generation();
        let request_time = SystemTime::now();
        // GET without a body can be rebuilt: one retry on a connection failure.
        let res = match self
            .to_origin(ctx, build, true, job.interest.as_deref())
            .await
        {
            Sent::Answered(res) => res,
            Sent::Abandoned => {
                debug!(key = %ctx.key.full, "fetch abandoned before it was sent: nobody waits for it");
                return Exchange::Failed {
                    status: StatusCode::BAD_GATEWAY,
                    detail: "abandoned",
                    down: false,
                    response: None,
                };
            }
            Sent::Failed(e) => {
                warn!(request_id = ctx.request_id, host = %ctx.host(), uri = %ctx.uri, error = %e, "origin request failed");
                return Exchange::Failed {
                    status: e.kind.status(),
                    detail: e.kind.as_str(),
                    down: e.kind.origin_down(),
                    response: None,
                };
            }
        };
        let response_time = SystemTime::now();
        let (mut rparts, rbody) = res.into_parts();
        self.clean_origin_headers(&mut rparts.headers, response_time);
        let status = rparts.status;

        let rule = cfg.key_rules.rule_for(ctx.host_norm(), ctx.uri.path());
        let class = classify(
            &ctx.headers,
            &ctx.req_dirs,
            job.stale.is_some(),
            status,
            &rparts.headers,
            response_time,
            policy,
            (cfg.max_object_size, &rule.vary),
        );
        let (dirs, lifetime, names) = match (class, &job.stale) {
            (Class::NotModified, Some(stale)) => {
                let mut updated =
                    self.refreshed(ctx, stale, &rparts.headers, request_time, response_time);
                updated.fetched_gen = fetched_gen;
                let (dirs, lifetime) = (&updated.directives.get(), updated.lifetime);
                let verdict = freshness::storable(
                    &ctx.headers,
                    &Directives::default(),
                    stale.status,
                    &updated.headers.to_map(),
                    dirs,
                    lifetime,
                    policy,
                );
                return Exchange::NotModified { updated, verdict };
            }
            (Class::ServerError, _) => {
                warn!(request_id = ctx.request_id, host = %ctx.host(), uri = %ctx.uri, status = status.as_u16(), "origin answered with a server error");
                let res = response(status, rparts.headers, body::boxed(rbody));
                return Exchange::Failed {
                    status,
                    detail: "origin-5xx",
                    down: false,
                    response: Some(res),
                };
            }
            (Class::NotStorable(reason), _) => {
                return Exchange::NotStorable {
                    response: response(status, rparts.headers, body::boxed(rbody)),
                    status,
                    reason,
                }
            }
            // `classify` gives `NotModified` only to a validation; were it not one,
            // a 304 is not a status to store.
            (Class::NotModified, None) => {
                return Exchange::NotStorable {
                    response: response(status, rparts.headers, body::boxed(rbody)),
                    status,
                    reason: NotStored::Status,
                }
            }
            (
                Class::Storable {
                    dirs,
                    lifetime,
                    names,
                },
                _,
            ) => (dirs, lifetime, names),
        };
        let len = content_length(&rparts.headers);
        let corrected_initial_age =
            freshness::corrected_initial_age(&rparts.headers, request_time, response_time);
        let mut headers = rparts.headers;
        headers.remove(AGE);
        let tags = self.tags_of(ctx, &headers);
        let entry = Fetched {
            status,
            headers: headers.into(),
            body: Bytes::new(),
            born: freshness::Born::new(response_time, corrected_initial_age),
            lifetime,
            directives: dirs.into(),
            variant: Variant::of(&ctx.headers, &names),
            tags,
            fetched_gen,
        };
        Exchange::Storable {
            entry,
            body: rbody,
            len,
        }
    }

    /// The stale entry updated by a 304 (RFC 9111 §3.2, §4.3.4): the 304's fields
    /// replace the stored ones, freshness restarts from the 304's times.
    fn refreshed(
        &self,
        ctx: &Ctx,
        stale: &StoredResponse,
        fresh: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Fetched {
        let policy = &self.cfg().policy;
        let mut headers = stale.headers().to_map();
        for name in fresh.keys() {
            if name == CONTENT_LENGTH || name == AGE || name == CACHE_STATUS {
                continue;
            }
            headers.remove(name);
            for v in fresh.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let (dirs, targeted) = freshness::effective_directives(&headers, policy);
        let (lifetime, _) = freshness::freshness_lifetime(
            stale.status,
            &headers,
            &dirs,
            targeted,
            response_time,
            policy,
        );
        let tags = self.tags_of(ctx, &headers);
        Fetched {
            status: stale.status,
            body: stale.body(),
            born: freshness::Born::new(
                response_time,
                freshness::corrected_initial_age(fresh, request_time, response_time),
            ),
            lifetime,
            directives: dirs.into(),
            variant: stale.variant.clone(),
            tags,
            fetched_gen: stale.fetched_gen,
            headers: headers.into(),
        }
    }

    /// The response's tags, within the configured limits (a log line when cut).
    fn tags_of(&self, ctx: &Ctx, headers: &HeaderMap) -> Arc<[Arc<str>]> {
        let (tags, dropped) = crate::tags::extract(&self.cfg().tag_rules, headers);
        if dropped.too_long > 0 || dropped.over_count > 0 {
            warn!(
                key = %ctx.key.full,
                too_long = dropped.too_long,
                over_limit = dropped.over_count,
                max_length = self.cfg().tag_rules.max_length,
                max_per_object = self.cfg().tag_rules.max_per_object,
                "tags dropped: over the configured limits"
            );
        }
        tags.into()
    }

    /// Applies an exchange to the store and decides what the requests get. With a
    /// flight guard, the result is published to the waiters.
    fn settle(self: &Arc<Self>, job: &Job, exchange: Exchange, guard: Option<FlightGuard>) -> Own {
        let ctx = &job.ctx;
        let mut guard = guard;
        let mut publish = |shared: Shared| {
            if let Some(g) = guard.as_mut() {
                g.publish(shared);
            }
        };
        match exchange {
            Exchange::Failed {
                status,
                detail,
                down,
                response,
            } => {
                let shared = Shared::Failed {
                    status,
                    detail,
                    down,
                };
                publish(shared.clone());
                match response {
                    // The requester gets the origin's own error page unless stale
                    // content may stand in for it.
                    Some(res) if !self.stale_if_error_allows(job, down) => {
                        let outcome =
                            Outcome::forwarded(job.fwd, status.as_u16(), Some(NotStored::Status));
                        Own::Response(self.respond_fresh(ctx, res, &outcome, None))
                    }
                    _ => Own::Shared(shared),
                }
            }
            Exchange::NotModified { updated, verdict } => {
                let updated = StoredResponse::pack(updated);
                match verdict {
                    Ok(()) => {
                        self.store.insert(&ctx.key, updated.clone());
                        let shared = Shared::Refreshed(Arc::new(updated));
                        publish(shared.clone());
                        Own::Shared(shared)
                    }
                    // The 304 made the response unshareable (it set a cookie, turned
                    // private): the stored entry goes, the merged response is this
                    // request's alone, and the waiters go to the origin on their own
                    // behalf, as after any unshareable answer.
                    Err(reason) => {
                        self.store.invalidate(&ctx.key);
                        self.remember_unshareable(&ctx.key, reason);
                        publish(Shared::Uncacheable(reason));
                        let outcome = Outcome::forwarded(job.fwd, 304, Some(reason));
                        Own::Response(self.serve_stored(ctx, &updated, outcome, SystemTime::now()))
                    }
                }
            }
            Exchange::NotStorable {
                response,
                status,
                reason,
            } => {
                if job.stale.is_some() {
                    // The origin no longer lets us keep what we had: drop it.
                    self.store.invalidate(&ctx.key);
                }
                self.remember_unshareable(&ctx.key, reason);
                publish(Shared::Uncacheable(reason));
                let outcome = Outcome::forwarded(job.fwd, status.as_u16(), Some(reason));
                Own::Response(self.respond_fresh(ctx, response, &outcome, None))
            }
            Exchange::Storable { entry, body, len } => {
                // The head without its body: what clients are answered from while
                // the body streams (the store gets the whole entry once complete).
                let head = StoredResponse::pack(Fetched {
                    body: Bytes::new(),
                    ..entry.clone()
                });
                match guard.take() {
                    Some(mut g) => {
                        let shared_body = SharedBody::new(len);
                        // The requester's reader is there before the first byte is.
                        let own = shared_body.reader().unwrap_or_else(body::empty);
                        let head = Arc::new(head);
                        g.publish(Shared::Stored {
                            entry: head.clone(),
                            body: shared_body.clone(),
                        });
                        self.pump(ctx, entry, body, len, shared_body, g);
                        Own::Response(self.respond_stored_head(job, &head, own, false))
                    }
                    None => {
                        let store = self.store.clone();
                        let key = ctx.key.clone();
                        let mut full = entry;
                        let on_complete = move |bytes: Bytes| {
                            full.body = bytes;
                            store.insert(&key, full);
                        };
                        let limit = self.cfg().max_object_size as usize;
                        let (client_body, collect) = body::tee(body, len, limit, on_complete);
                        let full_key = ctx.key.full.clone();
                        tokio::spawn(async move {
                            if let Err(end) = collect.await {
                                debug!(key = %full_key, ?end, "response not stored");
                            }
                        });
                        Own::Response(self.respond_stored_head(
                            job,
                            &head,
                            body::boxed(client_body),
                            false,
                        ))
                    }
                }
            }
        }
    }

    /// An answer that cannot be shared, for a reason that belongs to the URL (not
    /// to this request): the key skips the wait queue for `cache.uncacheable_ttl`.
    fn remember_unshareable(&self, key: &CacheKey, reason: NotStored) {
        if uncacheable_for_everyone(reason) && !self.cfg().uncacheable_ttl.is_zero() {
            self.uncacheable.insert(key.digest, ());
        }
    }

    /// Reads a shared origin body into the [`SharedBody`] (every waiter streams from
    /// it) and stores the entry once complete. The flight ends (the guard drops)
    /// after the store has it, so requests arriving meanwhile join this flight.
    /// A body that grows past `max_object_size` will not be stored: the flight ends
    /// there (later requests fetch it directly), the shared body becomes a stream,
    /// and the origin is read only as fast as the slowest reader reads, or no
    /// further once nobody reads.
    fn pump(
        &self,
        ctx: &Ctx,
        mut entry: Fetched,
        mut body: OriginBody,
        len: Option<u64>,
        shared: SharedBody,
        guard: FlightGuard,
    ) {
        let store = self.store.clone();
        let uncacheable = self.uncacheable.clone();
        let key = ctx.key.clone();
        let limit = self.cfg().max_object_size as usize;
        let flights = self.flights.clone();
        tokio::spawn(async move {
            let mut guard = Some(guard);
            let mut collected = crate::body::Collector::new(len, limit);
            let mut read = 0u64;
            loop {
                match body.frame().await {
                    None => break,
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            read += data.len() as u64;
                            collected.push(&data);
                            if collected.too_large() && guard.is_some() {
                                // Next time, skip the queue: this object does not fit;
                                // and the flight ends here.
                                uncacheable.insert(key.digest, ());
                                drop(guard.take());
                                shared.stream();
                            }
                            shared.push(data);
                            let room = match shared.room_now() {
                                Room::Free => true,
                                Room::Unread => false,
                                Room::Full => {
                                    let _paused = flights.paused();
                                    shared.room().await
                                }
                            };
                            if !room {
                                debug!(key = %key.full, "no reader left for a body too large to store");
                                shared.finish(false);
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        debug!(key = %key.full, error = %e, "origin body failed; not stored");
                        shared.finish(false);
                        return;
                    }
                }
            }
            let complete = len.is_none_or(|n| n == read);
            if complete && !collected.too_large() {
                entry.body = collected.take();
                store.insert(&key, entry);
            }
            shared.finish(complete);
        });
    }

    /// One request's response from a flight's result.
    async fn answer_shared(
        self: &Arc<Self>,
        job: &Job,
        shared: Shared,
        collapsed: bool,
    ) -> Response<Body> {
        let ctx = &job.ctx;
        match shared {
            Shared::Stored { entry, body } => {
                if !entry.variant.matches(&ctx.headers) {
                    return self.reevaluate(job).await;
                }
                match body.reader() {
                    Some(reader) => self.respond_stored_head(job, &entry, reader, collapsed),
                    // Too large to store, and already past its first bytes.
                    None => Box::pin(self.direct(job)).await,
                }
            }
            Shared::Refreshed(entry) => {
                if !entry.variant.matches(&ctx.headers) {
                    return self.reevaluate(job).await;
                }
                let outcome = Outcome::Forward {
                    fwd: job.fwd,
                    fwd_status: 304,
                    stored: true,
                    not_stored: None,
                    collapsed,
                };
                self.serve_stored(ctx, &entry, outcome, SystemTime::now())
            }
            Shared::Uncacheable(_) => Box::pin(self.direct(job)).await,
            Shared::Failed {
                status,
                detail,
                down,
            } => {
                if let (Some(stale), true) = (&job.stale, self.stale_if_error_allows(job, down)) {
                    let outcome = Outcome::StaleIfError {
                        fwd: job.fwd,
                        detail,
                    };
                    return self.serve_stored(ctx, stale, outcome, SystemTime::now());
                }
                self.error_answer(status, detail, job.fwd)
            }
        }
    }

    /// A waiter whose request does not select the variant that came back: look again
    /// (another flight may have stored its variant), deciding reuse as any request
    /// does (`Fetcher::cached`), else fetch on its own.
    async fn reevaluate(self: &Arc<Self>, job: &Job) -> Response<Body> {
        let decided = self.cached(&job.ctx, &self.cfg());
        let (stale, fwd) = match decided {
            Ok(res) => return res,
            Err(forward) => forward,
        };
        let own = Job {
            ctx: job.ctx.clone(),
            stale,
            fwd,
            interest: None,
        };
        let res = Box::pin(self.direct(&own)).await;
        job.ctx.origin_micros.set(own.ctx.origin_micros.get());
        res
    }

    /// The response for a just-fetched storable object: its head, `Age`, and a body
    /// still streaming in.
    fn respond_stored_head(
        &self,
        job: &Job,
        entry: &StoredResponse,
        body: Body,
        collapsed: bool,
    ) -> Response<Body> {
        let outcome = Outcome::Forward {
            fwd: job.fwd,
            fwd_status: entry.status.as_u16(),
            stored: true,
            not_stored: None,
            collapsed,
        };
        let age = entry.age(SystemTime::now());
        let ttl = freshness::ttl_secs(entry.lifetime(), age);
        let mut headers = entry.headers().to_map();
        headers.insert(
            AGE,
            http::HeaderValue::from(freshness::age_header_secs(age)),
        );
        let mut res = self.respond_fresh(
            &job.ctx,
            response(entry.status, headers, body),
            &outcome,
            Some(ttl),
        );
        if self.cfg().debug_headers {
            res.extensions_mut()
                .insert(VariantInfo(entry.variant.describe()));
        }
        res
    }

    /// May the stale entry of `job` stand in for an origin failure now?
    ///
    /// The window is the stale-if-error one (RFC 5861 §4); while the origin is down
    /// (health checks failing, or it cannot be reached) the longer
    /// `cache.unhealthy_grace` applies too: a cache is then "disconnected" in the sense
    /// of RFC 9111 §4.2.4, unless the response forbids stale use outright.
    fn stale_if_error_allows(&self, job: &Job, origin_down: bool) -> bool {
        let Some(stale) = &job.stale else {
            return false;
        };
        let mut window = freshness::sie_window(
            &stale.directives.get(),
            &job.ctx.req_dirs,
            self.cfg().stale_if_error,
        );
        if origin_down || self.origins().all_unhealthy() {
            window = window.max(freshness::grace_window(
                &stale.directives.get(),
                self.cfg().unhealthy_grace,
            ));
        }
        let age = stale.age(SystemTime::now());
        age < stale.lifetime() || freshness::within_stale_window(age, stale.lifetime(), window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn class(status: u16, validating: bool, res: &[(&str, &str)], req: &[(&str, &str)]) -> Class {
        let req = headers(req);
        classify(
            &req,
            &Directives::from_cache_control(&req),
            validating,
            StatusCode::from_u16(status).unwrap(),
            &headers(res),
            SystemTime::now(),
            &freshness::Policy::default(),
            (1000, &crate::vary::VaryRules::default()),
        )
    }

    fn not_stored(c: Class) -> Option<NotStored> {
        match c {
            Class::NotStorable(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn origin_answers_are_classified() {
        let fresh = [("cache-control", "max-age=60")];
        assert_eq!(class(304, true, &[], &[]), Class::NotModified);
        assert_eq!(
            not_stored(class(304, false, &[], &[])),
            Some(NotStored::Status)
        );
        assert_eq!(class(503, true, &fresh, &[]), Class::ServerError);
        assert_eq!(class(500, false, &[], &[]), Class::ServerError);
        assert!(matches!(
            class(200, false, &fresh, &[]),
            Class::Storable { lifetime, .. } if lifetime == std::time::Duration::from_secs(60)
        ));
        type Fields<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(u16, Fields, Fields, NotStored)] = &[
            (
                200,
                &[("cache-control", "private, max-age=60")],
                &[],
                NotStored::Private,
            ),
            (
                200,
                &[("cache-control", "no-store")],
                &[],
                NotStored::NoStore,
            ),
            (
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
                &[],
                NotStored::SetCookie,
            ),
            (
                200,
                &[("cache-control", "max-age=60"), ("content-length", "1001")],
                &[],
                NotStored::TooLarge,
            ),
            (
                200,
                &[("cache-control", "max-age=60"), ("vary", "Cookie")],
                &[],
                NotStored::VaryPrivate,
            ),
            (
                200,
                &[("cache-control", "max-age=60"), ("vary", "*")],
                &[],
                NotStored::VaryStar,
            ),
            (
                200,
                &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
                &[("cookie", "s=1")],
                NotStored::Credentials,
            ),
            (
                200,
                &[("cache-control", "max-age=60")],
                &[("cache-control", "no-store")],
                NotStored::RequestNoStore,
            ),
            (
                418,
                &[("cache-control", "max-age=60")],
                &[],
                NotStored::Status,
            ),
        ];
        for (status, res, req, reason) in cases {
            assert_eq!(
                not_stored(class(*status, false, res, req)),
                Some(*reason),
                "{status} {res:?} {req:?}"
            );
        }
    }
}
