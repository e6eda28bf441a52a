//! The in-memory store: primary key digest → the variants stored for it.
//!
//! Bounded by bytes (an entry's weight counts body, headers, key and its fixed
//! structures), with CLOCK eviction over 64 shards. A stored entry holds everything freshness needs, so a hit
//! is an `Arc` clone plus a `Bytes` clone: no re-parsing.
//!
//! Invariants: only complete responses are inserted; a `Vary: *` response is never
//! inserted; a key never holds more than `max_variants` variants; nothing fetched
//! before a purge that covers it is returned as valid (see `purge/mod.rs`); the tag
//! counters equal the tags of what is stored (kept on insert and on every removal).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::header::HeaderMap;

use crate::key::CacheKey;
use crate::purge::{Marker, Purge, Subject, Validity};

mod entry;
mod index;

#[cfg(test)]
use entry::SMALL_BODY;
pub use entry::{Fetched, StoredHeaders, StoredResponse};
#[cfg(test)]
use index::EVICT_LOOK;
use index::{shard_of, Hasher, KeyEntry, Shard, Slot, Variants};

/// Shards: hits on different keys rarely share a lock, and a sweep or an eviction
/// holds one shard's lock at a time.
const SHARDS: usize = 64;

/// Entries a sweep judges per hold of a shard's read lock.
const SWEEP_CHUNK: usize = 1024;

/// Tags a sweep looks up per hold of the tag counters' lock.
const TAGS_PER_HOLD: usize = 64;

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Arc<StoredResponse>),
    /// A soft purge covers it: usable only as stale content.
    SoftPurged(Arc<StoredResponse>),
    /// Usable only once revalidated with the origin (`Store::require_revalidation`).
    MustRevalidate(Arc<StoredResponse>),
    /// Something is stored under the key, but no variant matches this request.
    VaryMiss,
    Miss,
}

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

/// The store: sharded hash tables of primary keys, bounded by bytes with CLOCK
/// eviction (second chance: an entry hit since the hand last passed survives one
/// more round), as Varnish's and nginx's LRUs bound theirs.
pub struct Store {
    shards: Box<[RwLock<Shard>]>,
    /// Hashes digests for the shard tables; seeded per process, so the table
    /// layout cannot be predicted from outside.
    hasher: Hasher,
    max_bytes: u64,
    bytes: AtomicU64,
    /// The shard the next eviction takes from (round robin, so that eviction is
    /// spread as a global CLOCK would spread it).
    evict_next: AtomicUsize,
    max_variants: usize,
    tick: AtomicU64,
    marker: Marker,
    tag_counts: Mutex<HashMap<Arc<str>, TagCount>>,
    swept: AtomicU64,
    /// Shards sweeps have scanned (`sweep_shards_scanned` in the stats).
    scanned: AtomicU64,
    /// Held by the sweep in progress.
    sweeping: Mutex<()>,
    /// Entries evicted for space (`Store::evictions`; the metrics read it at scrape
    /// time).
    evictions: AtomicU64,
}

/// How many stored variants carry a tag, and the shards they may be in: a bit per
/// shard, set when a variant carrying the tag is stored there and cleared only when
/// the count is back to zero (the tag leaves the index). A sweep looks only in the
/// shards the purged tags may be in. Bits only accumulate while a tag is stored: a
/// long-lived tag whose entries come and go may end up with every bit set, and a purge
/// of it then scans every shard (as every sweep did before the bits).
#[derive(Debug, Default, Clone, Copy)]
struct TagCount {
    variants: usize,
    shards: u64,
}

const _: () = assert!(SHARDS <= u64::BITS as usize);

fn read(shard: &RwLock<Shard>) -> std::sync::RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(|e| e.into_inner())
}

