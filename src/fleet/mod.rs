//! The fleet: nodes that purge as one over a bus on Redis Streams.
//!
//! A node that accepts a purge admits it (validation, the token's scope), appends
//! it to the stream (with its request id, once fleet-wide), applies it at once and
//! answers; every node's consumer reads the stream in order and applies each purge
//! through the same `Purger::apply` (a purge applied at once is replayed there,
//! not applied twice). Each node records in Redis the last entry it applied and a
//! heartbeat; a purge with `wait` is answered once every node that is alive has
//! applied it. A node that cannot read the stream for longer than `max_lag`
//! requires everything it holds to be revalidated before reuse, once per
//! `max_lag`; a node that finds entries it needed trimmed away does the same once.
//! Shields catch up with the purges an edge has applied before answering it
//! (`Lacquer-Purged-Through`).

mod consumer;
mod redis;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{FleetSettings, Tier};
use crate::metrics::Metrics;
use crate::purge::{Admitted, Applied, Purger, Refused};

use self::redis::Keys;
pub use self::redis::NodeRecord;

pub use crate::purge::{StreamId, PURGED_THROUGH};

/// How a node stands against a purge it was asked to confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Applied,
    Pending,
    Down,
}

/// The fleet's part of a purge's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Confirmation {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<BTreeMap<String, NodeState>>,
}

/// A purge handed to the fleet: the local answer, and the fleet's.
pub struct Submitted {
    pub applied: Applied,
    pub fleet: Confirmation,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This node's membership of a fleet.
pub struct Fleet {
    cfg: FleetSettings,
    keys: Keys,
    purger: Arc<Purger>,
    metrics: Arc<Metrics>,
    /// Appends, records and reads that never block (a blocking read has its own).
    writer: ConnectionManager,
    /// The last entry applied in stream order (the consumer's position).
    applied: watch::Sender<StreamId>,
    /// The newest purge applied here, in order or not (the consumer's position, or
    /// a purge this node received and applied at once): what its requests to the
    /// node behind it carry.
    seen: watch::Sender<StreamId>,
    /// Milliseconds since `started` of the last successful read of the stream.
    last_read: AtomicU64,
    started: Instant,
    partitioned: AtomicBool,
    /// A partition's start and end, for whoever watches (tests, the testbed).
    partition: watch::Sender<bool>,
    /// Holds the consumer back (a fault the testbed and the tests inject).
    held: watch::Sender<bool>,
    /// Set once this node's record is in Redis (other nodes can see it).
    recorded: watch::Sender<bool>,
    /// Successful reads of the stream so far (an idle read counts too).
    reads: watch::Sender<u64>,
    request_ids: AtomicU64,
    window: Duration,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

/// A connection manager that reconnects on its own, with every command bounded.
fn manager(cfg: &FleetSettings, response: Duration) -> Result<ConnectionManager, String> {
    let client = ::redis::Client::open(cfg.redis.as_str()).map_err(|e| e.to_string())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.redis_timeout))
        .set_response_timeout(Some(response))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
}

impl Fleet {
    /// A node of the fleet `cfg` names. No connection is made until the tasks start
    /// ([`Fleet::spawn`]) or a purge arrives; a Redis that is down does not stop the
    /// node from serving.
    pub fn new(
        cfg: FleetSettings,
        purger: Arc<Purger>,
        metrics: Arc<Metrics>,
        window: Duration,
        seen: watch::Sender<StreamId>,
    ) -> Result<Arc<Fleet>, String> {
        let writer = manager(&cfg, cfg.redis_timeout)?;
        Ok(Arc::new(Fleet {
            keys: Keys::new(&cfg.stream),
            cfg,
            purger,
            metrics,
            writer,
            applied: watch::Sender::new(StreamId::default()),
            seen,
            last_read: AtomicU64::new(0),
            started: Instant::now(),
            partitioned: AtomicBool::new(false),
            partition: watch::Sender::new(false),
            held: watch::Sender::new(false),
            recorded: watch::Sender::new(false),
            reads: watch::Sender::new(0),
            request_ids: AtomicU64::new(1),
            window,
            tasks: Mutex::default(),
        }))
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.cfg
    }

