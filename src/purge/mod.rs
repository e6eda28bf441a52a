//! Purge as a value, and the generation marks that make every purge O(1).
//!
//! A purge never walks the entries it invalidates. Every fetch records the purge
//! generation current when its origin request started (`fetched_gen`); a purge takes
//! the next generation and writes a *mark* on what it covers (a tag, a prefix, a URL,
//! everything). An entry is valid only if it was fetched after every mark that
//! applies to it; that is checked on lookup (and on insert, which closes the race with
//! fetches in flight by construction). A background sweeper reclaims the memory of
//! hard-purged entries, after which old marks are dropped and a floor generation
//! keeps late fetches from ever coming back.
//!
//! Invariant: nothing that was fetched before a hard purge covering it is served
//! after the purge returns; nothing fetched before a soft purge is served as fresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

mod purger;

pub use purger::{Admitted, Applied, Purger, Refused, Requester};

/// On an edge's (or any fleet node's) requests to the node behind it: the last
/// purge it has applied. A shield catches up with it before answering.
pub static PURGED_THROUGH: http::HeaderName =
    http::HeaderName::from_static("lacquer-purged-through");

/// A stream entry's id: milliseconds and a sequence number, ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl std::str::FromStr for StreamId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(StreamId {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// What to invalidate, how, and who asked: produced by the admin API, the `PURGE`
/// method and the CLI alike, applied by one function ([`Purger::apply`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Purge {
    pub tags: Vec<String>,
    /// Absolute URLs (`http://host/path?query`): every variant stored for each.
    pub urls: Vec<String>,
    /// `host/path-prefix` (a scheme is allowed and ignored): a ban-like operation.
    pub prefixes: Vec<String>,
    /// Everything (break-glass scope only).
    pub all: bool,
    /// Mark stale instead of evicting: still usable under stale-while-revalidate /
    /// stale-if-error while the first request revalidates.
    pub soft: bool,
    /// Report what would be invalidated; change nothing.
    pub dry_run: bool,
    /// A repeated id within the idempotency window returns the first result.
    pub request_id: Option<String>,
    /// In a fleet: answer once every node that is alive has applied it, or after
    /// this long (at most 5 minutes). Not part of what is applied.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub wait: Option<std::time::Duration>,
}

impl Purge {
    pub fn items(&self) -> usize {
        self.tags.len() + self.urls.len() + self.prefixes.len() + usize::from(self.all)
    }

    /// Checks the shape of a purge: something to do, within `max_items`, no control
    /// characters or empty names. The message names the problem.
    pub fn validate(&self, max_items: usize) -> Result<(), InvalidPurge> {
        if self.items() == 0 {
            return Err(InvalidPurge(
                "empty purge: give tags, urls, prefixes or all".into(),
            ));
        }
        if self.items() > max_items {
            return Err(InvalidPurge(format!(
                "{} items exceed the limit of {max_items} per purge",
                self.items()
            )));
        }
        let bad = |s: &str| {
            s.is_empty() || s.len() > 2048 || s.chars().any(|c| c.is_control() || c == ' ')
        };
        for (field, list) in [
            ("tags", &self.tags),
            ("urls", &self.urls),
            ("prefixes", &self.prefixes),
        ] {
            if let Some((i, v)) = list.iter().enumerate().find(|(_, v)| bad(v)) {
                return Err(InvalidPurge(format!("{field}[{i}] {v:?} is empty, too long or contains spaces or control characters")));
            }
        }
        if let Some(id) = &self.request_id {
            if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
                return Err(InvalidPurge(
                    "request_id must be 1 to 256 printable characters".into(),
                ));
            }
        }
        if self
            .wait
            .is_some_and(|w| w > std::time::Duration::from_secs(300))
        {
            return Err(InvalidPurge("wait must be at most 5 minutes".into()));
        }
        Ok(())
    }
}

/// A purge of the wrong shape; the text names the problem. Reads as its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPurge(pub String);

impl std::fmt::Display for InvalidPurge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidPurge {}

