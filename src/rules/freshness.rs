//! The RFC 9111 rules as pure functions: may a response be stored (§3), how long
//! is it fresh (§4.2.1, §4.2.2), how old is it (§4.2.3), and may a stored response
//! answer this request (§4, §5.2.1).
//!
//! Invariant: nothing here does I/O or reads the clock; `now` is always passed in.
//! That keeps every rule testable as a table of cases.

use std::time::{Duration, SystemTime};

use http::header::{
    HeaderMap, HeaderName, AGE, AUTHORIZATION, COOKIE, DATE, EXPIRES, LAST_MODIFIED, SET_COOKIE,
};
use http::StatusCode;

use crate::directives::{Directives, MaxStale, DELTA_MAX};

/// The knobs of the caching policy (validated config, see `config.rs`).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Fraction of (Date − Last-Modified) used as heuristic freshness (§4.2.2).
    pub heuristic_fraction: f64,
    /// Cap on heuristic freshness.
    pub heuristic_max: Duration,
    /// Whether responses carrying `Set-Cookie` may be stored.
    pub store_set_cookie: bool,
    /// Whether request `no-cache` / `max-age` may force a revalidation (RFC: yes).
    pub honor_client_no_cache: bool,
    /// Targeted cache-control fields, highest priority first (RFC 9213).
    pub targeted_fields: Vec<HeaderName>,
    /// Obey `Surrogate-Control` above everything (and strip it downstream).
    pub surrogate_control: bool,
    /// Give heuristic freshness (§4.2.2) to responses to requests that carry
    /// `Cookie` or `Authorization` (off: such a response without explicit freshness
    /// is likely personal, and is not stored).
    pub heuristic_with_credentials: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(86_400),
            store_set_cookie: false,
            honor_client_no_cache: true,
            targeted_fields: vec![HeaderName::from_static("cdn-cache-control")],
            surrogate_control: true,
            heuristic_with_credentials: false,
        }
    }
}

/// Why a response was not stored. Rendered into `Cache-Status; detail=` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    MustUnderstand,
    NoFreshness,
    VaryStar,
    VaryPrivate,
    TooLarge,
    RequestNoStore,
    Range,
    Incomplete,
    /// No explicit freshness, and the request carried `Cookie` or `Authorization`.
    Credentials,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::MustUnderstand => "must-understand",
            NotStored::NoFreshness => "no-freshness",
            NotStored::VaryStar => "vary-star",
            NotStored::VaryPrivate => "vary-private",
            NotStored::TooLarge => "too-large",
            NotStored::RequestNoStore => "request-no-store",
            NotStored::Range => "range",
            NotStored::Incomplete => "incomplete",
            NotStored::Credentials => "credentials",
        }
    }
}

