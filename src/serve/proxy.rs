//! The way in of a request. `Proxy::respond` is the entry point; read it top to
//! bottom:
//!
//! 1. limits (414, 431), the target's checks (400, 405), stripped fields and
//!    `Connection` options, the Vary normalizers, the key;
//! 2. the admin API and `PURGE` (admin.rs, purge/);
//! 3. cacheable method (GET/HEAD without a body)? → [`Fetcher::cached`]: look up the
//!    key, decide reuse with the freshness rules, serve, or go forward (miss,
//!    validation, fetch.rs) and maybe store;
//! 4. anything else → [`Fetcher::pass`]: forward with the body, and invalidate the
//!    URI on a non-error answer to an unsafe method (RFC 9111 §4.4).
//!
//! Every response leaves through `render::finish`, which renders `Cache-Status`
//! from the request's `Outcome`. Reloads swap the configuration whole.

use std::sync::Arc;

use futures_util::future::{ready, BoxFuture, Either, Ready};
use http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING,
};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::body::Body;
use crate::coalesce::Flights;
use crate::conditional;
use crate::config::{ReloadError, ReloadReport};
use crate::config::{Settings, Tier};
use crate::directives::Directives;
use crate::fetch::Fetcher;
use crate::fleet::{StreamId, PURGED_THROUGH};
use crate::forward;
use crate::key;
use crate::origin::Origins;
use crate::render::{self, content_length_value, plain};
use crate::request::{request_host, ClientInfo, Ctx, OriginTime};
use crate::store::Store;