impl std::ops::Deref for InvalidPurge {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// `host/path` of a prefix, normalized like keys: scheme dropped (a `://` after the
/// first `/` is part of the path, not a scheme), host normalized for the scheme
/// (matched without case), path percent-normalized.
pub fn normalize_prefix(prefix: &str) -> String {
    let (scheme, rest) = match prefix.split_once("://") {
        Some((s, rest)) if !s.contains('/') => (s, rest),
        _ => ("http", prefix),
    };
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        "https"
    } else {
        "http"
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = crate::key::normalize_host(host, scheme);
    let mut out = String::with_capacity(host.len() + path.len());
    out.push_str(&host);
    crate::key::normalize_percent(path, &mut out);
    out
}

/// How a stored response stands against the purges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    /// Stale from now on: usable only as stale content.
    SoftPurged,
    /// Usable only once revalidated with the origin (no stale serving): fetched
    /// before [`Marker::require_revalidation`].
    MustRevalidate,
    /// Gone.
    HardPurged,
}

#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    hard: u64,
    soft: u64,
}

impl Mark {
    fn set(&mut self, generation: u64, soft: bool) {
        if soft {
            self.soft = self.soft.max(generation);
        } else {
            self.hard = self.hard.max(generation);
        }
    }

    /// Has a purge set this mark?
    fn is_set(&self) -> bool {
        self.hard > 0 || self.soft > 0
    }

    fn judge(&self, fetched: u64) -> Validity {
        if fetched < self.hard {
            Validity::HardPurged
        } else if fetched < self.soft {
            Validity::SoftPurged
        } else {
            Validity::Valid
        }
    }
}

fn worst(a: Validity, b: Validity) -> Validity {
    match (a, b) {
        (Validity::HardPurged, _) | (_, Validity::HardPurged) => Validity::HardPurged,
        (Validity::MustRevalidate, _) | (_, Validity::MustRevalidate) => Validity::MustRevalidate,
        (Validity::SoftPurged, _) | (_, Validity::SoftPurged) => Validity::SoftPurged,
        _ => Validity::Valid,
    }
}

#[derive(Default)]
struct Marks {
    all: Mark,
    tags: HashMap<Box<str>, Mark>,
    /// `host/path-prefix` → mark.
    prefixes: Vec<(String, Mark)>,
    /// Key digests purged by URL (their entries are removed at once; the mark stops
    /// fetches in flight from storing them again).
    urls: HashMap<u128, Mark>,
    /// Fetches that started before this generation are never stored: the marks that
    /// would have judged them may have been dropped by the sweeper.
    floor: u64,
    /// Responses fetched before this generation must be revalidated before reuse.
    /// Never dropped by a sweep (it is one number, and covers everything).
    revalidate: u64,
}

/// The purge generations and marks.
#[derive(Default)]
pub struct Marker {
    generation: AtomicU64,
    last_purge: AtomicU64,
    marks: RwLock<Marks>,
}

/// What the marks held cover: entries carrying one of `tags`, entries under one of
/// `digests`, or (`everything`: a purge of all, or of a prefix) any entry.
#[derive(Debug, Default)]
pub struct Scope {
    pub everything: bool,
    pub tags: Vec<Box<str>>,
    pub digests: Vec<u128>,
}

/// What an entry needs to be judged: its generation, tags and key.
pub struct Subject<'a> {
    pub fetched_gen: u64,
    pub tags: crate::tags::Packed<'a>,
    pub key_full: &'a str,
    pub digest: u128,
    /// Judging a response about to be stored (the floor applies), rather than one
    /// already stored (which the sweeper has judged against every dropped mark).
    pub inserting: bool,
}

