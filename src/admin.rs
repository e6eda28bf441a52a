//! The admin API and the `PURGE` method: authentication (tokens compared in
//! constant time, never logged), scopes, the JSON purge batch with idempotent
//! request ids and dry runs, stats and health, and the audit log.
//!
//! Every route produces a [`Purge`] value and hands it to `Store::purge`: one
//! function applies purges, whoever asked.
//!
//! Routes (under `/.lacquer/` on the client listener, or at the root of the
//! dedicated admin listener): `POST /purge`, `GET /stats`, `GET /healthz`.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;
use tracing::info;

use crate::body::{self, Body};
use crate::config::{Operation, Token};
use crate::key::{self, CacheKey};
use crate::proxy::{ClientInfo, Proxy};
use crate::purge::Purge;
use crate::store::PurgeReport;

/// Largest purge request body accepted.
const MAX_BODY: usize = 1024 * 1024;

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(body::full(format!("{value}\n")));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    res
}

fn problem(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

impl Proxy {
    /// Is this client allowed to talk to the admin API at all?
    fn admin_ip_allowed(&self, ip: IpAddr) -> bool {
        let allow = &self.cfg().admin.allow_ips;
        allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
    }

    /// The token presented as `Authorization: Bearer …`, compared in constant time
    /// against every configured token (no early exit, no secret in any log).
    fn authenticate(&self, req_headers: &http::HeaderMap) -> Option<Token> {
        let presented = req_headers
            .get(AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim()
            .as_bytes();
        let cfg = self.cfg();
        let mut found = None;
        for t in &cfg.admin.tokens {
            let same: bool = t.secret.as_slice().ct_eq(presented).into();
            if same && found.is_none() {
                found = Some(t.clone());
            }
        }
        found
    }

    /// 401/403 before anything else happens; the token when the caller may proceed.
    fn authorize(
        &self,
        client: &ClientInfo,
        headers: &http::HeaderMap,
    ) -> Result<Token, Box<Response<Body>>> {
        if !self.admin_ip_allowed(client.addr.ip()) {
            return Err(Box::new(problem(
                StatusCode::FORBIDDEN,
                "client address not allowed",
            )));
        }
        match self.authenticate(headers) {
            Some(t) => Ok(t),
            None => {
                let mut res = problem(StatusCode::UNAUTHORIZED, "missing or invalid token");
                res.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                Err(Box::new(res))
            }
        }
    }

    /// Admin routes. `path` is relative to the admin root (`/purge`, `/stats`, …).
    pub async fn admin(
        self: &Arc<Self>,
        req: Request<Incoming>,
        client: ClientInfo,
        path: &str,
    ) -> Response<Body> {
        match (req.method(), path) {
            (&Method::GET, "/healthz") => {
                if self.origins().all_unhealthy() {
                    problem(StatusCode::SERVICE_UNAVAILABLE, "no healthy origin")
                } else {
                    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
                }
            }
            (&Method::GET, "/metrics") => {
                if !self.admin_ip_allowed(client.addr.ip()) {
                    return problem(StatusCode::FORBIDDEN, "client address not allowed");
                }
                self.refresh_gauges();
                let mut res = Response::new(body::full(self.metrics.render()));
                res.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            (&Method::POST, "/reload") => {
                let token = match self.authorize(&client, req.headers()) {
                    Err(res) => return *res,
                    Ok(t) => t,
                };
                if !token.operations.contains(&Operation::Reload) {
                    return problem(
                        StatusCode::FORBIDDEN,
                        &format!("token `{}` may not reload", token.name),
                    );
                }
                match self.reload_from_source() {
                    Ok(report) => {
                        info!(target: "lacquer::audit", token = %token.name, ?report, "configuration reloaded");
                        json(
                            StatusCode::OK,
                            &serde_json::json!({ "reloaded": true, "report": report }),
                        )
                    }
                    Err(reason) => {
                        info!(target: "lacquer::audit", token = %token.name, %reason, "reload rejected");
                        problem(
                            StatusCode::BAD_REQUEST,
                            &format!("reload rejected, old configuration kept: {reason}"),
                        )
                    }
                }
            }
            (&Method::GET, "/stats") => match self.authorize(&client, req.headers()) {
                Err(res) => *res,
                Ok(_) => json(StatusCode::OK, &self.stats()),
            },
            (&Method::POST, "/purge") => {
                let token = match self.authorize(&client, req.headers()) {
                    Err(res) => return *res,
                    Ok(t) => t.clone(),
                };
                let read = Limited::new(req.into_body(), MAX_BODY).collect();
                let bytes =
                    match tokio::time::timeout(self.settings().admin.read_timeout, read).await {
                        Ok(Ok(b)) => b.to_bytes(),
                        Ok(Err(_)) => {
                            return problem(
                                StatusCode::BAD_REQUEST,
                                "request body unreadable or over 1 MiB",
                            )
                        }
                        Err(_) => {
                            return problem(
                                StatusCode::REQUEST_TIMEOUT,
                                "request body not received within admin.read_timeout",
                            )
                        }
                    };
                let purge: Purge = match serde_json::from_slice(&bytes) {
                    Ok(p) => p,
                    Err(e) => {
                        return problem(
                            StatusCode::BAD_REQUEST,
                            &format!("invalid purge JSON: {e}"),
                        )
                    }
                };
                self.run_purge(purge, &token, &client, "api")
            }
            (_, "/healthz" | "/stats" | "/purge" | "/metrics" | "/reload") => {
                problem(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => problem(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }

    /// The `PURGE` method on a URL: every variant stored for it. `Lacquer-Soft-Purge: 1`
    /// makes it soft.
    pub(crate) fn purge_method(
        &self,
        headers: &http::HeaderMap,
        uri: &Uri,
        host: &str,
        key: &CacheKey,
        client: &ClientInfo,
    ) -> Response<Body> {
        if !self.cfg().admin.purge_method {
            return problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "PURGE is disabled on this listener",
            );
        }
        let token = match self.authorize(client, headers) {
            Err(res) => return *res,
            Ok(t) => t.clone(),
        };
        let soft = headers
            .get("lacquer-soft-purge")
            .is_some_and(|v| v == "1" || v == "true");
        let url = format!(
            "{}://{}{}",
            client.scheme,
            host,
            uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let purge = Purge {
            urls: vec![url],
            soft,
            ..Purge::default()
        };
        self.apply_purge(purge, vec![key.clone()], &token, client, "purge-method")
    }

    fn run_purge(
        &self,
        purge: Purge,
        token: &Token,
        client: &ClientInfo,
        via: &'static str,
    ) -> Response<Body> {
        if let Err(message) = purge.validate(self.cfg().admin.max_batch) {
            return problem(StatusCode::BAD_REQUEST, &message);
        }
        let mut keys = Vec::new();
        for (i, url) in purge.urls.iter().enumerate() {
            match self.url_key(url) {
                Some(k) => keys.push(k),
                None => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        &format!("urls[{i}] {url:?} is not an absolute http(s) URL"),
                    )
                }
            }
        }
        self.apply_purge(purge, keys, token, client, via)
    }

    /// Scope, idempotency, the purge itself, the audit line.
    fn apply_purge(
        &self,
        purge: Purge,
        keys: Vec<CacheKey>,
        token: &Token,
        client: &ClientInfo,
        via: &'static str,
    ) -> Response<Body> {
        if let Err(message) = scope_check(token, &purge) {
            info!(target: "lacquer::audit", token = %token.name, via, client = %client.addr.ip(), refused = %message, "purge refused");
            return problem(StatusCode::FORBIDDEN, &message);
        }
        let replay_key = purge
            .request_id
            .as_ref()
            .map(|id| format!("{}\u{0}{id}", token.name));
        if let Some(k) = &replay_key {
            if let Some(first) = self.purge_results.get(k) {
                let mut res = json(StatusCode::OK, &first);
                res.headers_mut().insert(
                    "lacquer-idempotent-replay",
                    HeaderValue::from_static("true"),
                );
                return res;
            }
        }
        let report: PurgeReport = self.store.purge(&purge, &keys);
        if !purge.dry_run {
            for (op, present) in [
                ("tag", !purge.tags.is_empty()),
                ("url", !purge.urls.is_empty()),
                ("prefix", !purge.prefixes.is_empty()),
                ("all", purge.all),
            ] {
                if present {
                    self.metrics.purge(op, &token.name, purge.soft);
                }
            }
            // Requests after the purge must not join a fetch that began before it.
            self.flights.detach_all();
        }
        let body = serde_json::json!({
            "request_id": purge.request_id,
            "token": token.name,
            "report": report,
        });
        info!(
            target: "lacquer::audit",
            token = %token.name,
            via,
            client = %client.addr.ip(),
            tags = ?purge.tags,
            urls = ?purge.urls,
            prefixes = ?purge.prefixes,
            all = purge.all,
            soft = purge.soft,
            dry_run = purge.dry_run,
            request_id = purge.request_id.as_deref().unwrap_or(""),
            counts = %serde_json::to_string(&report).unwrap_or_default(),
            generation = report.generation,
            "purge"
        );
        if purge.all && !purge.dry_run {
            tracing::warn!(target: "lacquer::audit", token = %token.name, "BREAK-GLASS: everything purged");
        }
        let body = Arc::new(body);
        if let Some(k) = replay_key {
            if !purge.dry_run {
                self.purge_results.insert(k, body.clone());
            }
        }
        json(StatusCode::OK, &body)
    }

    /// The key of an absolute URL, as a plain request for it would have.
    fn url_key(&self, url: &str) -> Option<CacheKey> {
        let uri: Uri = url.parse().ok()?;
        let scheme = uri.scheme_str().filter(|s| *s == "http" || *s == "https")?;
        let host = key::normalize_host(uri.authority()?.as_str(), scheme);
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        // No request: no keyed header or cookie values.
        Some(self.key_for(scheme, &host, pq, &http::HeaderMap::new()))
    }

    fn refresh_gauges(&self) {
        self.metrics.set_store(
            self.store.len(),
            self.store.weighted_size(),
            self.store.tag_index_len(),
        );
        for u in self.origins().list() {
            self.metrics
                .set_origin_health(&u.settings.name, u.is_healthy());
        }
    }

    /// The figures of `GET /stats`: the metrics, as JSON for people.
    pub fn stats(&self) -> serde_json::Value {
        let requests: serde_json::Map<String, serde_json::Value> = self
            .metrics
            .requests_by_outcome()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let activity = *self.flights.activity().borrow();
        let origins: Vec<serde_json::Value> = self
            .origins()
            .list()
            .iter()
            .map(|u| serde_json::json!({ "name": u.settings.name, "healthy": u.is_healthy() }))
            .collect();
        serde_json::json!({
            "entries": self.store.len(),
            "bytes": self.store.weighted_size(),
            "tag_index": self.store.tag_index_len(),
            "purge_marks": self.store.purge_marks(),
            "sweep_shards_scanned": self.store.shards_swept(),
            "requests": requests,
            "coalesced_waiters": self.metrics.coalesced_waiters.get(),
            "background_revalidations": self.metrics.background_revalidations.get(),
            "evictions": self.metrics.evictions.get(),
            "flights": activity.flights,
            "waiters": activity.waiters,
            "origins": origins,
        })
    }
}

/// Is every item of the purge within the token's scope? The message says which not.
fn scope_check(token: &Token, purge: &Purge) -> Result<(), String> {
    let can = |op: Operation| token.operations.contains(&op);
    if purge.all && !can(Operation::All) {
        return Err(format!(
            "token `{}` may not purge everything (break-glass scope)",
            token.name
        ));
    }
    for t in &purge.tags {
        if !can(Operation::Tag) {
            return Err(format!("token `{}` may not purge by tag", token.name));
        }
        if !token.tags.is_empty() && !token.tags.iter().any(|p| p.matches(t)) {
            return Err(format!(
                "tag {t:?} is outside the scope of token `{}`",
                token.name
            ));
        }
    }
    let host_ok = |h: &str| token.hosts.is_empty() || token.hosts.iter().any(|x| x == h);
    for u in &purge.urls {
        if !can(Operation::Url) {
            return Err(format!("token `{}` may not purge by URL", token.name));
        }
        let host = u.parse::<Uri>().ok().and_then(|u| {
            let scheme = u.scheme_str().unwrap_or("http").to_string();
            u.authority()
                .map(|a| key::normalize_host(a.as_str(), &scheme).into_owned())
        });
        if !host.as_deref().is_some_and(host_ok) {
            return Err(format!(
                "URL {u:?} is outside the hosts of token `{}`",
                token.name
            ));
        }
    }
    for p in &purge.prefixes {
        if !can(Operation::Prefix) {
            return Err(format!("token `{}` may not purge by prefix", token.name));
        }
        let norm = crate::purge::normalize_prefix(p);
        let host = norm.split('/').next().unwrap_or("");
        if !host_ok(host) {
            return Err(format!(
                "prefix {p:?} is outside the hosts of token `{}`",
                token.name
            ));
        }
    }
    Ok(())
}