/// A request's way in: limits, the target's checks, the key, then the admin API,
/// `PURGE`, or the [`Fetcher`] (the store and the origins); and reloads.
pub struct Proxy {
    /// The configuration, swapped whole on reload (never mutated piecemeal); the
    /// fetcher reads the same one.
    config: Arc<arc_swap::ArcSwap<Settings>>,
    /// The store and the origins: reuse, fetches, passes.
    pub(crate) fetcher: Arc<Fetcher>,
    /// Re-reads the configuration for SIGHUP and `POST /reload` (set by the binary).
    reloader: std::sync::Mutex<Option<Reloader>>,
    /// The admin API and `PURGE` (admin.rs), with the purger.
    admin: crate::admin::Admin,
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

fn answered(res: Response<Body>) -> Answer {
    Either::Left(ready(Ok(res)))
}

fn pending(fut: impl std::future::Future<Output = Response<Body>> + Send + 'static) -> Answer {
    Either::Right(Box::pin(async move { Ok(fut.await) }))
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
        let counted = store.clone();
        let metrics = Arc::new(crate::metrics::Metrics::new(move || counted.evictions()));
        let flights = Arc::new(Flights::default());
        let config = Arc::new(arc_swap::ArcSwap::from_pointee(settings));
        // In a fleet the newest purge applied here goes to the node behind.
        let (seen, purged_through) = match config.load().fleet {
            Some(_) => {
                let (tx, rx) = tokio::sync::watch::channel(StreamId::default());
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let fetcher = Arc::new(Fetcher::new(
            config.clone(),
            store.clone(),
            flights.clone(),
            metrics.clone(),
            purged_through,
        ));
        let admin = crate::admin::Admin::new(config.clone(), fetcher.clone(), seen);
        Arc::new(Proxy {
            admin,
            reloader: std::sync::Mutex::new(None),
            config,
            fetcher,
        })
    }

    pub fn store(&self) -> &Store {
        &self.fetcher.store
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.fetcher.metrics
    }

    /// The origins and their health.
    pub fn origins(&self) -> Arc<Origins> {
        self.fetcher.origins()
    }

    /// Sets how the configuration is re-read on reload.
    pub fn set_reloader(&self, reloader: Reloader) {
        if let Ok(mut r) = self.reloader.lock() {
            *r = Some(reloader);
        }
    }

    /// Re-reads the configuration with the reloader and applies it.
    pub fn reload_from_source(&self) -> Result<ReloadReport, ReloadError> {
        let settings = {
            let r = self.reloader.lock().map_err(|_| ReloadError::Unavailable)?;
            let reload = r.as_ref().ok_or(ReloadError::NoSource)?;
            reload().map_err(ReloadError::Invalid)?
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
        let origins_changed = new.origins_differ(&old);
        if origins_changed {
            let origins = Origins::new(&new.origins, self.fetcher.metrics.clone());
            origins.spawn_health_checks();
            // The old origins (and their health checks) go when the last request
            // using them is done.
            self.fetcher.set_origins(origins);
        }
        self.config.store(Arc::new(numbered(new)));
        tracing::info!(?restart_required, origins_changed, "configuration reloaded");
        ReloadReport {
            restart_required,
            origins_changed,
        }
    }

    /// The admin API (on the client listener under `/.lacquer/`, or its own).
    pub async fn admin(
        &self,
        req: Request<Incoming>,
        client: ClientInfo,
        path: &str,
    ) -> Response<Body> {
        self.admin
            .serve(req, client, path, || self.reload_from_source())
            .await
    }

    /// The figures of `GET /stats`.
    pub fn stats(&self) -> serde_json::Value {
        self.admin.stats()
    }

    /// Origin requests waiting for a slot of their client connection's budget.
    pub fn budget_waits(&self) -> tokio::sync::watch::Receiver<usize> {
        self.fetcher.budget_waits()
    }

    /// The coalescing state (flights in progress, waiters).
    pub fn flights(&self) -> &Flights {
        &self.fetcher.flights
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
            self.fetcher.metrics.request("rejected");
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
            self.fetcher.metrics.request("rejected");
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
            self.fetcher.metrics.request("rejected");
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
        // In a fleet: what the node in front has applied (a shield catches up with it
        // before answering); never forwarded as received.
        let mut through = None;
        if let Some(fleet) = self.admin.fleet() {
            let sent = parts.headers.remove(&PURGED_THROUGH);
            let f = fleet.settings();
            if f.tier == Tier::Shield && f.is_peer(client.addr.ip()) {
                through = sent.and_then(|v| v.to_str().ok()?.parse::<StreamId>().ok());
            }
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
            plain: as_stored && through.is_none(),
            origin_micros: OriginTime::default(),
            peer: through.is_some(),
        };
        if ctx.method.as_str() == "PURGE" {
            // Never forwarded: answered here, with a token (admin.rs).
            let this = self.clone();
            return pending(async move {
                this.admin
                    .purge_method(
                        &ctx.headers,
                        &ctx.uri,
                        ctx.host_norm(),
                        &ctx.key,
                        &ctx.client,
                    )
                    .await
            });
        }
        if let (Some(id), Some(fleet)) = (through, self.admin.fleet()) {
            if cacheable && fleet.applied() < id {
                // Shield before edge: the edge applied a purge this node has not yet.
                // Until it has, its cache may hold what the purge removed.
                let (this, fleet) = (self.clone(), fleet.clone());
                return pending(async move {
                    let mut res = if fleet.caught_up(id).await {
                        this.fetch_for(&ctx).await
                    } else {
                        tracing::debug!(%id, applied = %fleet.applied(), "fleet: behind the edge; answered without the cache");
                        this.fetcher.pass(&ctx, body).await
                    };
                    this.done(&ctx, &mut res, started, &this.cfg());
                    res
                });
            }
        }
        if !cacheable {
            let this = self.clone();
            return pending(async move {
                let mut res = this.fetcher.pass(&ctx, body).await;
                this.done(&ctx, &mut res, started, &this.cfg());
                res
            });
        }
        match self.fetcher.cached(&ctx, s) {
            Ok(mut res) => {
                self.done(&ctx, &mut res, started, s);
                answered(res)
            }
            Err((stale, fwd)) => {
                let this = self.clone();
                pending(async move {
                    let mut res = this.fetcher.fetch(&ctx, stale, fwd).await;
                    this.done(&ctx, &mut res, started, &this.cfg());
                    res
                })
            }
        }
    }

    /// A cacheable request's answer, from the cache or the origin.
    async fn fetch_for(&self, ctx: &Ctx) -> Response<Body> {
        let cfg = self.cfg();
        match self.fetcher.cached(ctx, &cfg) {
            Ok(res) => res,
            Err((stale, fwd)) => self.fetcher.fetch(ctx, stale, fwd).await,
        }
    }

    /// The fleet this node purges with, if any.
    pub(crate) fn fleet(&self) -> Option<&Arc<crate::fleet::Fleet>> {
        self.admin.fleet()
    }

    /// In a fleet: the last purge applied in stream order, to watch.
    pub fn fleet_applied(&self) -> Option<tokio::sync::watch::Receiver<StreamId>> {
        self.fleet().map(|f| f.applied_watch())
    }

    /// In a fleet: whether this node is partitioned from the bus, to watch.
    pub fn fleet_partitioned(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.fleet().map(|f| f.partition_watch())
    }

    /// In a fleet: whether this node's record has reached the bus, to watch.
    pub fn fleet_recorded(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.fleet().map(|f| f.recorded_watch())
    }

    /// In a fleet: the count of successful reads of the bus, to watch.
    pub fn fleet_reads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.fleet().map(|f| f.reads_watch())
    }

    /// In a fleet: holds this node's bus consumer back, or lets it go on. A fault
    /// for rehearsals and tests; nothing in normal operation calls it.
    pub fn hold_fleet(&self, held: bool) {
        if let Some(f) = self.fleet() {
            f.hold(held);
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
        if self.admin.fleet().is_some_and(|f| f.partitioned()) {
            render::partitioned_detail(res);
        }
        if let Some(started) = started {
            render::access_log(ctx, res, started, cfg.sample_hits);
        }
    }
}
