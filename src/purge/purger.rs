//! Applying a purge: [`Purger::apply`] is the one function that applies purges,
//! whatever their source (the JSON API, the `PURGE` method, the fleet's bus, and
//! later the dialects and webhooks). A source only turns its input into a
//! [`Purge`] (and says who asks); [`Purger::admit`] validates it and checks the
//! token's scope, and `apply` replays a repeated request id or applies it to the
//! store, detaches the flights in progress, counts it and writes the audit line.
//! In a fleet the admitted purge travels on the bus between the two. It answers
//! with plain values; the source renders them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::coalesce::Flights;
use crate::config::{Operation, Token};
use crate::key::{self, CacheKey, KeyRules};
use crate::metrics::Metrics;
use crate::purge::Purge;
use crate::store::Store;

/// Who asks for a purge, and through which source (named in the audit log).
pub struct Requester<'a> {
    pub token: &'a Token,
    pub client: IpAddr,
    pub via: &'static str,
}

/// A purge applied, or the answer of the first one with its request id.
#[derive(Debug, Clone)]
pub struct Applied {
    /// `request_id`, `token` and the `report`, as the API answers them.
    pub answer: Arc<serde_json::Value>,
    /// The answer is a replay of an earlier purge with the same request id.
    pub replayed: bool,
}

/// A purge that passed validation and its token's scope where it arrived: ready to
/// apply here, or to travel on the fleet's bus (it serializes) to be applied on
/// every node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Admitted {
    pub purge: Purge,
    /// The full keys of `purge.urls`.
    pub keys: Vec<String>,
    /// The token's name (its scope was checked on admission).
    pub token: String,
    /// The source: `api`, `purge-method`, …
    pub via: String,
    pub client: IpAddr,
}

