//! The in-memory store: primary key digest → the variants stored for it.
//!
//! Bounded by bytes (a weigher counts body, headers, key and a fixed per-entry
//! overhead) on moka. A stored entry holds everything freshness needs, so a hit
//! is an `Arc` clone plus a `Bytes` clone: no re-parsing.
//!
//! Invariants: only complete responses are inserted; a `Vary: *` response is never
//! inserted; a key never holds more than `max_variants` variants; nothing fetched
//! before a purge that covers it is returned as valid (see `purge.rs`); the tag
//! counters equal the tags of what is stored (kept on insert and on every removal).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use moka::sync::Cache;

use crate::directives::Directives;
use crate::key::{CacheKey, Variant};
use crate::purge::{Marker, Purge, Subject, Validity};

/// A stored response and the facts freshness needs (RFC 9111 §4.2.3).
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: StatusCode,
    /// End-to-end headers as received (hop-by-hop fields and `Age` removed).
    pub headers: StoredHeaders,
    pub body: Bytes,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub corrected_initial_age: Duration,
    pub lifetime: Duration,
    /// The directives Lacquer obeys for this response (targeted field or Cache-Control).
    pub directives: Directives,
    /// The request fields that selected this variant.
    pub variant: Variant,
    /// Surrogate keys (tags) of this response.
    pub tags: Arc<[Arc<str>]>,
    /// The purge generation when its origin request started (see `purge.rs`).
    pub fetched_gen: u64,
    /// The last response head rendered for a fresh hit on this entry (see
    /// [`RenderedHead`]); empty in a new or cloned entry.
    pub rendered: RenderedHead,
}

/// A cached rendering of the response head of a plain fresh hit: the stored headers
/// after `Proxy::finish` (targeted fields, Surrogate-Control and tag headers
/// removed, `Via` added) with `Age` and `Cache-Status`. `Age` and the `ttl` in
/// `Cache-Status` change once a second, so the rendering is reused while the
/// configuration generation, the age in seconds and the ttl are those it was made
/// for, and replaced otherwise. A hit then costs one `HeaderMap` clone instead of a
/// clone, three inserts, four removals and two renderings.
/// Only an entry hit twice within one second gets a rendering (a working set of
/// many objects, each rarely hit, would pay for renderings it never reuses).
#[derive(Default)]
pub struct RenderedHead {
    rendering: arc_swap::ArcSwapOption<Rendered>,
    /// The age second of the last hit that found no rendering, plus one (0: none).
    last_miss: AtomicU64,
}

struct Rendered {
    generation: u64,
    age: u64,
    ttl: i64,
    headers: HeaderMap,
}

impl RenderedHead {
    /// The headers rendered for exactly these inputs, if that is what is cached.
    pub fn get(&self, generation: u64, age: u64, ttl: i64) -> Option<HeaderMap> {
        let guard = self.rendering.load();
        match guard.as_deref() {
            Some(r) if r.generation == generation && r.age == age && r.ttl == ttl => {
                Some(r.headers.clone())
            }
            _ => None,
        }
    }

    /// Is a rendering worth keeping: was this entry already hit in this second?
    pub fn wanted(&self, age: u64) -> bool {
        self.last_miss.swap(age + 1, Ordering::Relaxed) == age + 1
    }

    pub fn set(&self, generation: u64, age: u64, ttl: i64, headers: HeaderMap) {
        self.rendering.store(Some(Arc::new(Rendered {
            generation,
            age,
            ttl,
            headers,
        })));
    }
}

/// The stored header fields of a response: names and values in one buffer of
/// exactly their size, and where each field ends. A `HeaderMap` keeps index and
/// bucket tables sized for growth (624 bytes for 5 fields, measured by the purge
/// bench); this keeps the bytes and 8 more per field. Values as hyper parses them
/// are slices of the connection's read buffer, so storing them as they are would
/// also keep that whole buffer (8 KiB or more) alive with the entry: the copy here
/// never does. Requests that need the fields as a map (a rendering, a 304, a range,
/// a revalidation) build one with [`StoredHeaders::to_map`], whose values share
/// this buffer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredHeaders {
    buf: bytes::Bytes,
    /// For each field: where its name ends and where its value ends in `buf` (a
    /// field starts where the previous one ended).
    ends: Box<[(u32, u32)]>,
}

