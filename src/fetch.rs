//! Going to the origin for a GET/HEAD: misses and validations, coalesced so that a
//! burst costs the origin one request; stale-while-revalidate in the background;
//! stale-if-error when the origin fails; hit-for-miss for what cannot be shared.
//!
//! The shape: [`Proxy::exchange`] talks to the origin and classifies the answer
//! ([`Exchange`]), touching nothing; [`Proxy::settle`] applies it to the store and
//! decides who gets what; [`Proxy::answer_shared`] turns a flight's [`Shared`]
//! result into one client's response (its conditionals, HEAD, Vary, stale rules).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    HeaderMap, AGE, CONTENT_LENGTH, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
    LAST_MODIFIED, RANGE,
};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use tracing::{debug, warn};

use crate::body::{self, Body};
use crate::coalesce::{FlightGuard, Interest, Join, Shared, SharedBody};
use crate::directives::Directives;
use crate::freshness::{self, NotStored};
use crate::key::{self, Variant};
use crate::origin::{OriginBody, Upstream};
use crate::outcome::{Fwd, Outcome};
use crate::proxy::{Proxy, Sent};
use crate::render::{content_length, response, VariantInfo, CACHE_STATUS};
use crate::request::Ctx;
use crate::store::{Fetched, StoredResponse};

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

impl Proxy {
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
        // covers whatever comes back (purge.rs).
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
                        if uncacheable_for_everyone(reason) && !self.cfg().uncacheable_ttl.is_zero()
                        {
                            self.uncacheable.insert(ctx.key.digest, ());
                        }
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
                if uncacheable_for_everyone(reason) && !self.cfg().uncacheable_ttl.is_zero() {
                    self.uncacheable.insert(ctx.key.digest, ());
                }
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
                                // Next time, skip the queue: this object does not fit.
                                uncacheable.insert(key.digest, ());
                                guard = None;
                                shared.stream();
                            }
                            shared.push(data);
                            if shared.full() {
                                let _paused = flights.paused();
                                if !shared.room().await {
                                    debug!(key = %key.full, "no reader left for a body too large to store");
                                    shared.finish(false);
                                    return;
                                }
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
    /// does (`Proxy::cached`), else fetch on its own.
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