/// Status codes whose caching semantics Lacquer implements (§3, §5.2.2.3).
/// 206 is absent on purpose: only complete responses are stored.
pub fn status_understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Heuristically cacheable statuses (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The directives Lacquer obeys for its own freshness: the first valid targeted
/// field (RFC 9213 §2.2), else `Cache-Control`. When a targeted field is used,
/// `Cache-Control` and `Expires` are ignored for our own caching decisions.
/// `Surrogate-Control`: directives for surrogates (proxies) only, in Cache-Control
/// syntax; highest priority of all when enabled.
pub static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

pub fn effective_directives(headers: &HeaderMap, policy: &Policy) -> (Directives, bool) {
    if policy.surrogate_control && headers.contains_key(&SURROGATE_CONTROL) {
        let mut d = Directives::default();
        for v in headers.get_all(&SURROGATE_CONTROL) {
            let parsed = Directives::parse(&String::from_utf8_lossy(v.as_bytes()));
            d = merge_surrogate(d, parsed);
        }
        return (d, true);
    }
    for field in &policy.targeted_fields {
        if let Some(d) = Directives::from_targeted(headers, field) {
            return (d, true);
        }
    }
    (Directives::from_cache_control(headers), false)
}

fn merge_surrogate(mut a: Directives, b: Directives) -> Directives {
    a.max_age = b.max_age.or(a.max_age);
    a.no_store |= b.no_store;
    a.stale_while_revalidate = b.stale_while_revalidate.or(a.stale_while_revalidate);
    a.stale_if_error = b.stale_if_error.or(a.stale_if_error);
    a
}

/// May this response to a GET be stored by a shared cache? (§3, §3.5, §5.2.2)
/// Only GET responses are ever stored; the caller checks the method.
/// `lifetime` is the freshness lifetime computed by [`freshness_lifetime`].
pub fn storable(
    req_headers: &HeaderMap,
    req: &Directives,
    status: StatusCode,
    res_headers: &HeaderMap,
    res: &Directives,
    lifetime: Duration,
    policy: &Policy,
) -> Result<(), NotStored> {
    if req.no_store {
        return Err(NotStored::RequestNoStore);
    }
    // §5.2.2.3: with must-understand, a cache stores only statuses it understands,
    // and then ignores no-store.
    if res.must_understand {
        if !status_understood(status) {
            return Err(NotStored::MustUnderstand);
        }
    } else if res.no_store {
        return Err(NotStored::NoStore);
    }
    if !status_understood(status) {
        return Err(NotStored::Status);
    }
    if res.private {
        return Err(NotStored::Private);
    }
    // §3.5: a shared cache stores a response to an authenticated request only when
    // the response explicitly allows it.
    if req_headers.contains_key(AUTHORIZATION)
        && !(res.public || res.s_maxage.is_some() || res.must_revalidate)
    {
        return Err(NotStored::Authorization);
    }
    if !policy.store_set_cookie && res_headers.contains_key(SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if vary_is_star(res_headers) {
        return Err(NotStored::VaryStar);
    }
    // §3: some explicit permission or a heuristically cacheable status; and we only
    // keep what can be reused: fresh for a while, or revalidatable.
    let explicit = res.public
        || res.max_age.is_some()
        || res.s_maxage.is_some()
        || res_headers.contains_key(EXPIRES);
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStored::NoFreshness);
    }
    // Without explicit freshness, what answers a request with credentials is kept
    // only if the policy says so: a personal page with a Last-Modified would
    // otherwise be shared for a tenth of its age.
    if !explicit
        && !policy.heuristic_with_credentials
        && (req_headers.contains_key(COOKIE) || req_headers.contains_key(AUTHORIZATION))
    {
        return Err(NotStored::Credentials);
    }
    if lifetime.is_zero() && !has_validator(res_headers) {
        return Err(NotStored::NoFreshness);
    }
    Ok(())
}

pub fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::ETAG) || headers.contains_key(LAST_MODIFIED)
}

pub fn vary_is_star(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| p.trim_ascii() == b"*")
    })
}

/// Where a freshness lifetime came from (for debugging and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    SMaxAge,
    MaxAge,
    Expires,
    Heuristic,
    None,
}