impl StoredHeaders {
    pub fn from_map(headers: &HeaderMap) -> StoredHeaders {
        let total: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        let mut buf = Vec::with_capacity(total);
        let mut ends = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            buf.extend_from_slice(name.as_str().as_bytes());
            let name_end = buf.len();
            buf.extend_from_slice(value.as_bytes());
            // A head is far below 4 GiB (max_header_bytes); saturate rather than wrap.
            let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            ends.push((at(name_end), at(buf.len())));
        }
        StoredHeaders {
            buf: bytes::Bytes::from(buf),
            ends: ends.into_boxed_slice(),
        }
    }

    /// The fields as (name, value) byte strings, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut start = 0usize;
        self.ends.iter().filter_map(move |&(name_end, end)| {
            let (name_end, end) = (name_end as usize, end as usize);
            let field = self
                .buf
                .get(start..name_end)
                .zip(self.buf.get(name_end..end));
            start = end;
            field
        })
    }

    /// The fields as a map; the values share this buffer (no copy).
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.ends.len());
        let mut start = 0usize;
        for &(name_end, end) in self.ends.iter() {
            let (name_end, end) = (name_end as usize, end as usize);
            let name = self
                .buf
                .get(start..name_end)
                .and_then(|n| http::HeaderName::from_bytes(n).ok());
            let value = (name_end <= end && end <= self.buf.len())
                .then(|| HeaderValue::from_maybe_shared(self.buf.slice(name_end..end)).ok())
                .flatten();
            if let (Some(name), Some(value)) = (name, value) {
                map.append(name, value);
            }
            start = end;
        }
        map
    }

    pub fn get(&self, name: &http::HeaderName) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_str().as_bytes())
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Heap bytes held (for the store's weights).
    pub fn heap_bytes(&self) -> usize {
        self.buf.len() + self.ends.len() * std::mem::size_of::<(u32, u32)>()
    }
}

impl From<HeaderMap> for StoredHeaders {
    fn from(headers: HeaderMap) -> StoredHeaders {
        StoredHeaders::from_map(&headers)
    }
}

impl std::fmt::Debug for StoredHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// A clone is a different entry (a soft-purged copy, an updated head): it starts
/// without a rendering.
impl Clone for RenderedHead {
    fn clone(&self) -> Self {
        RenderedHead::default()
    }
}

impl std::fmt::Debug for RenderedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RenderedHead")
    }
}

impl StoredResponse {
    /// Approximate memory held by this entry.
    pub fn weight(&self) -> usize {
        let headers = self.headers.heap_bytes();
        self.body.len() + headers + self.variant.weight() + std::mem::size_of::<StoredResponse>()
    }

    pub fn age(&self, now: SystemTime) -> Duration {
        crate::freshness::current_age(self.corrected_initial_age, self.response_time, now)
    }
}

/// One variant and when it was last used (a store-wide tick, for LRU among variants).
#[derive(Debug)]
struct Slot {
    response: Arc<StoredResponse>,
    used: AtomicU64,
}

/// Everything stored under one primary key.
#[derive(Debug)]
struct KeyEntry {
    full_key: Box<str>,
    /// Most recently stored first.
    variants: Vec<Slot>,
}

impl KeyEntry {
    fn weight(&self) -> u32 {
        let w = self.full_key.len()
            + 64
            + self
                .variants
                .iter()
                .map(|v| v.response.weight())
                .sum::<usize>();
        u32::try_from(w).unwrap_or(u32::MAX)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Arc<StoredResponse>),
    /// A soft purge covers it: usable only as stale content.
    SoftPurged(Arc<StoredResponse>),
    /// Something is stored under the key, but no variant matches this request.
    VaryMiss,
    Miss,
}

type TagCounts = Arc<Mutex<HashMap<Arc<str>, usize>>>;

/// What a purge did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    /// Stored entries (variants) carrying each tag.
    pub tags: std::collections::BTreeMap<String, usize>,
    /// Variants stored under each URL.
    pub urls: std::collections::BTreeMap<String, usize>,
    /// Entries under each prefix: counted for dry runs only (a count is a scan).
    pub prefixes: std::collections::BTreeMap<String, Option<usize>>,
    /// Every entry, for `all`.
    pub all: Option<u64>,
    pub soft: bool,
    pub dry_run: bool,
    /// The purge generation (0 for a dry run).
    pub generation: u64,
}

