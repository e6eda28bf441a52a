//! The life of a request. `Proxy::respond` is the entry point; read it top to
//! bottom:
//!
//! 1. limits (414, 431);
//! 2. cacheable method (GET/HEAD without a body)? → [`Proxy::cached`]: look up the
//!    key, decide reuse with the freshness rules, serve, or go forward (miss,
//!    validation) and maybe store;
//! 3. anything else → [`Proxy::pass`]: forward with the body, and invalidate the
//!    URI on a non-error answer to an unsafe method (RFC 9111 §4.4).
//!
//! Every response leaves through [`Proxy::finish`], which renders `Cache-Status`
//! from the request's [`Outcome`].

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::{ready, BoxFuture, Either, Ready};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH,
    CONTENT_LOCATION, CONTENT_RANGE, CONTENT_TYPE, DATE, EXPECT, HOST, LOCATION, TRANSFER_ENCODING,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use tracing::warn;

use crate::body::{self, Body};
use crate::coalesce::Flights;
use crate::conditional::{self, RangeAnswer};
use crate::config::Settings;
use crate::directives::Directives;
use crate::forward;
use crate::freshness::{self, Reuse, ValidateReason};
use crate::key::{self, CacheKey};
use crate::origin::{OriginError, Origins, Upstream};
use crate::outcome::{Fwd, Outcome};
use crate::render::{self, content_length_value, plain, response, OutcomeLabel, VariantInfo};
use crate::request::{request_host, ClientInfo, Ctx, OriginTime};
use crate::store::{Lookup, Store, StoredResponse};

pub struct Proxy {
    /// The configuration, swapped whole on reload (never mutated piecemeal).
    config: arc_swap::ArcSwap<Settings>,
    pub(crate) store: Arc<Store>,
    origins: arc_swap::ArcSwap<Origins>,
    /// Re-reads the configuration for SIGHUP and `POST /reload` (set by the binary).
    reloader: std::sync::Mutex<Option<Reloader>>,
    /// Fetches in progress, for coalescing.
    pub(crate) flights: Arc<Flights>,
    /// Keys whose responses could not be shared recently (hit-for-miss).
    pub(crate) uncacheable: moka::sync::Cache<u128, ()>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Applies every purge (purge/purger.rs).
    pub(crate) purger: crate::purge::Purger,
    /// Origin requests waiting for their client connection's budget, observable.
    budget_waits: tokio::sync::watch::Sender<usize>,
}

/// Produces a freshly validated configuration (the binary re-reads its file).
pub type Reloader = Box<dyn Fn() -> Result<Settings, crate::config::ConfigError> + Send + Sync>;

/// A response now (`Left`), or a future one (`Right`, boxed: only requests that need
/// I/O pay for a future). Already what hyper's service returns (it cannot fail), so
/// that a hit's response is not moved through another future on its way out.
pub type Answer = Either<Ready<Served>, BoxFuture<'static, Served>>;

/// A response, as hyper's service returns it.
pub type Served = Result<Response<Body>, std::convert::Infallible>;

/// A request whose target Lacquer refuses to key or forward, with its answer:
/// a host that is not a reg-name or IP with an optional port (from `Host` or the
/// target's authority, userinfo included: RFC 9110 §4.2.4 forbids it), a scheme
/// other than http(s), and `CONNECT` (Lacquer is no tunnel).
fn refused_target(
    req: &Request<Incoming>,
    host_field: Option<&HeaderValue>,
) -> Option<Response<Body>> {
    if req.method() == Method::CONNECT {
        let mut res = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed: CONNECT is not supported\n",
        );
        res.headers_mut().insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, PURGE"),
        );
        return Some(closing(res));
    }
    if let Some(scheme) = req.uri().scheme_str() {
        if scheme != "http" && scheme != "https" {
            return Some(closing(plain(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: only http and https targets are served\n",
            )));
        }
    }
    let host = match req.uri().authority() {
        Some(a) => a.as_str().as_bytes(),
        // Bytes that are not visible ASCII are in no valid host either.
        None => host_field.map_or(&b""[..], HeaderValue::as_bytes),
    };
    (!key::valid_host_bytes(host.trim_ascii()))
        .then(|| {
            plain(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: the host is not a valid host name or address\n",
            )
        })
        .map(closing)
}

