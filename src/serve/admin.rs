//! The admin API and the `PURGE` method: authentication (tokens compared in
//! constant time, never logged), scopes, the JSON purge batch with idempotent
//! request ids and dry runs, stats and health, and the audit log.
//!
//! Every purge route only produces a [`Purge`] value and hands it to
//! `Purger::apply` (purge/purger.rs): one function applies purges, whoever asked.
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
use crate::config::Settings;
use crate::config::{Operation, Token};
use crate::config::{ReloadError, ReloadReport};
use crate::error::{Kind, Side};
use crate::fetch::Fetcher;
use crate::fleet::Fleet;
use crate::key::CacheKey;
use crate::origin::Origins;
use crate::purge::Purger;
use crate::purge::{Purge, Refused, Requester};
use crate::request::ClientInfo;

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

/// The answer to a failed operation, by its kind: a client's mistake gets
/// `client_status`, anything else 503. `retry` says whether sending the same request
/// again is safe (nothing was applied) and may succeed.
fn failure(client_status: StatusCode, message: &str, kind: &dyn Kind) -> Response<Body> {
    let status = match kind.side() {
        Side::Client => client_status,
        Side::Origin | Side::Internal => StatusCode::SERVICE_UNAVAILABLE,
    };
    json(
        status,
        &serde_json::json!({ "error": message, "retry": kind.retry_safe() }),
    )
}

/// A refused purge: 400 for a malformed one, 403 out of scope, 503 when the
/// fleet's bus cannot be reached (with `"retry": true`).
fn refusal(refused: &Refused) -> Response<Body> {
    let status = match refused {
        Refused::OutOfScope(_) => StatusCode::FORBIDDEN,
        Refused::Invalid(_) | Refused::Unavailable(_) => StatusCode::BAD_REQUEST,
    };
    failure(status, &refused.to_string(), refused)
}

/// The admin API and the `PURGE` method. It reads the configuration the proxy
/// swaps, reports on the store, the flights and the origins, and hands every purge
/// to its [`Purger`].
pub struct Admin {
    config: Arc<arc_swap::ArcSwap<Settings>>,
    /// The store, the flights, the origins and the metrics it reports on.
    fetcher: Arc<Fetcher>,
    purger: Arc<Purger>,
    /// The fleet this node purges with, if any.
    fleet: Option<Arc<Fleet>>,
}

impl Admin {
    /// `seen`: where the fleet publishes the newest purge applied here (the fetcher
    /// sends it to the node behind); given when the settings name a fleet.
    pub(crate) fn new(
        config: Arc<arc_swap::ArcSwap<Settings>>,
        fetcher: Arc<Fetcher>,
        seen: Option<tokio::sync::watch::Sender<crate::purge::StreamId>>,
    ) -> Admin {
        let settings = config.load_full();
        let purger = Arc::new(Purger::new(
            fetcher.store.clone(),
            fetcher.flights.clone(),
            fetcher.metrics.clone(),
            settings.admin.request_id_window,
        ));
        let fleet = settings.fleet.clone().zip(seen).and_then(|(f, seen)| {
            Fleet::new(
                f,
                purger.clone(),
                fetcher.metrics.clone(),
                settings.admin.request_id_window,
                seen,
            )
            .map_err(|e| tracing::error!(error = %e, "fleet: not joined"))
            .ok()
        });
        Admin {
            config,
            fetcher,
            purger,
            fleet,
        }
    }

    /// The fleet this node purges with, if any.
    pub(crate) fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    fn cfg(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.config.load()
    }

    fn settings(&self) -> Arc<Settings> {
        self.config.load_full()
    }

    fn origins(&self) -> Arc<Origins> {
        self.fetcher.origins()
    }

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