impl Marker {
    /// The generation to record when a fetch starts.
    pub fn current(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation of the latest purge.
    pub fn last_purge(&self) -> u64 {
        self.last_purge.load(Ordering::Acquire)
    }

    /// Records marks for a purge; returns its generation. O(items), never O(entries).
    pub fn mark(&self, purge: &Purge, url_digests: &[u128]) -> u64 {
        let mut marks = self.marks.write().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        if purge.all {
            marks.all.set(generation, purge.soft);
        }
        for t in &purge.tags {
            marks
                .tags
                .entry(t.as_str().into())
                .or_default()
                .set(generation, purge.soft);
        }
        for p in &purge.prefixes {
            let p = normalize_prefix(p);
            match marks.prefixes.iter_mut().find(|(q, _)| *q == p) {
                Some((_, m)) => m.set(generation, purge.soft),
                None => {
                    let mut m = Mark::default();
                    m.set(generation, purge.soft);
                    marks.prefixes.push((p, m));
                }
            }
        }
        for d in url_digests {
            marks
                .urls
                .entry(*d)
                .or_default()
                .set(generation, purge.soft);
        }
        self.last_purge.store(generation, Ordering::Release);
        generation
    }

    /// Everything fetched until now must be revalidated before it is reused: for a
    /// node that may have missed purges (a gap in the fleet's bus, a partition).
    /// Returns its generation. O(1): no entry is touched.
    pub fn require_revalidation(&self) -> u64 {
        let mut marks = self.marks.write().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        marks.revalidate = generation;
        self.last_purge.store(generation, Ordering::Release);
        generation
    }

    /// Judges an entry. Entries fetched after the latest purge are valid without
    /// looking at any mark (the common case: one atomic load).
    pub fn judge(&self, s: &Subject<'_>) -> Validity {
        if s.fetched_gen >= self.last_purge() {
            return Validity::Valid;
        }
        let marks = self.marks.read().unwrap_or_else(|e| e.into_inner());
        if s.inserting && s.fetched_gen < marks.floor {
            // Fetched before purges whose marks are gone: it may be covered by one.
            return Validity::HardPurged;
        }
        let mut v = marks.all.judge(s.fetched_gen);
        if s.fetched_gen < marks.revalidate {
            v = worst(v, Validity::MustRevalidate);
        }
        for t in s.tags.iter() {
            if let Some(m) = marks.tags.get(t) {
                v = worst(v, m.judge(s.fetched_gen));
            }
        }
        if let Some(m) = marks.urls.get(&s.digest) {
            v = worst(v, m.judge(s.fetched_gen));
        }
        if !marks.prefixes.is_empty() {
            let rest = s.key_full.split_once("://").map_or(s.key_full, |(_, r)| r);
            for (p, m) in &marks.prefixes {
                if rest.starts_with(p.as_str()) {
                    v = worst(v, m.judge(s.fetched_gen));
                }
            }
        }
        v
    }

    /// After a full sweep that started at generation `swept`: every entry fetched
    /// before it has been judged and rewritten, so the marks up to it can go, and the
    /// floor keeps any later-arriving older fetch out of the store.
    pub fn forget_up_to(&self, swept: u64) {
        let mut marks = self.marks.write().unwrap_or_else(|e| e.into_inner());
        marks.floor = marks.floor.max(swept);
        let keep = |m: &Mark| m.hard > swept || m.soft > swept;
        marks.tags.retain(|_, m| keep(m));
        marks.prefixes.retain(|(_, m)| keep(m));
        marks.urls.retain(|_, m| keep(m));
        if !keep(&marks.all) {
            marks.all = Mark::default();
        }
    }

    /// What the marks held now cover, for a sweep to find their entries without
    /// judging every entry in the store.
    pub fn scope(&self) -> Scope {
        let marks = self.marks.read().unwrap_or_else(|e| e.into_inner());
        Scope {
            everything: marks.all.is_set() || !marks.prefixes.is_empty(),
            tags: marks.tags.keys().cloned().collect(),
            digests: marks.urls.keys().copied().collect(),
        }
    }

    /// Marks currently held (memory is bounded by recent purges, not by entries).
    pub fn mark_count(&self) -> usize {
        let marks = self.marks.read().unwrap_or_else(|e| e.into_inner());
        marks.tags.len() + marks.prefixes.len() + marks.urls.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn packed(tags: &[&str]) -> Vec<u8> {
        let tags: Vec<Arc<str>> = tags.iter().map(|t| Arc::from(*t)).collect();
        let mut out = Vec::new();
        crate::tags::pack(&tags, &mut out);
        out
    }

    fn subject<'a>(gen: u64, tags: &'a [u8], key: &'a str) -> Subject<'a> {
        Subject {
            fetched_gen: gen,
            tags: crate::tags::Packed::new(tags),
            key_full: key,
            digest: 1,
            inserting: false,
        }
    }

    #[test]
    fn marks_judge_by_generation() {
        let m = Marker::default();
        let tags = packed(&["campaign:summer", "product:1"]);
        let before = m.current();
        assert_eq!(
            m.judge(&subject(before, &tags, "http://shop/p/1")),
            Validity::Valid
        );
        m.mark(
            &Purge {
                tags: vec!["campaign:summer".into()],
                ..Purge::default()
            },
            &[],
        );
        assert_eq!(
            m.judge(&subject(before, &tags, "http://shop/p/1")),
            Validity::HardPurged
        );
        // A fetch that starts after the purge is valid.
        assert_eq!(
            m.judge(&subject(m.current(), &tags, "http://shop/p/1")),
            Validity::Valid
        );
        // Untagged entries are untouched.
        assert_eq!(
            m.judge(&subject(before, &[], "http://shop/p/1")),
            Validity::Valid
        );
        // Soft purge.
        let g = m.current();
        m.mark(
            &Purge {
                tags: vec!["product:1".into()],
                soft: true,
                ..Purge::default()
            },
            &[],
        );
        assert_eq!(
            m.judge(&subject(g, &tags, "http://shop/p/1")),
            Validity::SoftPurged
        );
        // Prefix and everything.
        let g = m.current();
        m.mark(
            &Purge {
                prefixes: vec!["https://SHOP/p/".into()],
                ..Purge::default()
            },
            &[],
        );
        assert_eq!(
            m.judge(&subject(g, &[], "http://shop/p/2")),
            Validity::HardPurged
        );
        assert_eq!(
            m.judge(&subject(g, &[], "http://shop/q/2")),
            Validity::Valid
        );
        let g = m.current();
        m.mark(
            &Purge {
                all: true,
                soft: true,
                ..Purge::default()
            },
            &[],
        );
        assert_eq!(
            m.judge(&subject(g, &[], "http://other/")),
            Validity::SoftPurged
        );
        // URL digests.
        let g = m.current();
        m.mark(
            &Purge {
                urls: vec!["http://x/".into()],
                ..Purge::default()
            },
            &[1],
        );
        assert_eq!(m.judge(&subject(g, &[], "http://x/")), Validity::HardPurged);
    }

    #[test]
    fn forgetting_marks_keeps_old_fetches_out() {
        let m = Marker::default();
        let old = m.current();
        let g = m.mark(
            &Purge {
                tags: vec!["t".into()],
                ..Purge::default()
            },
            &[],
        );
        assert_eq!(m.mark_count(), 1);
        m.forget_up_to(g);
        assert_eq!(m.mark_count(), 0);
        // A fetch that started before the purge is still refused by the floor...
        let tags = packed(&["t"]);
        let late = Subject {
            inserting: true,
            ..subject(old, &tags, "http://a/")
        };
        assert_eq!(m.judge(&late), Validity::HardPurged);
        let fresh = Subject {
            inserting: true,
            ..subject(m.current(), &tags, "http://a/")
        };
        assert_eq!(m.judge(&fresh), Validity::Valid);
        // ...while entries already stored (and so swept) are not judged by it.
        let other = packed(&["other"]);
        assert_eq!(m.judge(&subject(old, &other, "http://a/")), Validity::Valid);
    }

    #[test]
    fn purge_validation_names_the_problem() {
        assert!(Purge::default().validate(10).unwrap_err().contains("empty"));
        let many = Purge {
            tags: (0..11).map(|i| i.to_string()).collect(),
            ..Purge::default()
        };
        assert!(many.validate(10).unwrap_err().contains("limit of 10"));
        let ctl = Purge {
            tags: vec!["ok".into(), "bad\u{1}".into()],
            ..Purge::default()
        };
        assert!(ctl.validate(10).unwrap_err().contains("tags[1]"));
        assert!(Purge {
            all: true,
            ..Purge::default()
        }
        .validate(10)
        .is_ok());
        assert_eq!(
            normalize_prefix("https://Shop.Example:443/a/"),
            "shop.example/a/"
        );
        assert_eq!(normalize_prefix("shop.example"), "shop.example/");
    }

    #[test]
    fn prefixes_are_normalized_as_keys_are() {
        let cases = [
            ("https://Shop.Example:443/a/", "shop.example/a/"),
            ("HTTPS://shop.example:443/a", "shop.example/a"),
            ("http://shop.example:80/a", "shop.example/a"),
            ("https://shop.example:80/a", "shop.example:80/a"),
            ("shop.example:443/a", "shop.example:443/a"),
            // A URL in the path is not a scheme.
            (
                "shop.example/go/http://other/",
                "shop.example/go/http://other/",
            ),
            (
                "https://shop.example/go/http://other/",
                "shop.example/go/http://other/",
            ),
            // Keys hold percent-normalized paths.
            ("shop.example/%7euser/", "shop.example/~user/"),
            ("shop.example/a%2fb", "shop.example/a%2Fb"),
            ("shop.example/%zz", "shop.example/%25zz"),
            ("", "/"),
        ];
        for (prefix, normal) in cases {
            assert_eq!(normalize_prefix(prefix), normal, "{prefix}");
        }
    }
}