/// Freshness lifetime for a shared cache (§4.2.1): `s-maxage`, then `max-age`,
/// then `Expires − Date`, then a heuristic (§4.2.2) where allowed.
/// `response_time` stands in for a missing or invalid `Date`.
pub fn freshness_lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    d: &Directives,
    targeted: bool,
    response_time: SystemTime,
    policy: &Policy,
) -> (Duration, LifetimeSource) {
    if let Some(s) = d.s_maxage {
        return (secs(s), LifetimeSource::SMaxAge);
    }
    if let Some(m) = d.max_age {
        return (secs(m), LifetimeSource::MaxAge);
    }
    if !targeted {
        let mut expires = headers.get_all(EXPIRES).iter();
        if let Some(first) = expires.next() {
            // §5.3: an invalid Expires (or a duplicated one with another value)
            // means "already expired".
            let duplicate_conflict = expires.any(|v| v != first);
            let parsed = first
                .to_str()
                .ok()
                .and_then(|s| httpdate::parse_http_date(s).ok());
            return match (parsed, duplicate_conflict) {
                (Some(exp), false) => {
                    let date = date_value(headers).unwrap_or(response_time);
                    (
                        exp.duration_since(date).unwrap_or(Duration::ZERO),
                        LifetimeSource::Expires,
                    )
                }
                _ => (Duration::ZERO, LifetimeSource::Expires),
            };
        }
    }
    if heuristically_cacheable(status) || d.public {
        if let Some(lm) = header_date(headers, &LAST_MODIFIED) {
            let date = date_value(headers).unwrap_or(response_time);
            if let Ok(since) = date.duration_since(lm) {
                let h = since.mul_f64(policy.heuristic_fraction.clamp(0.0, 1.0));
                return (h.min(policy.heuristic_max), LifetimeSource::Heuristic);
            }
        }
    }
    (Duration::ZERO, LifetimeSource::None)
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

pub fn header_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v.trim()).ok()
}

pub fn date_value(headers: &HeaderMap) -> Option<SystemTime> {
    header_date(headers, &DATE)
}

/// The `Age` field per §5.1: the first member of a list; an invalid value is ignored.
pub fn age_value(headers: &HeaderMap) -> Duration {
    let Some(v) = headers.get(AGE) else {
        return Duration::ZERO;
    };
    let first = v
        .as_bytes()
        .split(|b| *b == b',')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    let s = std::str::from_utf8(first).unwrap_or("");
    crate::directives::parse_delta(s).map_or(Duration::ZERO, secs)
}

/// `corrected_initial_age` of §4.2.3.
pub fn corrected_initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let date = date_value(headers).unwrap_or(response_time);
    let apparent_age = response_time.duration_since(date).unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    let corrected_age_value = age_value(headers).saturating_add(response_delay);
    apparent_age.max(corrected_age_value)
}

/// `current_age` of §4.2.3.
pub fn current_age(
    corrected_initial_age: Duration,
    response_time: SystemTime,
    now: SystemTime,
) -> Duration {
    Born::new(response_time, corrected_initial_age).age(now)
}

/// The moment a stored response's age was zero: `response_time −
/// corrected_initial_age` (§4.2.3), so that its `current_age`, which is
/// `corrected_initial_age + (now − response_time)`, is `now − born`. Nanoseconds from the Unix epoch,
/// signed (an `Age` of decades puts it before 1970): 8 bytes where the two values
/// took 32. If the clock steps back below `response_time`, the age shrinks with it
/// (never below zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Born(i64);

impl Born {
    pub fn new(response_time: SystemTime, corrected_initial_age: Duration) -> Born {
        let age = i64::try_from(corrected_initial_age.as_nanos()).unwrap_or(i64::MAX);
        Born(epoch_nanos(response_time).saturating_sub(age))
    }

    /// `current_age` at `now`.
    pub fn age(self, now: SystemTime) -> Duration {
        let age = epoch_nanos(now).saturating_sub(self.0);
        Duration::from_nanos(u64::try_from(age).unwrap_or(0))
    }
}

fn epoch_nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// The value of an `Age` header: whole seconds, capped per §1.2.2.
pub fn age_header_secs(age: Duration) -> u64 {
    age.as_secs().min(u64::from(DELTA_MAX))
}

