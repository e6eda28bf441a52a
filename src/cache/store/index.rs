//! The store's index: per shard, a flat list of key entries (32 bytes each) and a
//! hash table of their positions; the variants under each key; CLOCK eviction (a
//! hit sets an entry's bit, the hand clears bits and evicts the first entry whose bit
//! was clear).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{StoredResponse, SHARDS};

/// One variant and when it was last used (a store-wide tick, for LRU among variants).
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) response: Arc<StoredResponse>,
    pub(super) used: AtomicU64,
}

/// The variants stored under one primary key. One variant (the common case) costs
/// nothing beyond its response; several are a list, most recently stored first.
#[derive(Debug)]
pub(super) enum Variants {
    One(Arc<StoredResponse>),
    Many(Box<[Slot]>),
}

impl Variants {
    pub(super) fn from_slots(mut slots: Vec<Slot>) -> Variants {
        if slots.len() == 1 {
            if let Some(slot) = slots.pop() {
                return Variants::One(slot.response);
            }
        }
        Variants::Many(slots.into_boxed_slice())
    }

    pub(super) fn responses(&self) -> impl Iterator<Item = &Arc<StoredResponse>> + '_ {
        let (one, many) = match self {
            Variants::One(r) => (Some(r), None),
            Variants::Many(slots) => (None, Some(slots.iter().map(|s| &s.response))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// The variants with their last use (a single variant has no LRU rank: 0).
    pub(super) fn slots(&self) -> Vec<Slot> {
        match self {
            Variants::One(r) => vec![Slot {
                response: r.clone(),
                used: AtomicU64::new(0),
            }],
            Variants::Many(slots) => slots
                .iter()
                .map(|s| Slot {
                    response: s.response.clone(),
                    used: AtomicU64::new(s.used.load(Ordering::Relaxed)),
                })
                .collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Variants::One(_) => 1,
            Variants::Many(slots) => slots.len(),
        }
    }
}

/// Everything stored under one primary key: 32 bytes in its shard's entry list
/// (whether it was hit lately is a bit in each variant).
#[derive(Debug)]
pub(super) struct KeyEntry {
    pub(super) full_key: Box<str>,
    pub(super) variants: Variants,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<KeyEntry>() == 32);

impl KeyEntry {
    pub(super) fn new(full_key: Box<str>, variants: Variants) -> KeyEntry {
        KeyEntry { full_key, variants }
    }

    /// What the store's budget counts for this entry (the same on the way in and out).
    pub(super) fn weight(&self) -> u64 {
        let w = self.full_key.len()
            + std::mem::size_of::<KeyEntry>()
            + 16 // its share of the shard's index
            + self.variants.responses().map(|r| r.weight()).sum::<usize>();
        w as u64
    }

    /// Was a variant hit since the eviction hand last passed? Clears every bit.
    pub(super) fn take_referenced(&self) -> bool {
        let mut any = false;
        for r in self.variants.responses() {
            any |= r.take_referenced();
        }
        any
    }

    pub(super) fn digest(&self) -> u128 {
        crate::key::digest(&self.full_key)
    }

    /// The tags of every variant (a tag carried by two variants comes twice, as the
    /// tag counters count variants).
    pub(super) fn tags(&self) -> impl Iterator<Item = &str> + '_ {
        self.variants.responses().flat_map(|r| r.tags().iter())
    }
}

/// One of the store's shards: its entries in a flat list (the CLOCK hand walks it)
/// and a hash table of positions in that list. An entry costs its 32 bytes in the
/// list and about 10 in the table; moka, the first store, spent about 300 bytes
/// on each (its hash-table node, entry info, deque nodes and key `Arc`).
#[derive(Default)]
pub(super) struct Shard {
    pub(super) entries: Vec<KeyEntry>,
    /// Positions in `entries`, hashed by the key's digest (seeded foldhash).
    pub(super) index: hashbrown::HashTable<u32>,
    /// The CLOCK hand: the next position eviction looks at.
    pub(super) hand: usize,
}

impl Shard {
    pub(super) fn position(&self, hash: u64, full_key: &str) -> Option<usize> {
        self.index
            .find(hash, |&i| {
                self.entries
                    .get(i as usize)
                    .is_some_and(|e| *e.full_key == *full_key)
            })
            .map(|&i| i as usize)
    }

    pub(super) fn push(&mut self, hash: u64, entry: KeyEntry, hasher: &Hasher) {
        let Shard { entries, index, .. } = self;
        let at = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        entries.push(entry);
        index.insert_unique(hash, at, |&i| {
            entries
                .get(i as usize)
                .map_or(0, |e| hasher.hash_one(e.digest()))
        });
    }

    /// Removes the entry at `at`; the last entry takes its place.
    pub(super) fn remove_at(&mut self, at: usize, hasher: &Hasher) -> Option<KeyEntry> {
        let hash = hasher.hash_one(self.entries.get(at)?.digest());
        if let Ok(found) = self.index.find_entry(hash, |&i| i as usize == at) {
            found.remove();
        }
        let last = self.entries.len() - 1;
        if at != last {
            let moved = hasher.hash_one(self.entries[last].digest());
            if let Some(i) = self.index.find_mut(moved, |&i| i as usize == last) {
                *i = at as u32;
            }
        }
        Some(self.entries.swap_remove(at))
    }

    /// CLOCK: the first entry under the hand not hit since the hand last passed,
    /// looking at `EVICT_LOOK` entries at most (their bits are cleared as the hand
    /// passes); `force` takes the entry under the hand whatever its bit. `None`:
    /// nothing cold within reach, or nothing here.
    pub(super) fn evict_one(&mut self, force: bool, hasher: &Hasher) -> Option<KeyEntry> {
        for _ in 0..self.entries.len().min(EVICT_LOOK) {
            if self.hand >= self.entries.len() {
                self.hand = 0;
            }
            let entry = self.entries.get(self.hand)?;
            if entry.take_referenced() && !force {
                self.hand += 1;
            } else {
                return self.remove_at(self.hand, hasher);
            }
        }
        None
    }
}

/// Entries one eviction step looks at in a shard before it asks the next shard.
pub(super) const EVICT_LOOK: usize = 64;

pub(super) type Hasher = foldhash::fast::RandomState;

/// The shard a table hash lives in (bits the table does not use for its buckets or
/// control bytes).
pub(super) fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}
