//! What the cache holds and how it is found: keys (pure), the store (bounded,
//! sharded, CLOCK), single-flight coalescing, and surrogate keys (pure).

pub mod coalesce;
pub mod key;
pub mod store;
pub mod tags;