/// What the freshness rules allow for a stored response and this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh: serve it.
    Fresh,
    /// Stale, but the request's `max-stale` accepts it (§4.2.4).
    StaleAccepted,
    /// Must be validated with the origin first.
    Validate(ValidateReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateReason {
    /// The stored response is stale.
    Stale,
    /// The stored response has `no-cache` (§5.2.2.4).
    NoCache,
    /// The request asked for it (`no-cache`, `max-age`, `min-fresh`).
    Request,
}

/// Decides reuse of a stored response (§4, §4.2.4, §5.2.1).
pub fn reuse(
    age: Duration,
    lifetime: Duration,
    res: &Directives,
    req: &Directives,
    policy: &Policy,
) -> Reuse {
    if res.no_cache {
        return Reuse::Validate(ValidateReason::NoCache);
    }
    if policy.honor_client_no_cache {
        if req.no_cache {
            return Reuse::Validate(ValidateReason::Request);
        }
        if let Some(max_age) = req.max_age {
            if age > secs(max_age) {
                return Reuse::Validate(ValidateReason::Request);
            }
        }
    }
    if lifetime > age {
        if let Some(min_fresh) = req.min_fresh {
            if lifetime - age < secs(min_fresh) {
                return Reuse::Validate(ValidateReason::Request);
            }
        }
        return Reuse::Fresh;
    }
    // Stale. §4.2.4 and §5.2.2.2/§5.2.2.8/§5.2.2.10: must-revalidate, proxy-revalidate
    // and s-maxage forbid serving stale in a shared cache.
    let staleness = age - lifetime;
    let forbid_stale = res.must_revalidate || res.proxy_revalidate || res.s_maxage.is_some();
    if !forbid_stale {
        match req.max_stale {
            Some(MaxStale::Any) => return Reuse::StaleAccepted,
            Some(MaxStale::Seconds(n)) if staleness <= secs(n) => return Reuse::StaleAccepted,
            _ => {}
        }
    }
    Reuse::Validate(ValidateReason::Stale)
}

/// May stale content be served past its freshness? `must-revalidate`,
/// `proxy-revalidate` and `no-cache` forbid it outright (RFC 9111 §4.2.4).
fn stale_forbidden(res: &Directives) -> bool {
    res.must_revalidate || res.proxy_revalidate || res.no_cache
}

/// The stale-while-revalidate window (RFC 5861 §3): the response's directive, else the
/// configured default. An explicit directive is honoured even with `s-maxage` (as CDNs
/// do: the origin asked for it); the configured default is not, since `s-maxage`
/// carries `proxy-revalidate` semantics for a shared cache (§5.2.2.10).
pub fn swr_window(res: &Directives, default: Duration) -> Duration {
    if stale_forbidden(res) {
        return Duration::ZERO;
    }
    match res.stale_while_revalidate {
        Some(s) => secs(s),
        None if res.s_maxage.is_some() => Duration::ZERO,
        None => default,
    }
}

/// The stale-if-error window (RFC 5861 §4): the response's or the request's directive
/// (the larger), else the configured default; same exclusions as [`swr_window`].
pub fn sie_window(res: &Directives, req: &Directives, default: Duration) -> Duration {
    if stale_forbidden(res) {
        return Duration::ZERO;
    }
    match (res.stale_if_error, req.stale_if_error) {
        (None, None) if res.s_maxage.is_some() => Duration::ZERO,
        (None, None) => default,
        (a, b) => secs(a.unwrap_or(0).max(b.unwrap_or(0))),
    }
}

/// The grace used while the origin is down: `grace`, unless stale use is forbidden.
pub fn grace_window(res: &Directives, grace: Duration) -> Duration {
    if stale_forbidden(res) {
        Duration::ZERO
    } else {
        grace
    }
}

/// Is a response of this age within `window` past its lifetime?
pub fn within_stale_window(age: Duration, lifetime: Duration, window: Duration) -> bool {
    age >= lifetime && age - lifetime <= window && !window.is_zero()
}

/// Remaining freshness in whole seconds (negative when stale): `Cache-Status; ttl=`.
pub fn ttl_secs(lifetime: Duration, age: Duration) -> i64 {
    lifetime.as_secs() as i64 - age.as_secs() as i64
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // tables of cases
mod tests {
    use super::*;
    use http::HeaderValue;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn lifetime_of(pairs: &[(&str, &str)]) -> (u64, LifetimeSource) {
        let h = headers(pairs);
        let policy = Policy::default();
        let (d, targeted) = effective_directives(&h, &policy);
        let (l, src) = freshness_lifetime(StatusCode::OK, &h, &d, targeted, t(0), &policy);
        (l.as_secs(), src)
    }

    #[test]
    fn lifetime_precedence_table() {
        let date = httpdate::fmt_http_date(t(0));
        let exp = httpdate::fmt_http_date(t(300));
        let lm = httpdate::fmt_http_date(t(0) - Duration::from_secs(1000));
        let cases: Vec<(Vec<(&str, &str)>, u64, LifetimeSource)> = vec![
            (
                vec![("cache-control", "max-age=60, s-maxage=120")],
                120,
                LifetimeSource::SMaxAge,
            ),
            (
                vec![
                    ("cache-control", "max-age=60"),
                    ("expires", &exp),
                    ("date", &date),
                ],
                60,
                LifetimeSource::MaxAge,
            ),
            (
                vec![("expires", &exp), ("date", &date)],
                300,
                LifetimeSource::Expires,
            ),
            (
                vec![("expires", "0"), ("date", &date)],
                0,
                LifetimeSource::Expires,
            ),
            (vec![("expires", "garbage")], 0, LifetimeSource::Expires),
            (
                vec![("expires", &exp), ("expires", &date), ("date", &date)],
                0,
                LifetimeSource::Expires,
            ),
            (
                vec![("last-modified", &lm), ("date", &date)],
                100,
                LifetimeSource::Heuristic,
            ),
            (vec![], 0, LifetimeSource::None),
            // RFC 9213: the targeted field wins over Cache-Control and Expires.
            (
                vec![
                    ("cdn-cache-control", "max-age=600"),
                    ("cache-control", "max-age=5"),
                ],
                600,
                LifetimeSource::MaxAge,
            ),
            (
                vec![("cdn-cache-control", "no-store"), ("expires", &exp)],
                0,
                LifetimeSource::None,
            ),
            // Surrogate-Control is above every other field.
            (
                vec![
                    ("surrogate-control", "max-age=900"),
                    ("cdn-cache-control", "max-age=600"),
                    ("cache-control", "max-age=5"),
                ],
                900,
                LifetimeSource::MaxAge,
            ),
            // An invalid targeted field falls back to Cache-Control.
            (
                vec![
                    ("cdn-cache-control", "max-age=="),
                    ("cache-control", "max-age=7"),
                ],
                7,
                LifetimeSource::MaxAge,
            ),
        ];
        for (pairs, want, src) in cases {
            assert_eq!(lifetime_of(&pairs), (want, src), "headers {pairs:?}");
        }
    }

    #[test]
    fn heuristic_is_capped() {
        let lm = httpdate::fmt_http_date(t(0) - Duration::from_secs(10_000_000));
        let (l, _) = lifetime_of(&[("last-modified", &lm)]);
        assert_eq!(l, 86_400);
    }

    #[test]
    fn age_arithmetic_follows_4_2_3() {
        // Origin says Age: 10, Date is 5s before we got the response, which took 2s.
        let h = headers(&[("age", "10"), ("date", &httpdate::fmt_http_date(t(95)))]);
        let cia = corrected_initial_age(&h, t(98), t(100));
        assert_eq!(cia.as_secs(), 12); // max(apparent 5, 10 + 2)
        assert_eq!(current_age(cia, t(100), t(130)).as_secs(), 42);
        // Clock skew: Date in the future never yields a negative age.
        let h = headers(&[("date", &httpdate::fmt_http_date(t(500)))]);
        assert_eq!(corrected_initial_age(&h, t(100), t(100)).as_secs(), 0);
    }

    #[test]
    fn malformed_age_values() {
        assert_eq!(age_value(&headers(&[("age", "abc")])).as_secs(), 0);
        assert_eq!(age_value(&headers(&[("age", "-5")])).as_secs(), 0);
        assert_eq!(age_value(&headers(&[("age", "7, 9")])).as_secs(), 7);
        assert_eq!(
            age_value(&headers(&[("age", "99999999999")])).as_secs(),
            u64::from(DELTA_MAX)
        );
    }

    fn storable_with(
        req: &[(&str, &str)],
        status: u16,
        res: &[(&str, &str)],
    ) -> Result<(), NotStored> {
        let policy = Policy::default();
        let rq = headers(req);
        let rs = headers(res);
        let (d, targeted) = effective_directives(&rs, &policy);
        let status = StatusCode::from_u16(status).unwrap();
        let (l, _) = freshness_lifetime(status, &rs, &d, targeted, t(0), &policy);
        storable(
            &rq,
            &Directives::from_cache_control(&rq),
            status,
            &rs,
            &d,
            l,
            &policy,
        )
    }

    #[test]
    fn storability_table() {
        use NotStored::*;
        let cases: Vec<(
            Vec<(&str, &str)>,
            u16,
            Vec<(&str, &str)>,
            Result<(), NotStored>,
        )> = vec![
            (vec![], 200, vec![("cache-control", "max-age=60")], Ok(())),
            (
                vec![],
                200,
                vec![("cache-control", "no-store, max-age=60")],
                Err(NoStore),
            ),
            (
                vec![],
                200,
                vec![("cache-control", "private, max-age=60")],
                Err(Private),
            ),
            (
                vec![],
                200,
                vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                Err(SetCookie),
            ),
            (
                vec![("authorization", "Bearer x")],
                200,
                vec![("cache-control", "max-age=60")],
                Err(Authorization),
            ),
            (
                vec![("authorization", "Bearer x")],
                200,
                vec![("cache-control", "public, max-age=60")],
                Ok(()),
            ),
            (
                vec![("authorization", "Bearer x")],
                200,
                vec![("cache-control", "s-maxage=60")],
                Ok(()),
            ),
            (
                vec![("authorization", "Bearer x")],
                200,
                vec![("cache-control", "must-revalidate, max-age=6")],
                Ok(()),
            ),
            (
                vec![],
                200,
                vec![("cache-control", "no-cache"), ("etag", "\"a\"")],
                Ok(()),
            ),
            (vec![], 200, vec![], Err(NoFreshness)),
            (vec![], 200, vec![("etag", "\"a\"")], Ok(())),
            (vec![], 302, vec![("etag", "\"a\"")], Err(NoFreshness)),
            (vec![], 302, vec![("cache-control", "max-age=60")], Ok(())),
            (
                vec![],
                206,
                vec![("cache-control", "max-age=60")],
                Err(Status),
            ),
            (
                vec![],
                500,
                vec![("cache-control", "max-age=60")],
                Err(Status),
            ),
            (
                vec![],
                200,
                vec![("cache-control", "max-age=60, no-store, must-understand")],
                Ok(()),
            ),
            (
                vec![],
                299,
                vec![("cache-control", "max-age=60, no-store, must-understand")],
                Err(MustUnderstand),
            ),
            (
                vec![],
                200,
                vec![("cache-control", "max-age=60"), ("vary", "accept, *")],
                Err(VaryStar),
            ),
            (
                vec![("cache-control", "no-store")],
                200,
                vec![("cache-control", "max-age=60")],
                Err(RequestNoStore),
            ),
            (
                vec![("pragma", "no-cache")],
                200,
                vec![("cache-control", "max-age=60, x-ext")],
                Ok(()),
            ),
        ];
        for (req, status, res, want) in cases {
            assert_eq!(
                storable_with(&req, status, &res),
                want,
                "req {req:?} status {status} res {res:?}"
            );
        }
    }

    #[test]
    fn stale_windows() {
        let d = Directives::parse;
        let z = Duration::ZERO;
        let s = Duration::from_secs;
        assert_eq!(
            swr_window(&d("max-age=1, stale-while-revalidate=30"), z),
            s(30)
        );
        assert_eq!(swr_window(&d("max-age=1"), s(10)), s(10));
        assert_eq!(
            swr_window(&d("s-maxage=1, stale-while-revalidate=30"), z),
            s(30)
        );
        assert_eq!(swr_window(&d("s-maxage=1"), s(10)), z);
        assert_eq!(
            swr_window(
                &d("max-age=1, must-revalidate, stale-while-revalidate=30"),
                z
            ),
            z
        );
        assert_eq!(swr_window(&d("no-cache, stale-while-revalidate=30"), z), z);
        assert_eq!(
            sie_window(&d("max-age=1, stale-if-error=60"), &d(""), z),
            s(60)
        );
        assert_eq!(
            sie_window(&d("max-age=1"), &d("stale-if-error=90"), z),
            s(90)
        );
        assert_eq!(sie_window(&d("max-age=1"), &d(""), s(5)), s(5));
        assert_eq!(
            sie_window(
                &d("max-age=1, proxy-revalidate, stale-if-error=9"),
                &d(""),
                s(5)
            ),
            z
        );
        assert!(within_stale_window(s(70), s(60), s(10)));
        assert!(!within_stale_window(s(71), s(60), s(10)));
        assert!(!within_stale_window(s(50), s(60), s(10)));
        assert!(!within_stale_window(s(60), s(60), z));
    }

    #[test]
    fn reuse_table() {
        use Reuse::*;
        use ValidateReason::*;
        let p = Policy::default();
        let lenient = Policy {
            honor_client_no_cache: false,
            ..Policy::default()
        };
        let d = Directives::parse;
        let s = Duration::from_secs;
        let cases: Vec<(u64, u64, &str, &str, &Policy, Reuse)> = vec![
            (10, 60, "max-age=60", "", &p, Fresh),
            (60, 60, "max-age=60", "", &p, Validate(Stale)),
            (70, 60, "max-age=60", "max-stale", &p, StaleAccepted),
            (70, 60, "max-age=60", "max-stale=5", &p, Validate(Stale)),
            (70, 60, "max-age=60", "max-stale=10", &p, StaleAccepted),
            (
                70,
                60,
                "max-age=60, must-revalidate",
                "max-stale",
                &p,
                Validate(Stale),
            ),
            (70, 60, "s-maxage=60", "max-stale", &p, Validate(Stale)),
            (
                70,
                60,
                "max-age=60, proxy-revalidate",
                "max-stale",
                &p,
                Validate(Stale),
            ),
            (10, 60, "no-cache, max-age=60", "", &p, Validate(NoCache)),
            (10, 60, "max-age=60", "no-cache", &p, Validate(Request)),
            (10, 60, "max-age=60", "max-age=0", &p, Validate(Request)),
            (10, 60, "max-age=60", "max-age=10", &p, Fresh),
            (10, 60, "max-age=60", "min-fresh=55", &p, Validate(Request)),
            (10, 60, "max-age=60", "min-fresh=50", &p, Fresh),
            (10, 60, "max-age=60", "no-cache", &lenient, Fresh),
            (10, 60, "max-age=60", "max-age=0", &lenient, Fresh),
        ];
        for (age, life, res, req, policy, want) in cases {
            assert_eq!(
                reuse(s(age), s(life), &d(res), &d(req), policy),
                want,
                "age {age} life {life} res {res:?} req {req:?}"
            );
        }
    }

    #[test]
    fn born_gives_current_age_even_for_ages_older_than_the_epoch() {
        let epoch = SystemTime::UNIX_EPOCH;
        let century = Duration::from_secs(100 * 365 * 86_400);
        let born = Born::new(epoch + Duration::from_secs(10), century);
        assert_eq!(
            born.age(epoch + Duration::from_secs(20)),
            century + Duration::from_secs(10)
        );
        // A clock behind the birth: zero, not a wrapped huge age.
        let born = Born::new(epoch + Duration::from_secs(100), Duration::ZERO);
        assert_eq!(born.age(epoch + Duration::from_secs(50)), Duration::ZERO);
    }
}