/// A refusal also ends an HTTP/1 connection: whatever the client sent after a
/// request Lacquer would not read is not read as a request either.
fn closing(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    res
}

/// What became of a request sent to the origins ([`Proxy::to_origin`]).
pub(crate) enum Sent {
    Answered(Response<crate::origin::OriginBody>),
    Failed(OriginError),
    /// Not sent: nobody waited for it any more.
    Abandoned,
}

fn answered(res: Response<Body>) -> Answer {
    Either::Left(ready(Ok(res)))
}

fn pending(fut: impl std::future::Future<Output = Response<Body>> + Send + 'static) -> Answer {
    Either::Right(Box::pin(async move { Ok(fut.await) }))
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Changed settings that only a restart applies (their old values stay).
    pub restart_required: Vec<String>,
    pub origins_changed: bool,
}

static REQUEST_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Numbers the configurations the proxies of this process apply (`Settings::generation`).
static CONFIG_GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn numbered(mut settings: Settings) -> Settings {
    settings.generation = CONFIG_GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    settings
}

impl Proxy {
    pub fn new(settings: Settings) -> Arc<Proxy> {
        let settings = numbered(settings);
        let store = Arc::new(Store::new(settings.max_size, settings.max_variants));
        let metrics = Arc::new(crate::metrics::Metrics::new(store.evictions.clone()));
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
        let flights = Arc::new(Flights::default());
        let purger = crate::purge::Purger::new(
            store.clone(),
            flights.clone(),
            metrics.clone(),
            settings.admin.request_id_window,
        );
        Arc::new(Proxy {
            metrics,
            purger,
            reloader: std::sync::Mutex::new(None),
            config: arc_swap::ArcSwap::from_pointee(settings),
            store,
            origins,
            flights,
            uncacheable,
            budget_waits: tokio::sync::watch::channel(0).0,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The origins and their health.
    pub fn origins(&self) -> Arc<Origins> {
        self.origins.load_full()
    }

    /// Sets how the configuration is re-read on reload.
    pub fn set_reloader(&self, reloader: Reloader) {
        if let Ok(mut r) = self.reloader.lock() {
            *r = Some(reloader);
        }
    }

    /// Re-reads the configuration with the reloader and applies it.
    pub fn reload_from_source(&self) -> Result<ReloadReport, String> {
        let settings = {
            let r = self
                .reloader
                .lock()
                .map_err(|_| "reloader unavailable".to_string())?;
            let reload = r
                .as_ref()
                .ok_or_else(|| "no configuration source to reload from".to_string())?;
            reload().map_err(|e| e.to_string())?
        };
        Ok(self.reload(settings))
    }

    /// Applies a new, validated configuration without dropping connections or the
    /// cache: routes, keys, Vary rules, tags, tokens, TTL policy and origins change
    /// at once for new requests. Settings that only a restart can change keep their
    /// old values and are reported.
    pub fn reload(&self, mut new: Settings) -> ReloadReport {
        let old = self.cfg();
        let restart_required = new.keep_restart_only(&old);
        let origins_changed = new.file.origins != old.file.origins;
        if origins_changed {
            let origins = Origins::new(&new.origins, self.metrics.clone());
            origins.spawn_health_checks();
            // The old origins (and their health checks) go when the last request
            // using them is done.
            self.origins.store(Arc::new(origins));
        }
        self.config.store(Arc::new(numbered(new)));
        tracing::info!(?restart_required, origins_changed, "configuration reloaded");
        ReloadReport {
            restart_required,
            origins_changed,
        }
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
        let permit = budget.acquire_owned().await.ok();
        self.budget_waits.send_modify(|n| *n -= 1);
        permit
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

    /// The coalescing state (flights in progress, waiters).
    pub fn flights(&self) -> &Flights {
        &self.flights
    }

    /// The configuration in force (a cheap `Arc` clone; a reload swaps it whole).
    pub fn settings(&self) -> Arc<Settings> {
        self.config.load_full()
    }

    /// The configuration for this moment: an `arc-swap` guard, which costs no
    /// reference-count traffic on the hot path (unlike `settings()`).
    pub(crate) fn cfg(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.config.load()
    }

    /// Answers a request. Everything that needs no I/O (limits, PURGE, cache hits)
    /// is decided here, before returning, so that a hit drops the request before
    /// hyper reads the next one: the request's fields are slices of the connection's
    /// read buffer, and while one is alive hyper cannot reuse that buffer in place
    /// (it allocates a new one). What needs the origin or the admin API is a boxed
    /// future.
    pub fn respond(self: &Arc<Self>, req: Request<Incoming>, client: ClientInfo) -> Answer {
        let s = &self.cfg();
        // Only the access log reads the clock for a request's duration.
        let started = s.access_log.then(std::time::Instant::now);
        let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > s.max_uri_bytes {
            self.metrics.request("rejected");
            return answered(plain(StatusCode::URI_TOO_LONG, "414 URI Too Long\n"));
        }
        // One pass over the request's fields for what the checks below need.
        let mut head_bytes = 0;
        let mut as_stored = true;
        let (mut hosts, mut with_body, mut strip) = (0, false, false);
        let mut with_directives = false;
        let mut host_field = None;
        let mut options = false;
        for (n, v) in req.headers() {
            head_bytes += n.as_str().len() + v.len() + 4;
            as_stored &= !conditional::shapes_answer(n);
            if n == HOST {
                hosts += 1;
                // A handle on the parsed bytes, not a copy.
                host_field.get_or_insert_with(|| v.clone());
            } else if n == CACHE_CONTROL {
                with_directives = true;
            } else if n == TRANSFER_ENCODING {
                with_body = true;
            } else if n == CONTENT_LENGTH {
                with_body |= content_length_value(v) > Some(0);
            } else if n == CONNECTION {
                options = true;
            }
            strip |= s.strip_request_headers.contains(n);
        }
        if head_bytes + uri_len > s.max_header_bytes {
            self.metrics.request("rejected");
            return answered(plain(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "431 Request Header Fields Too Large\n",
            ));
        }

        // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host line.
        if req.version() == Version::HTTP_11 && hosts != 1 {
            return answered(plain(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: exactly one Host header is required\n",
            ));
        }
        if let Some(refusal) = refused_target(&req, host_field.as_ref()) {
            self.metrics.request("rejected");
            return answered(refusal);
        }

        // The admin API on the client listener, unless it has a listener of its own.
        if s.admin.listen.is_none() {
            if let Some(rest) = req.uri().path().strip_prefix("/.lacquer") {
                let rest = rest.to_string();
                let this = self.clone();
                return pending(async move { this.admin(req, client, &rest).await });
            }
        }

        let (mut parts, body) = req.into_parts();
        // Poisoning vectors go before anything (key, origin) can see them. A request
        // has few headers: look for the listed names among them (no hashing per name).
        if strip {
            let listed: Vec<HeaderName> = parts
                .headers
                .keys()
                .filter(|n| s.strip_request_headers.contains(n))
                .cloned()
                .collect();
            for name in listed {
                parts.headers.remove(name);
            }
        }
        // The fields a `Connection` option names are this hop's only: they go before
        // the key, the Vary variant or the origin's request can see them, so that
        // all three are built from the same request (RFC 9110 §7.6.1).
        if options {
            forward::strip_connection_options(&mut parts.headers);
        }
        // What `Ctx::host` reads, from the field seen in the first pass (a handle,
        // so that normalizing the request's fields below can still borrow them).
        let host_field = host_field.filter(|_| !strip || parts.headers.contains_key(HOST));
        let host = request_host(&parts.uri, host_field.as_ref());
        let host_norm = key::normalize_host(host, client.scheme);
        // Usually already normal: no copy.
        let host_normalized = (*host_norm != *host).then(|| host_norm.to_string());
        let rule = s.key_rules.rule_for(&host_norm, parts.uri.path());
        let cacheable = (parts.method == Method::GET || parts.method == Method::HEAD) && !with_body;
        if cacheable {
            rule.vary.normalize_request(&mut parts.headers);
        }
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let key = key::primary_key(rule, client.scheme, &host_norm, pq, &parts.headers);
        let req_dirs = if with_directives {
            Directives::from_cache_control(&parts.headers)
        } else {
            Directives::default()
        };
        let ctx = Ctx {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            client,
            host_normalized,
            key,
            req_dirs,
            request_id: REQUEST_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            plain: as_stored,
            origin_micros: OriginTime::default(),
        };
        if ctx.method.as_str() == "PURGE" {
            // Never forwarded: answered here, with a token (admin.rs).
            return answered(self.purge_method(
                &ctx.headers,
                &ctx.uri,
                ctx.host_norm(),
                &ctx.key,
                &ctx.client,
            ));
        }
        let this = self.clone();
        if !cacheable {
            return pending(async move {
                let mut res = this.pass(&ctx, body).await;
                this.done(&ctx, &mut res, started, &this.cfg());
                res
            });
        }
        match self.cached(&ctx, s) {
            Ok(mut res) => {
                self.done(&ctx, &mut res, started, s);
                answered(res)
            }
            Err((stale, fwd)) => pending(async move {
                let mut res = this.fetch(&ctx, stale, fwd).await;
                this.done(&ctx, &mut res, started, &this.cfg());
                res
            }),
        }
    }

    /// The last touches of every proxied response: debug headers, the access log.
    fn done(
        &self,
        ctx: &Ctx,
        res: &mut Response<Body>,
        started: Option<std::time::Instant>,
        cfg: &Settings,
    ) {
        if cfg.debug_headers {
            render::debug_headers(res, &ctx.key);
        }
        if let Some(started) = started {
            render::access_log(ctx, res, started);
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
            Lookup::VaryMiss => Err(Fwd::VaryMiss),
            Lookup::Miss => Err(Fwd::UriMiss),
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
            Err(fwd) => (None, fwd),
        };
        if ctx.req_dirs.only_if_cached {
            // RFC 9111 §5.2.1.7: nothing usable without going forward.
            let res = plain(
                StatusCode::GATEWAY_TIMEOUT,
                "504 Gateway Timeout: not in cache (only-if-cached)\n",
            );
            return Ok(self.finish(res, &Outcome::OnlyIfCached, None));
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
    async fn pass(&self, ctx: &Ctx, body: Incoming) -> Response<Body> {
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
            response(status, rparts.headers, body::boxed(rbody)),
            &outcome,
            None,
        )
    }

    /// The key of a `Location`/`Content-Location` value, if it names the same origin.
    fn same_origin_key(&self, ctx: &Ctx, value: &HeaderValue) -> Option<CacheKey> {
        let v = value.to_str().ok()?.trim();
        if v.starts_with('/') && !v.starts_with("//") {
            return Some(self.key_for(ctx.client.scheme, ctx.host_norm(), v, &ctx.headers));
        }
        let uri: Uri = v.parse().ok()?;
        let scheme = uri.scheme_str()?;
        let authority = uri.authority()?.as_str();
        let host = key::normalize_host(authority, scheme);
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        let same = scheme == ctx.client.scheme && host == ctx.host_norm();
        same.then(|| self.key_for(scheme, &host, pq, &ctx.headers))
    }

    /// The key another URL on this proxy would have for this request's headers.
    pub(crate) fn key_for(
        &self,
        scheme: &str,
        host_norm: &str,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> CacheKey {
        let path = path_and_query.split('?').next().unwrap_or("/");
        let cfg = self.cfg();
        let rule = cfg.key_rules.rule_for(host_norm, path);
        key::primary_key(rule, scheme, host_norm, path_and_query, headers)
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
            return self.finish(res, outcome, ttl);
        }
        let body = if ctx.method == Method::HEAD {
            body::empty()
        } else {
            body
        };
        self.finish(response(parts.status, parts.headers, body), outcome, ttl)
    }

    /// Serves a stored response: 304 for matching conditionals, 206/416 for ranges,
    /// `Age` always (RFC 9111 §5.1).
    /// A fresh hit. The common case (a plain GET of a stored 200) reuses the
    /// entry's cached rendering of the head when it was made for this second and
    /// this configuration; anything else, or a stale rendering, goes through
    /// [`Proxy::serve_stored`], whose result becomes the new rendering. Both paths
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
        self.finish(res, &outcome, ttl)
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
        res: Response<Body>,
        outcome: &Outcome,
        ttl: Option<i64>,
    ) -> Response<Body> {
        render::finish(res, outcome, ttl, &self.cfg(), &self.metrics)
    }
}