pub struct Store {
    /// Keyed by the key's digest, hashed with foldhash (seeded per process): the
    /// digest is already well mixed, and SipHash cost more than the rest of a lookup.
    cache: Cache<u128, Arc<KeyEntry>, foldhash::fast::RandomState>,
    max_variants: usize,
    tick: AtomicU64,
    marker: Marker,
    tag_counts: TagCounts,
    swept: AtomicU64,
    /// Entries evicted for space (the metrics register this counter).
    pub evictions: prometheus_client::metrics::counter::Counter,
}

fn count_tags(counts: &TagCounts, entry: &KeyEntry, add: bool) {
    let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    for slot in &entry.variants {
        for tag in slot.response.tags.iter() {
            if add {
                *counts.entry(tag.clone()).or_default() += 1;
            } else if let Some(n) = counts.get_mut(tag) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(tag);
                }
            }
        }
    }
}

impl Store {
    pub fn new(max_bytes: u64, max_variants: usize) -> Store {
        let tag_counts: TagCounts = Arc::default();
        let counts = tag_counts.clone();
        let evictions = prometheus_client::metrics::counter::Counter::<u64>::default();
        let evicted = evictions.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &u128, v: &Arc<KeyEntry>| v.weight())
            // Every way out (replaced, invalidated, evicted) keeps the tag index exact.
            .eviction_listener(move |_k, v: Arc<KeyEntry>, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.inc();
                }
                count_tags(&counts, &v, false)
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        Store {
            cache,
            max_variants,
            tick: AtomicU64::new(1),
            marker: Marker::default(),
            tag_counts,
            swept: AtomicU64::new(0),
            evictions,
        }
    }

    /// The purge generation to record when a fetch starts.
    pub fn generation(&self) -> u64 {
        self.marker.current()
    }

    fn judge(&self, key_full: &str, digest: u128, r: &StoredResponse, inserting: bool) -> Validity {
        self.marker.judge(&Subject {
            fetched_gen: r.fetched_gen,
            tags: &r.tags,
            key_full,
            digest,
            inserting,
        })
    }

    pub fn lookup(&self, key: &CacheKey, req: &HeaderMap) -> Lookup {
        let Some(entry) = self.cache.get(&key.digest) else {
            return Lookup::Miss;
        };
        if *entry.full_key != *key.full {
            return Lookup::Miss; // digest collision: never serve another URL's content
        }
        match entry
            .variants
            .iter()
            .find(|v| v.response.variant.matches(req))
        {
            Some(v) => {
                if entry.variants.len() > 1 {
                    v.used
                        .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                }
                match self.judge(&entry.full_key, key.digest, &v.response, false) {
                    Validity::Valid => Lookup::Hit(v.response.clone()),
                    Validity::SoftPurged => Lookup::SoftPurged(v.response.clone()),
                    Validity::HardPurged => Lookup::Miss,
                }
            }
            None => Lookup::VaryMiss,
        }
    }

    /// Stores a variant. It replaces the variant with the same selecting values; a
    /// different set of Vary names replaces all older variants (the origin changed
    /// its selection rule). Beyond `max_variants` the least recently used goes.
    ///
    /// A response whose fetch started before a hard purge covering it is not stored
    /// (the in-flight race); before a soft purge, it is stored already stale.
    pub fn insert(&self, key: &CacheKey, mut response: StoredResponse) {
        match self.judge(&key.full, key.digest, &response, true) {
            Validity::Valid => {}
            Validity::SoftPurged => response.lifetime = Duration::ZERO,
            Validity::HardPurged => return,
        }
        let response = Arc::new(response);
        let max = self.max_variants;
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        self.cache.entry(key.digest).and_upsert_with(|existing| {
            let mut variants = vec![Slot {
                response: response.clone(),
                used: AtomicU64::new(now),
            }];
            if let Some(old) = existing {
                let old = old.into_value();
                if *old.full_key == *key.full {
                    variants.extend(
                        old.variants
                            .iter()
                            .filter(|v| {
                                v.response.variant.same_names(&response.variant)
                                    && v.response.variant != response.variant
                            })
                            .map(|v| Slot {
                                response: v.response.clone(),
                                used: AtomicU64::new(v.used.load(Ordering::Relaxed)),
                            }),
                    );
                }
            }
            while variants.len() > max {
                let lru = (1..variants.len())
                    .min_by_key(|&i| variants[i].used.load(Ordering::Relaxed))
                    .unwrap_or(0);
                variants.remove(lru);
            }
            let entry = KeyEntry {
                full_key: key.full.as_str().into(),
                variants,
            };
            count_tags(&self.tag_counts, &entry, true);
            Arc::new(entry)
        });
    }

    /// Variants stored under `key`.
    pub fn variants(&self, key: &CacheKey) -> usize {
        self.cache
            .get(&key.digest)
            .filter(|e| *e.full_key == *key.full)
            .map_or(0, |e| e.variants.len())
    }

    /// Applies a purge: O(items) marks, plus the removal of each purged URL's
    /// variants. `url_keys` are the keys of `purge.urls`, in order.
    pub fn purge(&self, purge: &Purge, url_keys: &[CacheKey]) -> PurgeReport {
        self.cache.run_pending_tasks();
        let mut report = PurgeReport {
            soft: purge.soft,
            dry_run: purge.dry_run,
            ..PurgeReport::default()
        };
        {
            let counts = self.tag_counts.lock().unwrap_or_else(|e| e.into_inner());
            for t in &purge.tags {
                report
                    .tags
                    .insert(t.clone(), counts.get(t.as_str()).copied().unwrap_or(0));
            }
        }
        for (url, key) in purge.urls.iter().zip(url_keys) {
            report.urls.insert(url.clone(), self.variants(key));
        }
        for p in &purge.prefixes {
            let count = purge.dry_run.then(|| {
                let want = crate::purge::normalize_prefix(p);
                self.cache
                    .iter()
                    .filter(|(_, e)| {
                        e.full_key
                            .split_once("://")
                            .is_some_and(|(_, r)| r.starts_with(want.as_str()))
                    })
                    .map(|(_, e)| e.variants.len())
                    .sum()
            });
            report.prefixes.insert(p.clone(), count);
        }
        if purge.all {
            report.all = Some(self.cache.entry_count());
        }
        if purge.dry_run {
            return report;
        }
        let digests: Vec<u128> = url_keys.iter().map(|k| k.digest).collect();
        report.generation = self.marker.mark(purge, &digests);
        if !purge.soft {
            for key in url_keys {
                self.invalidate(key);
            }
        }
        report
    }

    /// Reclaims the memory of purged entries: hard-purged variants go, soft-purged
    /// ones are rewritten as stale (lifetime 0) and judged no more; then the marks
    /// up to the sweep's start generation are dropped. Returns variants removed.
    pub fn sweep(&self) -> usize {
        let started = self.marker.last_purge();
        self.swept.store(started, Ordering::Release);
        let mut removed = 0;
        for (digest, entry) in self.cache.iter() {
            let verdicts: Vec<Validity> = entry
                .variants
                .iter()
                .map(|v| self.judge(&entry.full_key, *digest, &v.response, false))
                .collect();
            if verdicts.iter().all(|v| *v == Validity::Valid) {
                continue;
            }
            let mut variants = Vec::new();
            for (slot, verdict) in entry.variants.iter().zip(&verdicts) {
                match verdict {
                    Validity::HardPurged => removed += 1,
                    Validity::Valid => variants.push(Slot {
                        response: slot.response.clone(),
                        used: AtomicU64::new(slot.used.load(Ordering::Relaxed)),
                    }),
                    Validity::SoftPurged => {
                        let stale = StoredResponse {
                            lifetime: Duration::ZERO,
                            fetched_gen: started,
                            ..(*slot.response).clone()
                        };
                        variants.push(Slot {
                            response: Arc::new(stale),
                            used: AtomicU64::new(slot.used.load(Ordering::Relaxed)),
                        });
                    }
                }
            }
            let full_key = entry.full_key.clone();
            if variants.is_empty() {
                self.cache.invalidate(&*digest);
            } else {
                let rewritten = KeyEntry { full_key, variants };
                count_tags(&self.tag_counts, &rewritten, true);
                self.cache.insert(*digest, Arc::new(rewritten));
            }
        }
        self.marker.forget_up_to(started);
        self.cache.run_pending_tasks();
        removed
    }

    /// True when purges happened since the last sweep started.
    pub fn needs_sweep(&self) -> bool {
        self.marker.last_purge() > self.swept.load(Ordering::Acquire)
    }

    /// Distinct tags in the tag index.
    pub fn tag_index_len(&self) -> usize {
        self.cache.run_pending_tasks();
        self.tag_counts.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Purge marks currently held.
    pub fn purge_marks(&self) -> usize {
        self.marker.mark_count()
    }

    /// Removes every variant stored under `key` (RFC 9111 §4.4 invalidation).
    pub fn invalidate(&self, key: &CacheKey) {
        self.cache.invalidate(&key.digest);
    }

    /// Number of primary keys stored (approximate until pending tasks run).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes accounted by the weigher.
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_headers_do_not_keep_the_read_buffer() {
        // As hyper parses them: every value a slice of one big read buffer.
        let mut raw = b"text/plain\0max-age=60\0a\0b".to_vec();
        raw.resize(8192, 0);
        let buffer = Bytes::from(raw);
        let slice =
            |a: usize, b: usize| HeaderValue::from_maybe_shared(buffer.slice(a..b)).unwrap();
        let mut h = HeaderMap::new();
        h.insert("content-type", slice(0, 10));
        h.insert("cache-control", slice(11, 21));
        h.append("x-list", slice(22, 23));
        h.append("x-list", slice(24, 25));
        let stored = StoredHeaders::from_map(&h);
        let c = stored.to_map();
        assert_eq!(c, h, "same fields, values and order");
        assert_eq!(
            stored.get(&http::header::CACHE_CONTROL),
            Some(&b"max-age=60"[..])
        );
        assert_eq!(stored.len(), 4);
        // The names and values (59 bytes) and two offsets a field: no tables.
        assert_eq!(stored.heap_bytes(), 59 + 4 * 8);
        let range = buffer.as_ptr_range();
        for (_, v) in &c {
            assert!(
                !range.contains(&v.as_bytes().as_ptr()),
                "a value still points into the read buffer"
            );
        }
    }
    use crate::key::{primary_key, KeyRule};
    use crate::purge::Purge;
    use http::header::{HeaderName, HeaderValue};

    fn stored(variant: Variant, body: &'static str) -> StoredResponse {
        StoredResponse {
            status: StatusCode::OK,
            headers: StoredHeaders::default(),
            body: Bytes::from_static(body.as_bytes()),
            request_time: SystemTime::UNIX_EPOCH,
            response_time: SystemTime::UNIX_EPOCH,
            corrected_initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            directives: Directives::default(),
            variant,
            tags: Vec::new().into(),
            fetched_gen: 0,
            rendered: Default::default(),
        }
    }

    fn req(lang: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept-language", HeaderValue::from_static(lang));
        h
    }

    #[test]
    fn variants_are_selected_replaced_and_capped() {
        let store = Store::new(1 << 20, 2);
        let key = primary_key(&KeyRule::default(), "http", "a", "/x", &HeaderMap::new());
        let names = [HeaderName::from_static("accept-language")];
        assert!(matches!(store.lookup(&key, &req("en")), Lookup::Miss));
        store.insert(&key, stored(Variant::of(&req("en"), &names), "en"));
        store.insert(&key, stored(Variant::of(&req("fr"), &names), "fr"));
        match store.lookup(&key, &req("en")) {
            Lookup::Hit(v) => assert_eq!(v.body, "en"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.lookup(&key, &req("de")), Lookup::VaryMiss));
        // Third variant: cap of 2 drops the least recently used: "fr" (en was just read).
        store.insert(&key, stored(Variant::of(&req("de"), &names), "de"));
        assert!(matches!(store.lookup(&key, &req("fr")), Lookup::VaryMiss));
        assert!(matches!(store.lookup(&key, &req("en")), Lookup::Hit(_)));
        assert!(matches!(store.lookup(&key, &req("de")), Lookup::Hit(_)));
        // A response without Vary replaces the whole selection rule.
        store.insert(&key, stored(Variant::default(), "plain"));
        match store.lookup(&key, &req("en")) {
            Lookup::Hit(v) => assert_eq!(v.body, "plain"),
            other => panic!("{other:?}"),
        }
        store.invalidate(&key);
        assert!(matches!(store.lookup(&key, &req("en")), Lookup::Miss));
    }

    fn tagged(tags: &[&str], gen: u64) -> StoredResponse {
        let mut r = stored(Variant::default(), "x");
        r.tags = tags
            .iter()
            .map(|t| Arc::<str>::from(*t))
            .collect::<Vec<_>>()
            .into();
        r.fetched_gen = gen;
        r
    }

    fn key(path: &str) -> CacheKey {
        primary_key(&KeyRule::default(), "http", "shop", path, &HeaderMap::new())
    }

    #[test]
    fn tag_purge_is_counted_judged_swept_and_the_index_empties() {
        let store = Store::new(1 << 20, 4);
        let g = store.generation();
        for i in 0..10 {
            store.insert(
                &key(&format!("/p/{i}")),
                tagged(&["campaign:summer", &format!("product:{i}")], g),
            );
        }
        store.insert(&key("/other"), tagged(&["page:home"], g));
        assert_eq!(store.tag_index_len(), 12);
        let purge = Purge {
            tags: vec!["campaign:summer".into()],
            ..Purge::default()
        };
        let dry = store.purge(
            &Purge {
                dry_run: true,
                ..purge.clone()
            },
            &[],
        );
        assert_eq!(dry.tags["campaign:summer"], 10);
        assert!(
            matches!(
                store.lookup(&key("/p/3"), &HeaderMap::new()),
                Lookup::Hit(_)
            ),
            "dry run changes nothing"
        );
        let report = store.purge(&purge, &[]);
        assert_eq!(report.tags["campaign:summer"], 10);
        assert!(matches!(
            store.lookup(&key("/p/3"), &HeaderMap::new()),
            Lookup::Miss
        ));
        assert!(matches!(
            store.lookup(&key("/other"), &HeaderMap::new()),
            Lookup::Hit(_)
        ));
        // A fetch that started before the purge cannot bring the entry back.
        store.insert(&key("/p/3"), tagged(&["campaign:summer"], g));
        assert!(matches!(
            store.lookup(&key("/p/3"), &HeaderMap::new()),
            Lookup::Miss
        ));
        // One that started after it can.
        store.insert(
            &key("/p/3"),
            tagged(&["campaign:summer"], store.generation()),
        );
        assert!(matches!(
            store.lookup(&key("/p/3"), &HeaderMap::new()),
            Lookup::Hit(_)
        ));
        // The sweeper reclaims the purged entries, the index follows, the marks go.
        assert!(store.needs_sweep());
        assert_eq!(store.sweep(), 9);
        assert!(!store.needs_sweep());
        assert_eq!(store.purge_marks(), 0);
        assert_eq!(store.len(), 2);
        assert_eq!(
            store.tag_index_len(),
            2,
            "campaign:summer (the new /p/3) and page:home"
        );
        // Entries the purge did not cover stay valid after the sweep drops its marks.
        assert!(matches!(
            store.lookup(&key("/other"), &HeaderMap::new()),
            Lookup::Hit(_)
        ));
        // A late fetch from before the purge is still refused after the marks are gone.
        store.insert(&key("/p/4"), tagged(&["campaign:summer"], g));
        assert!(matches!(
            store.lookup(&key("/p/4"), &HeaderMap::new()),
            Lookup::Miss
        ));
        // Everything evicted: the index is empty.
        store.invalidate(&key("/p/3"));
        store.invalidate(&key("/other"));
        assert_eq!(store.tag_index_len(), 0);
    }

    #[test]
    fn soft_purge_keeps_entries_as_stale() {
        let store = Store::new(1 << 20, 4);
        store.insert(&key("/s"), tagged(&["t"], store.generation()));
        store.purge(
            &Purge {
                tags: vec!["t".into()],
                soft: true,
                ..Purge::default()
            },
            &[],
        );
        assert!(matches!(
            store.lookup(&key("/s"), &HeaderMap::new()),
            Lookup::SoftPurged(_)
        ));
        store.sweep();
        // Rewritten as expired; no longer needs a mark.
        match store.lookup(&key("/s"), &HeaderMap::new()) {
            Lookup::Hit(e) => assert_eq!(e.lifetime, Duration::ZERO),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.purge_marks(), 0);
    }

    #[test]
    fn url_purge_removes_every_variant() {
        let store = Store::new(1 << 20, 4);
        let names = [HeaderName::from_static("accept-language")];
        store.insert(&key("/u"), stored(Variant::of(&req("en"), &names), "en"));
        store.insert(&key("/u"), stored(Variant::of(&req("fr"), &names), "fr"));
        let purge = Purge {
            urls: vec!["http://shop/u".into()],
            ..Purge::default()
        };
        let report = store.purge(&purge, &[key("/u")]);
        assert_eq!(report.urls["http://shop/u"], 2);
        assert!(matches!(store.lookup(&key("/u"), &req("en")), Lookup::Miss));
        assert!(matches!(store.lookup(&key("/u"), &req("fr")), Lookup::Miss));
    }

    #[test]
    fn weight_counts_the_body() {
        let store = Store::new(1 << 20, 4);
        store.insert(
            &primary_key(&KeyRule::default(), "http", "a", "/big", &HeaderMap::new()),
            stored(Variant::default(), "0123456789"),
        );
        assert!(store.weighted_size() >= 10);
        assert_eq!(store.len(), 1);
    }
}