    /// Starts the consumer and the heartbeat (they end when the fleet is dropped,
    /// or when the handles are aborted).
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let reader = match manager(&self.cfg, self.cfg.heartbeat + self.cfg.redis_timeout) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "fleet: cannot make a Redis client");
                return Vec::new();
            }
        };
        let weak = Arc::downgrade(self);
        let handles = vec![
            tokio::spawn(consumer::consume(weak.clone(), reader)),
            tokio::spawn(consumer::heartbeat(weak)),
        ];
        handles
    }

    /// The last entry applied here in stream order.
    pub fn applied(&self) -> StreamId {
        *self.applied.borrow()
    }

    /// What this node's requests to the node behind it carry.
    pub fn seen(&self) -> StreamId {
        *self.seen.borrow()
    }

    /// Is this node cut off from the stream for longer than `max_lag`?
    pub fn partitioned(&self) -> bool {
        self.partitioned.load(Ordering::Relaxed)
    }

    fn set_partitioned(&self, now: bool) -> bool {
        let was = self.partitioned.swap(now, Ordering::Relaxed);
        self.partition.send_replace(now);
        was
    }

    /// Watches the partitioned state.
    pub fn partition_watch(&self) -> watch::Receiver<bool> {
        self.partition.subscribe()
    }

    /// Watches the last entry applied in stream order.
    pub fn applied_watch(&self) -> watch::Receiver<StreamId> {
        self.applied.subscribe()
    }

    /// Watches whether this node's record has reached Redis.
    pub fn recorded_watch(&self) -> watch::Receiver<bool> {
        self.recorded.subscribe()
    }

    /// Watches the count of successful reads of the stream.
    pub fn reads_watch(&self) -> watch::Receiver<u64> {
        self.reads.subscribe()
    }

    /// Holds the consumer back (true) or lets it go on (false): a fault for the
    /// testbed and the tests (a shield that lags, an edge whose delivery stalls).
    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Waits (at most `catch_up_wait`) until this node has applied, in stream
    /// order, every purge up to `id`. False when it has not (the request must not
    /// be answered from the cache) — or never, when `shield_order` is off.
    pub async fn caught_up(&self, id: StreamId) -> bool {
        if !self.cfg.shield_order {
            return true;
        }
        let mut rx = self.applied.subscribe();
        let wait = async move { rx.wait_for(|applied| *applied >= id).await.is_ok() };
        matches!(
            tokio::time::timeout(self.cfg.catch_up_wait, wait).await,
            Ok(true)
        )
    }

    fn note_seen(&self, id: StreamId) {
        self.seen.send_if_modified(|seen| {
            let newer = id > *seen;
            if newer {
                *seen = id;
            }
            newer
        });
    }

    /// A purge admitted here, for the whole fleet: appended to the stream (once per
    /// request id, fleet-wide), applied here at once, and with `wait` confirmed by
    /// every node that is alive, or until the wait runs out. A Redis that cannot
    /// be reached refuses the purge (applied nowhere).
    pub async fn submit(
        &self,
        mut admitted: Admitted,
        wait: Option<Duration>,
    ) -> Result<Submitted, Refused> {
        if admitted.purge.request_id.is_none() {
            // Unique fleet-wide: node names are.
            admitted.purge.request_id = Some(format!(
                "{}-{}-{}",
                self.cfg.node,
                unix_ms(),
                self.request_ids.fetch_add(1, Ordering::Relaxed)
            ));
        }
        let mut conn = self.writer.clone();
        let (id, first) = match redis::append(
            &mut conn,
            &self.keys,
            &admitted,
            self.cfg.retention,
            self.window,
        )
        .await
        {
            Ok(appended) => appended,
            Err(e) => {
                self.metrics.fleet.refused.inc();
                tracing::warn!(error = %e, "fleet: purge refused, the bus cannot be reached");
                return Err(Refused::Unavailable(format!(
                    "the fleet's purge bus (Redis at {}) cannot be reached, so the purge \
                     was applied nowhere; send it again with the same request_id: {e}",
                    self.cfg.redis
                )));
            }
        };
        let applied = if first {
            let applied = self.purger.apply(&admitted, "local");
            self.note_seen(id);
            applied
        } else {
            // Appended before (by this node or another): answered once this node
            // has applied it from the stream.
            let mut rx = self.applied.subscribe();
            let bound = wait.unwrap_or_default().max(self.cfg.catch_up_wait * 4);
            let applied = async move { rx.wait_for(|a| *a >= id).await.is_ok() };
            let _ = tokio::time::timeout(bound, applied).await;
            self.purger.replay(&admitted).unwrap_or_else(|| Applied {
                answer: Arc::new(serde_json::json!({
                    "request_id": admitted.purge.request_id,
                    "token": admitted.token,
                    "report": null,
                })),
                replayed: true,
            })
        };
        let fleet = match wait {
            Some(wait) => self.confirm(id, wait).await,
            None => Confirmation {
                id: id.to_string(),
                complete: None,
                nodes: None,
            },
        };
        Ok(Submitted { applied, fleet })
    }

    /// Polls the node records until every node that is alive has applied `id`, or
    /// `wait` has passed.
    pub async fn confirm(&self, id: StreamId, wait: Duration) -> Confirmation {
        let deadline = Instant::now() + wait;
        let mut conn = self.writer.clone();
        // What the last readable records said (at first: this node alone).
        let mut nodes = BTreeMap::from([(self.cfg.node.clone(), self.own_state(id))]);
        loop {
            // Records that cannot be read confirm nothing: the answer stays
            // incomplete until they can.
            let read = match redis::nodes(&mut conn, &self.keys).await {
                Ok(records) => {
                    nodes = self.states(&records, id);
                    true
                }
                Err(_) => false,
            };
            let pending = !read || nodes.values().any(|s| *s == NodeState::Pending);
            let now = Instant::now();
            if !pending || now >= deadline {
                return Confirmation {
                    id: id.to_string(),
                    complete: Some(read && nodes.values().all(|s| *s == NodeState::Applied)),
                    nodes: Some(nodes),
                };
            }
            // The records change when a node applies a batch; a short poll.
            tokio::time::sleep((deadline - now).min(Duration::from_millis(3))).await;
        }
    }

    fn own_state(&self, id: StreamId) -> NodeState {
        if self.seen() >= id || self.applied() >= id {
            NodeState::Applied
        } else {
            NodeState::Pending
        }
    }

    /// Each listed node's state against `id` (nodes gone for `forget_after` are left
    /// out; this node answers for itself).
    fn states(
        &self,
        records: &BTreeMap<String, NodeRecord>,
        id: StreamId,
    ) -> BTreeMap<String, NodeState> {
        let now = unix_ms();
        let mut states = BTreeMap::new();
        for (name, r) in records {
            let silent = now.saturating_sub(r.beat_ms);
            if silent > u64::try_from(self.cfg.forget_after.as_millis()).unwrap_or(u64::MAX) {
                continue;
            }
            let applied: StreamId = r.applied.parse().unwrap_or_default();
            let state = if *name == self.cfg.node {
                self.own_state(id)
            } else if applied >= id {
                NodeState::Applied
            } else if silent > r.down_after_ms {
                NodeState::Down
            } else {
                NodeState::Pending
            };
            states.insert(name.clone(), state);
        }
        states
            .entry(self.cfg.node.clone())
            .or_insert_with(|| self.own_state(id));
        states
    }

    /// `GET /.lacquer/fleet`: every node's tier, position, lag, heartbeat and state.
    pub async fn status(&self) -> serde_json::Value {
        let mut conn = self.writer.clone();
        let (records, info) = match (
            redis::nodes(&mut conn, &self.keys).await,
            redis::info(&mut conn, &self.keys).await,
        ) {
            (Ok(r), Ok(i)) => (r, i.unwrap_or_default()),
            (Err(e), _) | (_, Err(e)) => {
                return serde_json::json!({
                    "node": self.cfg.node,
                    "bus": "unreachable",
                    "error": e.to_string(),
                    "partitioned": self.partitioned(),
                    "applied": self.applied().to_string(),
                })
            }
        };
        let now = unix_ms();
        let mut nodes = serde_json::Map::new();
        for (name, r) in &records {
            let applied: StreamId = r.applied.parse().unwrap_or_default();
            let silent = now.saturating_sub(r.beat_ms);
            let (lag_entries, lag_ms) = if applied < info.last_generated {
                redis::lag_ms(&mut conn, &self.keys, applied, now)
                    .await
                    .unwrap_or((0, 0))
            } else {
                (0, 0)
            };
            let state = if silent > r.down_after_ms {
                "down"
            } else if r.partitioned {
                "partitioned"
            } else {
                "up"
            };
            nodes.insert(
                name.clone(),
                serde_json::json!({
                    "tier": r.tier,
                    "applied": r.applied,
                    "lag_entries": lag_entries,
                    "lag_ms": lag_ms,
                    "last_heartbeat_ms_ago": silent,
                    "state": state,
                }),
            );
        }
        serde_json::json!({
            "node": self.cfg.node,
            "tier": self.cfg.tier.as_str(),
            "stream": self.keys.stream,
            "bus": "reachable",
            "last_id": info.last_generated.to_string(),
            "length": info.length,
            "partitioned": self.partitioned(),
            "nodes": nodes,
        })
    }

    fn record(&self) -> NodeRecord {
        NodeRecord {
            tier: match self.cfg.tier {
                Tier::Edge => "edge".into(),
                Tier::Shield => "shield".into(),
            },
            applied: self.applied().to_string(),
            beat_ms: unix_ms(),
            down_after_ms: u64::try_from(self.cfg.down_after.as_millis()).unwrap_or(u64::MAX),
            partitioned: self.partitioned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_print_and_order() {
        let cases = [
            ("0-0", Some((0, 0))),
            ("1733300000000-7", Some((1733300000000, 7))),
            ("12", Some((12, 0))),
            ("x-1", None),
            ("1-", None),
            ("", None),
        ];
        for (text, want) in cases {
            let got: Option<StreamId> = text.parse().ok();
            assert_eq!(got.map(|i| (i.ms, i.seq)), want, "{text:?}");
        }
        let a: StreamId = "5-2".parse().unwrap();
        let b: StreamId = "5-10".parse().unwrap();
        let c: StreamId = "6-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "5-10");
    }
}