fn write(shard: &RwLock<Shard>) -> std::sync::RwLockWriteGuard<'_, Shard> {
    shard.write().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    pub fn new(max_bytes: u64, max_variants: usize) -> Store {
        Store {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: Hasher::default(),
            max_bytes,
            bytes: AtomicU64::new(0),
            evict_next: AtomicUsize::new(0),
            max_variants,
            tick: AtomicU64::new(1),
            marker: Marker::default(),
            tag_counts: Mutex::default(),
            swept: AtomicU64::new(0),
            scanned: AtomicU64::new(0),
            sweeping: Mutex::default(),
            evictions: AtomicU64::new(0),
        }
    }

    /// The table hash of a digest, and the shard it lives in.
    fn locate(&self, digest: u128) -> (u64, &RwLock<Shard>) {
        let hash = self.hasher.hash_one(digest);
        (hash, &self.shards[shard_of(hash)])
    }

    /// Counts the tags of an entry stored in shard `shard`. Called under that
    /// shard's write lock (a sweep relies on it: see `shards_in`).
    fn count_in(&self, entry: &KeyEntry, shard: usize) {
        let mut counts = self.tag_counts.lock().unwrap_or_else(|e| e.into_inner());
        for tag in entry.tags() {
            let count = match counts.get_mut(tag) {
                Some(count) => count,
                None => counts.entry(Arc::from(tag)).or_default(),
            };
            count.variants += 1;
            count.shards |= 1 << shard;
        }
    }

    /// Accounts for an entry that left the store: its bytes and its tags.
    fn gone(&self, entry: &KeyEntry) {
        self.bytes.fetch_sub(entry.weight(), Ordering::Relaxed);
        let mut counts = self.tag_counts.lock().unwrap_or_else(|e| e.into_inner());
        for tag in entry.tags() {
            if let Some(count) = counts.get_mut(tag) {
                count.variants -= 1;
                if count.variants == 0 {
                    counts.remove(tag);
                }
            }
        }
    }

    /// The purge generation to record when a fetch starts.
    pub fn generation(&self) -> u64 {
        self.marker.current()
    }

    /// Everything stored until now must be revalidated before it is reused (see
    /// `Marker::require_revalidation`). Only `Purger` calls it.
    pub fn require_revalidation(&self) -> u64 {
        self.marker.require_revalidation()
    }

    fn judge(&self, key_full: &str, digest: u128, r: &StoredResponse, inserting: bool) -> Validity {
        self.marker.judge(&Subject {
            fetched_gen: r.fetched_gen,
            tags: r.tags(),
            key_full,
            digest,
            inserting,
        })
    }

    pub fn lookup(&self, key: &CacheKey, req: &HeaderMap) -> Lookup {
        let (hash, shard) = self.locate(key.digest);
        let found = {
            let shard = read(shard);
            let Some(entry) = shard.position(hash, &key.full).map(|i| &shard.entries[i]) else {
                return Lookup::Miss;
            };
            match &entry.variants {
                Variants::One(r) => r.variant.matches(req).then(|| r.clone()),
                Variants::Many(slots) => slots
                    .iter()
                    .find(|s| s.response.variant.matches(req))
                    .map(|s| {
                        s.used
                            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                        s.response.clone()
                    }),
            }
        };
        let Some(response) = found else {
            return Lookup::VaryMiss;
        };
        let verdict = self.judge(&key.full, key.digest, &response, false);
        if verdict != Validity::HardPurged {
            response.mark_referenced();
        }
        match verdict {
            Validity::Valid => Lookup::Hit(response),
            Validity::SoftPurged => Lookup::SoftPurged(response),
            Validity::MustRevalidate => Lookup::MustRevalidate(response),
            Validity::HardPurged => Lookup::Miss,
        }
    }

    /// Stores a variant. It replaces the variant with the same selecting values; a
    /// different set of Vary names replaces all older variants (the origin changed
    /// its selection rule). Beyond `max_variants` the least recently used goes.
    /// Older variants a purge covers are not carried over.
    ///
    /// A response whose fetch started before a hard purge covering it is not stored
    /// (the in-flight race); before a soft purge, it is stored already stale.
    pub fn insert(&self, key: &CacheKey, response: impl Into<StoredResponse>) {
        let mut response = response.into();
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        let (hash, shard) = self.locate(key.digest);
        let mut shard = write(shard);
        // Judged under the shard's lock: a sweep that scans this shard later sees
        // the entry, and one that scanned it before has marks this judge sees.
        match self.judge(&key.full, key.digest, &response, true) {
            // Stored as it is: a lookup judges it again (and has it revalidated).
            Validity::Valid | Validity::MustRevalidate => {}
            Validity::SoftPurged => response.expire(),
            Validity::HardPurged => return,
        }
        let response = Arc::new(response);
        let at = shard.position(hash, &key.full);
        let mut slots = vec![Slot {
            response: response.clone(),
            used: AtomicU64::new(now),
        }];
        if let Some(old) = at.map(|i| &shard.entries[i]) {
            slots.extend(old.variants.slots().into_iter().filter(|v| {
                v.response.variant.same_names(&response.variant)
                    && v.response.variant != response.variant
                    && self.judge(&key.full, key.digest, &v.response, false) == Validity::Valid
            }));
        }
        while slots.len() > self.max_variants.max(1) {
            let lru = (1..slots.len())
                .min_by_key(|&i| slots[i].used.load(Ordering::Relaxed))
                .unwrap_or(0);
            slots.remove(lru);
        }
        let entry = KeyEntry::new(key.full.as_str().into(), Variants::from_slots(slots));
        self.count_in(&entry, shard_of(hash));
        self.bytes.fetch_add(entry.weight(), Ordering::Relaxed);
        match at {
            Some(i) => {
                let old = std::mem::replace(&mut shard.entries[i], entry);
                self.gone(&old);
            }
            None => shard.push(hash, entry, &self.hasher),
        }
        drop(shard);
        self.evict_to_budget(shard_of(hash));
    }

    /// Evicts until the budget holds, a shard at a time, round robin. After a
    /// round of shards with nothing cold within reach (every entry looked at had been
    /// hit, and has its bit cleared now), the next round evicts what the hand is on.
    fn evict_to_budget(&self, inserted: usize) {
        let mut misses = 0;
        while self.bytes.load(Ordering::Relaxed) > self.max_bytes && misses < 3 * SHARDS {
            let i = self.evict_next.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let force = misses >= SHARDS;
            // The shard just written to is passed over until a round finds nothing
            // else: its new entry's bit is still clear, and it would be the first to go.
            if i == inserted && !force {
                misses += 1;
                continue;
            }
            let evicted = write(&self.shards[i]).evict_one(force, &self.hasher);
            match evicted {
                Some(entry) => {
                    self.gone(&entry);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    misses = 0;
                }
                None => misses += 1,
            }
        }
    }

    /// Variants stored under `key`.
    pub fn variants(&self, key: &CacheKey) -> usize {
        let (hash, shard) = self.locate(key.digest);
        let shard = read(shard);
        shard
            .position(hash, &key.full)
            .map_or(0, |i| shard.entries[i].variants.len())
    }

    /// Applies a purge: O(items) marks, plus the removal of each purged URL's
    /// variants. `url_keys` are the keys of `purge.urls`, in order.
    pub fn purge(&self, purge: &Purge, url_keys: &[CacheKey]) -> PurgeReport {
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
                    .insert(t.clone(), counts.get(t.as_str()).map_or(0, |c| c.variants));
            }
        }
        for (url, key) in purge.urls.iter().zip(url_keys) {
            report.urls.insert(url.clone(), self.variants(key));
        }
        for p in &purge.prefixes {
            let count = purge.dry_run.then(|| {
                let want = crate::purge::normalize_prefix(p);
                let mut n = 0;
                for shard in self.shards.iter() {
                    n += read(shard)
                        .entries
                        .iter()
                        .filter(|e| {
                            e.full_key
                                .split_once("://")
                                .is_some_and(|(_, r)| r.starts_with(want.as_str()))
                        })
                        .map(|e| e.variants.len())
                        .sum::<usize>();
                }
                n
            });
            report.prefixes.insert(p.clone(), count);
        }
        if purge.all {
            report.all = Some(self.len());
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

    /// Does a purge cover any variant of this entry?
    fn covered(&self, entry: &KeyEntry) -> bool {
        let last = self.marker.last_purge();
        if entry.variants.responses().all(|r| r.fetched_gen >= last) {
            return false; // the judge's own fast path, without hashing the key
        }
        let digest = entry.digest();
        entry
            .variants
            .responses()
            .any(|r| self.judge(&entry.full_key, digest, r, false) != Validity::Valid)
    }

    /// The keys of a shard's entries that a purge covers. The shard's read lock is
    /// held for a chunk at a time, from the last position down: a removal meanwhile
    /// moves only the last entry (already seen, or still ahead) into its hole, so no
    /// entry present when the scan started is skipped. Entries stored or replaced
    /// during the scan were judged under the shard's lock when they were stored.
    fn covered_keys(&self, shard: &RwLock<Shard>) -> Vec<Box<str>> {
        let mut found = Vec::new();
        let mut end = usize::MAX; // positions below `end` are still to be judged
        loop {
            {
                let guard = read(shard);
                end = end.min(guard.entries.len());
                let start = end.saturating_sub(SWEEP_CHUNK);
                for entry in guard.entries.get(start..end).unwrap_or_default() {
                    if self.covered(entry) {
                        found.push(entry.full_key.clone());
                    }
                }
                end = start;
            }
            if end == 0 {
                return found;
            }
            std::thread::yield_now();
        }
    }

    /// The shards (a bit each) that may hold an entry stored before the marks in
    /// `scope` and covered by one of them. A tag purge looks only where its tag's
    /// entries may be (nowhere, for a tag nothing carries), a URL purge in its key's
    /// shard, a prefix or everything purge everywhere.
    ///
    /// The marks were made before this is called. An insert judged before a mark
    /// counts its tags before it lets go of its shard's write lock, so taking each
    /// shard's lock once first means every such insert is counted by the time the
    /// counts are read; an insert judged after the marks sees them (it is refused,
    /// or stored already stale).
    ///
    /// The tag counters are read a chunk of tags at a time: an insert waits for
    /// them while it holds its shard's lock, and this runs on the low-priority
    /// sweep thread. (A bit stays set while its tag's count is above zero, so reading
    /// the tags at different moments misses nothing.)
    fn shards_in(&self, scope: &crate::purge::Scope) -> u64 {
        if scope.everything {
            return u64::MAX;
        }
        let mut bits = 0;
        for digest in &scope.digests {
            bits |= 1 << shard_of(self.hasher.hash_one(*digest));
        }
        if scope.tags.is_empty() {
            return bits;
        }
        for shard in self.shards.iter() {
            drop(read(shard));
        }
        for chunk in scope.tags.chunks(TAGS_PER_HOLD) {
            let counts = self.tag_counts.lock().unwrap_or_else(|e| e.into_inner());
            for tag in chunk {
                if let Some(count) = counts.get(&**tag) {
                    bits |= count.shards;
                }
            }
        }
        bits
    }

    /// Reclaims the memory of purged entries: hard-purged variants go, soft-purged
    /// ones are rewritten as stale (lifetime 0) and judged no more; then the marks
    /// up to the sweep's start generation are dropped. Only the shards the marks may
    /// cover are scanned, so a sweep costs about the entries purged, not the store.
    /// Returns variants removed.
    pub fn sweep(&self) -> usize {
        // One sweep at a time: a second would scan the same shards for the same marks.
        let _one = self.sweeping.lock().unwrap_or_else(|e| e.into_inner());
        let started = self.marker.last_purge();
        self.swept.store(started, Ordering::Release);
        let look_in = self.shards_in(&self.marker.scope());
        let mut removed = 0;
        for (i, shard) in self.shards.iter().enumerate() {
            if look_in & (1 << i) == 0 {
                continue;
            }
            self.scanned.fetch_add(1, Ordering::Relaxed);
            for full_key in self.covered_keys(shard) {
                let digest = crate::key::digest(&full_key);
                let hash = self.hasher.hash_one(digest);
                let mut guard = write(shard);
                let Some(at) = guard.position(hash, &full_key) else {
                    continue; // gone meanwhile
                };
                let mut slots = Vec::new();
                for slot in guard.entries[at].variants.slots() {
                    match self.judge(&full_key, digest, &slot.response, false) {
                        Validity::HardPurged => removed += 1,
                        // The revalidation mark is never dropped: lookups see it.
                        Validity::Valid | Validity::MustRevalidate => slots.push(slot),
                        Validity::SoftPurged => {
                            slots.push(Slot {
                                response: Arc::new(slot.response.restamped(
                                    Duration::ZERO,
                                    started.max(slot.response.fetched_gen),
                                )),
                                used: slot.used,
                            })
                        }
                    }
                }
                let old = if slots.is_empty() {
                    guard.remove_at(at, &self.hasher)
                } else {
                    let rewritten = KeyEntry::new(full_key, Variants::from_slots(slots));
                    self.count_in(&rewritten, i);
                    self.bytes.fetch_add(rewritten.weight(), Ordering::Relaxed);
                    Some(std::mem::replace(&mut guard.entries[at], rewritten))
                };
                if let Some(old) = old {
                    self.gone(&old);
                }
            }
        }
        self.marker.forget_up_to(started);
        removed
    }

    /// True when purges happened since the last sweep started.
    pub fn needs_sweep(&self) -> bool {
        self.marker.last_purge() > self.swept.load(Ordering::Acquire)
    }

    /// Distinct tags in the tag index.
    pub fn tag_index_len(&self) -> usize {
        self.tag_counts.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Shards that sweeps have scanned so far (a sweep skips the shards its purges
    /// cannot cover).
    pub fn shards_swept(&self) -> u64 {
        self.scanned.load(Ordering::Relaxed)
    }

    /// Entries evicted for space so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Purge marks currently held.
    pub fn purge_marks(&self) -> usize {
        self.marker.mark_count()
    }

    /// Removes every variant stored under `key` (RFC 9111 §4.4 invalidation).
    pub fn invalidate(&self, key: &CacheKey) {
        let (hash, shard) = self.locate(key.digest);
        let removed = {
            let mut shard = write(shard);
            shard
                .position(hash, &key.full)
                .and_then(|at| shard.remove_at(at, &self.hasher))
        };
        if let Some(entry) = removed {
            self.gone(&entry);
        }
    }

    /// Number of primary keys stored.
    pub fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| read(s).entries.len() as u64)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes accounted against the budget.
    pub fn weighted_size(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::SystemTime;

    use bytes::Bytes;
    use http::StatusCode;

    use crate::directives::StoredDirectives;
    use crate::freshness::Born;
    use crate::key::Variant;

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
        // The names and values (59 bytes) and two NULs a field: no tables.
        assert_eq!(stored.heap_bytes(), 59 + 4 * 2);
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

    fn stored(variant: Variant, body: &'static str) -> Fetched {
        Fetched {
            status: StatusCode::OK,
            headers: StoredHeaders::default(),
            body: Bytes::from_static(body.as_bytes()),
            born: Born::new(SystemTime::UNIX_EPOCH, Duration::ZERO),
            lifetime: Duration::from_secs(60),
            directives: StoredDirectives::default(),
            variant,
            tags: Vec::new().into(),
            fetched_gen: 0,
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
            Lookup::Hit(v) => assert_eq!(v.body(), "en"),
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
            Lookup::Hit(v) => assert_eq!(v.body(), "plain"),
            other => panic!("{other:?}"),
        }
        store.invalidate(&key);
        assert!(matches!(store.lookup(&key, &req("en")), Lookup::Miss));
    }

    fn tagged(tags: &[&str], gen: u64) -> Fetched {
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
            Lookup::Hit(e) => assert_eq!(e.lifetime(), Duration::ZERO),
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

    #[test]
    fn the_budget_holds_and_a_hit_entry_gets_a_second_chance() {
        // About 40 entries of 1 KiB fit in 48 KiB.
        let store = Store::new(48 << 10, 4);
        let body: &'static str = Box::leak("x".repeat(1024).into_boxed_str());
        let hot = key("/hot");
        store.insert(&hot, stored(Variant::default(), body));
        for i in 0..1000 {
            store.insert(
                &key(&format!("/cold/{i}")),
                stored(Variant::default(), body),
            );
            // The hot entry is hit between insertions: the hand always finds it used.
            assert!(
                matches!(store.lookup(&hot, &HeaderMap::new()), Lookup::Hit(_)),
                "the hot entry was evicted after {i} insertions"
            );
            assert!(store.weighted_size() <= 48 << 10);
        }
        let evicted = store.evictions();
        assert!(evicted > 900, "{evicted} evictions");
        assert_eq!(store.len() + evicted, 1001);
        // The most recent cold entry is there; the first is long gone.
        assert!(matches!(
            store.lookup(&key("/cold/999"), &HeaderMap::new()),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            store.lookup(&key("/cold/0"), &HeaderMap::new()),
            Lookup::Miss
        ));
        // Every way out kept the byte count exact.
        for i in 0..1000 {
            store.invalidate(&key(&format!("/cold/{i}")));
        }
        store.invalidate(&hot);
        assert_eq!(store.len(), 0);
        assert_eq!(store.weighted_size(), 0);
    }

    #[test]
    fn removals_keep_every_position_in_the_index_right() {
        let store = Store::new(1 << 30, 4);
        let keys: Vec<CacheKey> = (0..5000).map(|i| key(&format!("/k/{i}"))).collect();
        for k in &keys {
            store.insert(k, stored(Variant::default(), "v"));
        }
        // Remove every third: the last entry of a shard moves into each hole.
        for k in keys.iter().step_by(3) {
            store.invalidate(k);
        }
        for (i, k) in keys.iter().enumerate() {
            let found = matches!(store.lookup(k, &HeaderMap::new()), Lookup::Hit(_));
            assert_eq!(found, i % 3 != 0, "{}", k.full);
        }
        assert_eq!(store.len(), 5000 - 1667);
    }

    /// Sweeps after `purge` and returns (shards scanned, variants removed).
    fn sweep_after(store: &Store, purge: Purge, url_keys: &[CacheKey]) -> (u64, usize) {
        let before = store.shards_swept();
        store.purge(&purge, url_keys);
        assert!(store.needs_sweep());
        let removed = store.sweep();
        assert_eq!(store.purge_marks(), 0, "the sweep forgets the marks");
        (store.shards_swept() - before, removed)
    }

    #[test]
    fn a_sweep_scans_only_the_shards_its_purges_can_cover() {
        let store = Store::new(1 << 30, 4);
        let g = store.generation();
        let keys: Vec<CacheKey> = (0..2000).map(|i| key(&format!("/t/{i}"))).collect();
        for (i, k) in keys.iter().enumerate() {
            let own = format!("product:{i}");
            store.insert(k, tagged(&["all", &own], g));
        }
        let shard = |k: &CacheKey| shard_of(store.hasher.hash_one(k.digest));
        let tags = |t: &[&str]| Purge {
            tags: t.iter().map(|t| t.to_string()).collect(),
            ..Purge::default()
        };
        // Tags nothing carries (a purge storm of other tags): no shard is scanned.
        let storm = tags(&["storm:1", "storm:2", "storm:3"]);
        assert_eq!(sweep_after(&store, storm, &[]), (0, 0));
        // A tag on one entry: its shard only.
        assert_eq!(sweep_after(&store, tags(&["product:7"]), &[]), (1, 1));
        assert!(matches!(
            store.lookup(&keys[7], &HeaderMap::new()),
            Lookup::Miss
        ));
        // Tags on three entries: their shards.
        let three: std::collections::HashSet<usize> =
            [10, 11, 12].iter().map(|&i| shard(&keys[i])).collect();
        let (scanned, removed) = sweep_after(
            &store,
            tags(&["product:10", "product:11", "product:12"]),
            &[],
        );
        assert_eq!((scanned, removed), (three.len() as u64, 3));
        // More tags than one hold of the counters' lock reads: the last one counts.
        let mut many: Vec<String> = (0..200).map(|i| format!("storm:{i}")).collect();
        many.push("product:50".into());
        let many = Purge {
            tags: many,
            ..Purge::default()
        };
        assert_eq!(sweep_after(&store, many, &[]), (1, 1));
        // A URL: its key's shard.
        let url = Purge {
            urls: vec!["http://shop/t/20".into()],
            ..Purge::default()
        };
        assert_eq!(
            sweep_after(&store, url, &keys[20..21]),
            (1, 0),
            "removed by the purge itself"
        );
        // A tag whose entries are all gone leaves the index: no scan for it.
        store.invalidate(&keys[30]);
        assert_eq!(sweep_after(&store, tags(&["product:30"]), &[]), (0, 0));
        // A prefix can cover any entry: every shard.
        let prefix = Purge {
            prefixes: vec!["shop/t/4".into()],
            ..Purge::default()
        };
        let (scanned, removed) = sweep_after(&store, prefix, &[]);
        assert_eq!(scanned, SHARDS as u64);
        assert_eq!(removed, 1 + 10 + 100, "/t/4, /t/4x, /t/4xx");
        // A tag every entry carries: every shard, every entry.
        let left = store.len() as usize;
        assert_eq!(
            sweep_after(&store, tags(&["all"]), &[]),
            (SHARDS as u64, left)
        );
        assert_eq!(store.tag_index_len(), 0);
    }

    /// Stores `n` entries tagged "even" or "odd" by index, purges "odd", sweeps, and
    /// checks that exactly the odd ones went.
    fn sweep_half_of(n: usize) {
        let store = Store::new(1 << 30, 4);
        let g = store.generation();
        for i in 0..n {
            let tag = if i % 2 == 0 { "even" } else { "odd" };
            store.insert(&key(&format!("/s/{i}")), tagged(&[tag], g));
        }
        store.purge(
            &Purge {
                tags: vec!["odd".into()],
                ..Purge::default()
            },
            &[],
        );
        assert_eq!(store.sweep(), n / 2);
        assert_eq!(store.purge_marks(), 0);
        assert_eq!(store.len(), (n - n / 2) as u64);
        for i in 0..n {
            let found = matches!(
                store.lookup(&key(&format!("/s/{i}")), &HeaderMap::new()),
                Lookup::Hit(_)
            );
            assert_eq!(found, i % 2 == 0, "/s/{i}");
        }
    }

    #[test]
    fn a_sweep_finds_purged_entries_in_every_shard() {
        sweep_half_of(3000);
    }

    #[test]
    fn a_small_body_the_fields_and_the_tags_share_one_buffer() {
        let store = Store::new(1 << 20, 4);
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("surrogate-key", HeaderValue::from_static("a b"));
        let big = Bytes::from(vec![b'x'; SMALL_BODY + 1]);
        for (path, body) in [
            ("/small", Bytes::from_static(b"0123456789abcdef")),
            ("/big", big.clone()),
        ] {
            let mut r = tagged(&["a", "b"], store.generation());
            r.headers = StoredHeaders::from_map(&h);
            r.body = body;
            store.insert(&key(path), r);
        }
        let get = |path| match store.lookup(&key(path), &HeaderMap::new()) {
            Lookup::Hit(r) => r,
            other => panic!("{other:?}"),
        };
        let small = get("/small");
        assert_eq!(small.body(), "0123456789abcdef");
        assert_eq!(small.body_len(), 16);
        assert_eq!(small.headers().to_map(), h);
        assert_eq!(small.headers().len(), 2);
        assert_eq!(small.tags().iter().collect::<Vec<_>>(), ["a", "b"]);
        let (body, fields) = (small.body(), small.headers().buf);
        assert_eq!(
            body.as_ptr_range().end,
            fields.as_ptr(),
            "the fields follow the body"
        );
        // A large body keeps its own buffer (not copied); the rest is as for a small one.
        let large = get("/big");
        assert_eq!(large.body(), big);
        assert_eq!(large.body().as_ptr(), big.as_ptr());
        assert_eq!(large.headers().to_map(), h);
        assert_eq!(large.tags().iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(store.tag_index_len(), 2);
        // A soft-purged copy keeps the content, not the rendering slot's state.
        let stale = large.restamped(Duration::ZERO, 7);
        assert_eq!((stale.lifetime(), stale.fetched_gen), (Duration::ZERO, 7));
        assert_eq!(stale.body(), big);
    }

    #[test]
    fn the_hand_clears_bits_within_reach_and_a_forced_step_evicts_anyway() {
        let hasher = Hasher::default();
        let mut shard = Shard::default();
        for i in 0..EVICT_LOOK * 2 {
            let k = key(&format!("/h/{i}"));
            let r = StoredResponse::pack(stored(Variant::default(), "x"));
            r.referenced.store(true, Ordering::Relaxed);
            let entry = KeyEntry::new(k.full.as_str().into(), Variants::One(Arc::new(r)));
            shard.push(hasher.hash_one(k.digest), entry, &hasher);
        }
        // Every entry was hit: one step looks at EVICT_LOOK of them and clears their bits.
        assert!(shard.evict_one(false, &hasher).is_none());
        let cleared = |s: &Shard| {
            s.entries
                .iter()
                .filter(|e| {
                    !e.variants
                        .responses()
                        .any(|r| r.referenced.load(Ordering::Relaxed))
                })
                .count()
        };
        assert_eq!(cleared(&shard), EVICT_LOOK);
        // A forced step takes the entry under the hand whatever its bit.
        assert!(shard.evict_one(true, &hasher).is_some());
        assert_eq!(shard.entries.len(), EVICT_LOOK * 2 - 1);
        // The hand wrapped to the cleared entries: the next plain step evicts one.
        shard.hand = 0;
        assert!(shard.evict_one(false, &hasher).is_some());
        // Every remaining entry is still found through the index.
        for e in &shard.entries {
            let hash = hasher.hash_one(e.digest());
            assert!(shard.position(hash, &e.full_key).is_some());
        }
    }

    #[test]
    fn a_sweep_in_chunks_judges_every_entry_of_a_large_shard() {
        // About 1,250 entries a shard: more than one chunk each.
        sweep_half_of(80_000);
    }
}