    /// Admin routes. `path` is relative to the admin root (`/purge`, `/stats`, …);
    /// `reload` re-reads and applies the configuration (the proxy's).
    pub async fn serve(
        &self,
        req: Request<Incoming>,
        client: ClientInfo,
        path: &str,
        reload: impl FnOnce() -> Result<ReloadReport, ReloadError>,
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
                let mut res = Response::new(body::full(self.fetcher.metrics.render()));
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
                match reload() {
                    Ok(report) => {
                        info!(target: "lacquer::audit", token = %token.name, ?report, "configuration reloaded");
                        json(
                            StatusCode::OK,
                            &serde_json::json!({ "reloaded": true, "report": report }),
                        )
                    }
                    Err(reason) => {
                        info!(target: "lacquer::audit", token = %token.name, %reason, "reload rejected");
                        failure(
                            StatusCode::BAD_REQUEST,
                            &format!("reload rejected, old configuration kept: {reason}"),
                            &reason,
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
                self.purge_answer(purge, None, &token, &client, "api").await
            }
            (&Method::GET, "/fleet") => match self.authorize(&client, req.headers()) {
                Err(res) => *res,
                Ok(_) => match &self.fleet {
                    Some(fleet) => json(StatusCode::OK, &fleet.status().await),
                    None => problem(StatusCode::NOT_FOUND, "this node is not in a fleet"),
                },
            },
            (_, "/healthz" | "/stats" | "/purge" | "/metrics" | "/reload" | "/fleet") => {
                problem(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => problem(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }

    /// The `PURGE` method on a URL: every variant stored for it. `Lacquer-Soft-Purge: 1`
    /// makes it soft.
    pub(crate) async fn purge_method(
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
        let wait = match headers.get("lacquer-wait").map(|v| {
            v.to_str()
                .map(humantime_serde::re::humantime::parse_duration)
        }) {
            None => None,
            Some(Ok(Ok(wait))) => Some(wait),
            Some(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Lacquer-Wait must be a duration such as 2s",
                )
            }
        };
        let purge = Purge {
            urls: vec![url],
            soft,
            wait,
            ..Purge::default()
        };
        self.purge_answer(
            purge,
            Some(vec![key.clone()]),
            &token,
            client,
            "purge-method",
        )
        .await
    }

    /// One purge, from whichever source: admitted (validation, the token's scope),
    /// then applied here through the one function that applies purges, or handed to
    /// the fleet (which appends it to the bus and applies it here). Its answer
    /// rendered for HTTP: 200, or 202 when a fleet wait ran out before every node
    /// confirmed; a refusal in the one shape of failures.
    async fn purge_answer(
        &self,
        purge: Purge,
        keys: Option<Vec<CacheKey>>,
        token: &Token,
        client: &ClientInfo,
        via: &'static str,
    ) -> Response<Body> {
        let cfg = self.settings();
        let wait = purge.wait;
        let requester = Requester {
            token,
            client: client.addr.ip(),
            via,
        };
        let admitted =
            match self
                .purger
                .admit(purge, keys, &cfg.key_rules, cfg.admin.max_batch, &requester)
            {
                Ok(admitted) => admitted,
                Err(refused) => return refusal(&refused),
            };
        let (applied, fleet) = match &self.fleet {
            // A dry run changes nothing anywhere: it is answered here.
            Some(fleet) if !admitted.purge.dry_run => match fleet.submit(admitted, wait).await {
                Ok(submitted) => (submitted.applied, Some(submitted.fleet)),
                Err(refused) => return refusal(&refused),
            },
            _ => (self.purger.apply(&admitted, "local"), None),
        };
        let mut status = StatusCode::OK;
        let mut res = match fleet {
            None => json(status, &applied.answer),
            Some(confirmation) => {
                if confirmation.complete == Some(false) {
                    status = StatusCode::ACCEPTED;
                }
                let mut answer = (*applied.answer).clone();
                if let Some(map) = answer.as_object_mut() {
                    map.insert(
                        "fleet".into(),
                        serde_json::to_value(&confirmation).unwrap_or_default(),
                    );
                }
                json(status, &answer)
            }
        };
        if applied.replayed {
            res.headers_mut().insert(
                "lacquer-idempotent-replay",
                HeaderValue::from_static("true"),
            );
        }
        res
    }

    fn refresh_gauges(&self) {
        self.fetcher.metrics.set_store(
            self.fetcher.store.len(),
            self.fetcher.store.weighted_size(),
            self.fetcher.store.tag_index_len(),
        );
        for u in self.origins().list() {
            self.fetcher
                .metrics
                .set_origin_health(&u.settings.name, u.is_healthy());
        }
    }

    /// The figures of `GET /stats`: the metrics, as JSON for people.
    pub fn stats(&self) -> serde_json::Value {
        let requests: serde_json::Map<String, serde_json::Value> = self
            .fetcher
            .metrics
            .requests_by_outcome()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let activity = *self.fetcher.flights.activity().borrow();
        let origins: Vec<serde_json::Value> = self
            .origins()
            .list()
            .iter()
            .map(|u| serde_json::json!({ "name": u.settings.name, "healthy": u.is_healthy() }))
            .collect();
        serde_json::json!({
            "entries": self.fetcher.store.len(),
            "bytes": self.fetcher.store.weighted_size(),
            "tag_index": self.fetcher.store.tag_index_len(),
            "purge_marks": self.fetcher.store.purge_marks(),
            "sweep_shards_scanned": self.fetcher.store.shards_swept(),
            "requests": requests,
            "coalesced_waiters": self.fetcher.metrics.coalesced_waiters.get(),
            "background_revalidations": self.fetcher.metrics.background_revalidations.get(),
            "evictions": self.fetcher.store.evictions(),
            "flights": activity.flights,
            "waiters": activity.waiters,
            "origins": origins,
        })
    }
}