/// Why a purge was not applied (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The purge is malformed (a 400 for HTTP sources); the text names the problem.
    Invalid(String),
    /// The token may not do this (a 403); the text names the item.
    OutOfScope(String),
    /// The purge could not be handed to the fleet's bus (a 503): it was applied
    /// nowhere, and the same request may be sent again.
    Unavailable(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Invalid(m) | Refused::OutOfScope(m) | Refused::Unavailable(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for Refused {}

impl crate::error::Kind for Refused {
    fn side(&self) -> crate::error::Side {
        match self {
            Refused::Invalid(_) | Refused::OutOfScope(_) => crate::error::Side::Client,
            Refused::Unavailable(_) => crate::error::Side::Internal,
        }
    }

    /// Nothing was applied; only an unreachable bus may answer differently later.
    fn retry_safe(&self) -> bool {
        matches!(self, Refused::Unavailable(_))
    }
}

/// The only caller of `Store::purge` and of `Flights::detach_all`.
pub struct Purger {
    store: Arc<Store>,
    flights: Arc<Flights>,
    metrics: Arc<Metrics>,
    /// Answers of recent purges by (token, request id), for idempotent replays.
    answers: moka::sync::Cache<String, Arc<serde_json::Value>>,
}

impl Purger {
    /// `window`: how long a request id is remembered (`admin.request_id_window`).
    pub fn new(
        store: Arc<Store>,
        flights: Arc<Flights>,
        metrics: Arc<Metrics>,
        window: Duration,
    ) -> Purger {
        let answers = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(window.max(Duration::from_millis(1)))
            .build();
        Purger {
            store,
            flights,
            metrics,
            answers,
        }
    }

    /// Checks a purge from `requester`: its shape, its URLs' keys and the token's
    /// scope. `keys` are the keys of `purge.urls` when the source has them (the
    /// `PURGE` method: the request's own keyed values); otherwise each URL's key is
    /// that of a plain request for it under `rules`. A refusal is audited.
    pub fn admit(
        &self,
        purge: Purge,
        keys: Option<Vec<CacheKey>>,
        rules: &KeyRules,
        max_batch: usize,
        requester: &Requester<'_>,
    ) -> Result<Admitted, Refused> {
        purge
            .validate(max_batch)
            .map_err(|e| Refused::Invalid(e.0))?;
        let keys = match keys {
            Some(keys) => keys,
            None => url_keys(rules, &purge.urls)?,
        };
        let token = requester.token;
        if let Err(message) = scope_check(token, &purge) {
            info!(target: "lacquer::audit", token = %token.name, via = requester.via, client = %requester.client, refused = %message, "purge refused");
            return Err(Refused::OutOfScope(message));
        }
        Ok(Admitted {
            purge,
            keys: keys.into_iter().map(|k| k.full).collect(),
            token: token.name.clone(),
            via: requester.via.to_string(),
            client: requester.client,
        })
    }

    /// The answer of the purge applied earlier under this one's token and request
    /// id, if any (a replay applies nothing).
    pub fn replay(&self, admitted: &Admitted) -> Option<Applied> {
        let first = self.answers.get(&replay_key(admitted)?)?;
        Some(Applied {
            answer: first,
            replayed: true,
        })
    }

    /// Applies an admitted purge (the one function that does, whatever its source:
    /// a local request, or the fleet's bus, `from` naming the node it came from).
    /// A purge whose token and request id were applied before is not applied again:
    /// the first answer is replayed.
    pub fn apply(&self, admitted: &Admitted, from: &str) -> Applied {
        if let Some(replayed) = self.replay(admitted) {
            return replayed;
        }
        let purge = &admitted.purge;
        let keys: Vec<CacheKey> = admitted.keys.iter().cloned().map(CacheKey::new).collect();
        let report = self.store.purge(purge, &keys);
        let token = &admitted.token;
        if !purge.dry_run {
            for (op, present) in [
                ("tag", !purge.tags.is_empty()),
                ("url", !purge.urls.is_empty()),
                ("prefix", !purge.prefixes.is_empty()),
                ("all", purge.all),
            ] {
                if present {
                    self.metrics.purge(op, token, purge.soft);
                }
            }
            // Requests after the purge must not join a fetch that began before it.
            self.flights.detach_all();
        }
        info!(
            target: "lacquer::audit",
            token = %token,
            via = %admitted.via,
            from,
            client = %admitted.client,
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
            tracing::warn!(target: "lacquer::audit", token = %token, "BREAK-GLASS: everything purged");
        }
        let answer = Arc::new(serde_json::json!({
            "request_id": purge.request_id,
            "token": token,
            "report": report,
        }));
        if let Some(k) = replay_key(admitted) {
            if !purge.dry_run {
                self.answers.insert(k, answer.clone());
            }
        }
        Applied {
            answer,
            replayed: false,
        }
    }

    /// Everything stored must be revalidated before it is reused (the bus lost
    /// track of purges, or has been out of reach for too long). O(1).
    pub fn require_revalidation(&self, reason: &str) {
        let generation = self.store.require_revalidation();
        tracing::warn!(target: "lacquer::audit", reason, generation, "every stored response must be revalidated before reuse");
    }
}

/// Replays are remembered by token and request id.
fn replay_key(admitted: &Admitted) -> Option<String> {
    admitted
        .purge
        .request_id
        .as_ref()
        .map(|id| format!("{}\u{0}{id}", admitted.token))
}

/// The key of each URL, as a plain request for it would have (no keyed header or
/// cookie values).
fn url_keys(rules: &KeyRules, urls: &[String]) -> Result<Vec<CacheKey>, Refused> {
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            key::url_key(rules, url).ok_or_else(|| {
                Refused::Invalid(format!("urls[{i}] {url:?} is not an absolute http(s) URL"))
            })
        })
        .collect()
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
        let host = key::absolute_url(u).map(|(_, host, _)| host);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn purger() -> Purger {
        let store = Arc::new(Store::new(1 << 20, 8));
        let metrics = Arc::new(Metrics::default());
        Purger::new(
            store,
            Arc::new(Flights::default()),
            metrics,
            Duration::from_secs(60),
        )
    }

    fn token(operations: &[Operation], tags: &[&str]) -> Token {
        Token {
            name: "ci".into(),
            secret: b"0123456789abcdef".to_vec(),
            operations: operations.to_vec(),
            tags: tags.iter().map(|t| key::NamePattern::new(t)).collect(),
            hosts: Vec::new(),
        }
    }

    fn apply(p: &Purger, purge: &str, token: &Token) -> Result<Applied, Refused> {
        let purge: Purge = serde_json::from_str(purge).unwrap();
        let requester = Requester {
            token,
            client: IpAddr::from([127, 0, 0, 1]),
            via: "test",
        };
        let admitted = p.admit(purge, None, &KeyRules::default(), 10, &requester)?;
        Ok(p.apply(&admitted, "local"))
    }

    #[test]
    fn refusals_name_the_problem_and_change_nothing() {
        let p = purger();
        let ci = token(&[Operation::Tag, Operation::Url], &["campaign:*"]);
        let cases: &[(&str, Refused)] = &[
            (
                r#"{}"#,
                Refused::Invalid("empty purge: give tags, urls, prefixes or all".into()),
            ),
            (
                r#"{"urls":["/relative"]}"#,
                Refused::Invalid(r#"urls[0] "/relative" is not an absolute http(s) URL"#.into()),
            ),
            (
                r#"{"tags":["price:1"]}"#,
                Refused::OutOfScope(r#"tag "price:1" is outside the scope of token `ci`"#.into()),
            ),
            (
                r#"{"all":true}"#,
                Refused::OutOfScope(
                    "token `ci` may not purge everything (break-glass scope)".into(),
                ),
            ),
            (
                r#"{"prefixes":["shop.example/a/"]}"#,
                Refused::OutOfScope("token `ci` may not purge by prefix".into()),
            ),
        ];
        for (purge, refused) in cases {
            assert_eq!(apply(&p, purge, &ci).unwrap_err(), *refused, "{purge}");
        }
        assert_eq!(p.store.generation(), 0, "a refused purge changes nothing");
    }

    #[test]
    fn a_repeated_request_id_replays_the_first_answer() {
        let p = purger();
        let ci = token(&[Operation::Tag], &[]);
        let first = apply(&p, r#"{"tags":["a"],"request_id":"r1"}"#, &ci).unwrap();
        assert!(!first.replayed);
        let generation = p.store.generation();
        let again = apply(&p, r#"{"tags":["b"],"request_id":"r1"}"#, &ci).unwrap();
        assert!(again.replayed);
        assert_eq!(again.answer, first.answer);
        assert_eq!(p.store.generation(), generation, "a replay applies nothing");
        let dry = apply(
            &p,
            r#"{"tags":["c"],"dry_run":true,"request_id":"r2"}"#,
            &ci,
        )
        .unwrap();
        assert!(!dry.replayed);
        let real = apply(&p, r#"{"tags":["c"],"request_id":"r2"}"#, &ci).unwrap();
        assert!(!real.replayed, "a dry run is not remembered");
    }
}
