//! The in-memory store: primary key digest → the variants stored for it.
//!
//! Bounded by bytes (a weigher counts body, headers, key and a fixed per-entry
//! overhead) on moka. A stored entry holds everything freshness needs, so a hit
//! is an `Arc` clone plus a `Bytes` clone: no re-parsing.
//!
//! Invariants: only complete responses are inserted; a `Vary: *` response is never
//! inserted; a key never holds more than `max_variants` variants.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::HeaderMap;
use http::StatusCode;
use moka::sync::Cache;

use crate::directives::Directives;
use crate::key::{CacheKey, Variant};

/// A stored response and the facts freshness needs (RFC 9111 §4.2.3).
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub status: StatusCode,
    /// End-to-end headers as received (hop-by-hop fields and `Age` removed).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub corrected_initial_age: Duration,
    pub lifetime: Duration,
    /// The directives Lacquer obeys for this response (targeted field or Cache-Control).
    pub directives: Directives,
    /// The request fields that selected this variant.
    pub variant: Variant,
}

impl StoredResponse {
    /// Approximate memory held by this entry.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
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
    /// Something is stored under the key, but no variant matches this request.
    VaryMiss,
    Miss,
}

pub struct Store {
    cache: Cache<u128, Arc<KeyEntry>>,
    max_variants: usize,
    tick: AtomicU64,
}

impl Store {
    pub fn new(max_bytes: u64, max_variants: usize) -> Store {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &u128, v: &Arc<KeyEntry>| v.weight())
            .build();
        Store {
            cache,
            max_variants,
            tick: AtomicU64::new(1),
        }
    }

    pub fn lookup(&self, key: &CacheKey, req: &HeaderMap) -> Lookup {
        let Some(entry) = self.cache.get(&key.digest) else {
            return Lookup::Miss;
        };
        if entry.full_key != key.full {
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
                Lookup::Hit(v.response.clone())
            }
            None => Lookup::VaryMiss,
        }
    }

    /// Stores a variant. It replaces the variant with the same selecting values; a
    /// different set of Vary names replaces all older variants (the origin changed
    /// its selection rule). Beyond `max_variants` the least recently used goes.
    pub fn insert(&self, key: &CacheKey, response: StoredResponse) {
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
                if old.full_key == key.full {
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
            Arc::new(KeyEntry {
                full_key: key.full.clone(),
                variants,
            })
        });
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
    use crate::key::{primary_key, KeyRule};
    use http::header::{HeaderName, HeaderValue};

    fn stored(variant: Variant, body: &'static str) -> StoredResponse {
        StoredResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            request_time: SystemTime::UNIX_EPOCH,
            response_time: SystemTime::UNIX_EPOCH,
            corrected_initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(60),
            directives: Directives::default(),
            variant,
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
