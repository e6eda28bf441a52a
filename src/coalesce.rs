//! Single-flight request coalescing: concurrent misses (and validations) for one
//! primary key share one origin fetch.
//!
//! A [`Flight`] lives in [`Flights`] from the moment the first request misses until
//! the shared response is stored (or found unshareable, or fails). Requests that
//! arrive meanwhile wait on it; the one fetch runs in its own task, so it goes on
//! when the client that started it disconnects. A shareable body is pushed into a
//! [`SharedBody`] that every waiter streams from as it arrives, not when complete.
//!
//! Invariant: a flight always ends with a published [`Shared`] value, even if its
//! task panics or is dropped (the guard publishes `Failed`), so no waiter hangs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use tokio::sync::watch;

use crate::body::{Body, BoxError};
use crate::freshness::NotStored;
use crate::store::StoredResponse;

/// What a flight produced, as every waiter sees it.
#[derive(Clone)]
pub enum Shared {
    /// A storable response: its head (body empty in `entry`) and the body streaming in.
    Stored {
        entry: Arc<StoredResponse>,
        body: SharedBody,
    },
    /// A validation answered 304: the refreshed entry, complete.
    Refreshed(Arc<StoredResponse>),
    /// Not shareable: each waiter goes to the origin on its own.
    Uncacheable(NotStored),
    /// The origin failed: answer with this status (or stale content, where allowed).
    Failed {
        status: StatusCode,
        detail: &'static str,
        /// The origin is down (unhealthy, refused, connect timeout), not merely
        /// answering with an error: the unhealthy grace applies.
        down: bool,
    },
}

struct Flight {
    tx: watch::Sender<Option<Shared>>,
}

/// The flights in progress, by key digest.
pub struct Flights {
    map: Mutex<HashMap<u128, Arc<Flight>>>,
    /// Flights in progress and requests waiting on them, observable (metrics, tests).
    activity: watch::Sender<Activity>,
}

/// How much coalescing is going on right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    pub flights: usize,
    pub waiters: usize,
}

impl Default for Flights {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
            activity: watch::channel(Activity::default()).0,
        }
    }
}

/// The role a request gets for a key.
pub enum Join {
    /// Start the fetch and publish its result through the guard.
    Leader(FlightGuard),
    /// Wait for the result.
    Waiter(Waiter),
}

/// A request waiting on a flight (counted in [`Activity::waiters`] while it lives).
pub struct Waiter {
    rx: watch::Receiver<Option<Shared>>,
    flights: Arc<Flights>,
}

impl Waiter {
    /// The flight's result. `None` if the flight vanished without one (cannot happen
    /// while the guard publishes on drop, but a waiter must never hang on it).
    pub async fn result(&mut self) -> Option<Shared> {
        wait(&mut self.rx).await
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.flights.activity.send_modify(|a| a.waiters -= 1);
    }
}

impl Flights {
    pub fn join(self: &Arc<Self>, digest: u128) -> Join {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(&digest) {
            self.activity.send_modify(|a| a.waiters += 1);
            return Join::Waiter(Waiter {
                rx: f.tx.subscribe(),
                flights: self.clone(),
            });
        }
        let (tx, _rx) = watch::channel(None);
        let flight = Arc::new(Flight { tx });
        map.insert(digest, flight.clone());
        self.activity.send_modify(|a| a.flights += 1);
        Join::Leader(FlightGuard {
            flights: self.clone(),
            digest,
            flight,
            published: false,
        })
    }

    /// Number of flights in progress.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Detaches every flight in progress (after a purge): requests arriving from now
    /// on start new fetches instead of joining one that began before the purge. The
    /// detached flights still answer the requests already waiting on them.
    pub fn detach_all(&self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.len();
        map.clear();
        self.activity.send_modify(|a| a.flights -= n);
    }

    /// Watches flights and waiters come and go.
    pub fn activity(&self) -> watch::Receiver<Activity> {
        self.activity.subscribe()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, digest: u128, flight: &Arc<Flight>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&digest).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(&digest);
            self.activity.send_modify(|a| a.flights -= 1);
        }
    }
}

/// Held by the leader. Publishing wakes the waiters; the flight leaves the map when
/// the guard is dropped (for `Stored`: once the body is complete and stored, so that
/// requests arriving while the body streams join instead of fetching again).
pub struct FlightGuard {
    flights: Arc<Flights>,
    digest: u128,
    flight: Arc<Flight>,
    published: bool,
}

impl FlightGuard {
    pub fn publish(&mut self, shared: Shared) {
        self.published = true;
        self.flight.tx.send_replace(Some(shared));
    }

    /// A receiver for the leader's own request, like any waiter's.
    pub fn subscribe(&self) -> watch::Receiver<Option<Shared>> {
        self.flight.tx.subscribe()
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.published {
            self.flight.tx.send_replace(Some(Shared::Failed {
                status: StatusCode::BAD_GATEWAY,
                detail: "fetch-aborted",
                down: false,
            }));
        }
        self.flights.remove(self.digest, &self.flight);
    }
}

/// Waits for a flight's result (see [`Waiter::result`]).
pub async fn wait(rx: &mut watch::Receiver<Option<Shared>>) -> Option<Shared> {
    match rx.wait_for(|v| v.is_some()).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

/// How a shared body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Complete,
    Failed,
}

struct BodyState {
    chunks: Vec<Bytes>,
    end: End,
}

/// A body written once (by the fetch) and read by any number of clients, each from
/// the start, each at its own pace.
#[derive(Clone)]
pub struct SharedBody {
    state: Arc<Mutex<BodyState>>,
    version: watch::Sender<u64>,
    len: Option<u64>,
}

impl SharedBody {
    pub fn new(len: Option<u64>) -> SharedBody {
        let (version, _) = watch::channel(0);
        SharedBody {
            state: Arc::new(Mutex::new(BodyState {
                chunks: Vec::new(),
                end: End::Open,
            })),
            version,
            len,
        }
    }

    pub fn push(&self, chunk: Bytes) {
        if let Ok(mut s) = self.state.lock() {
            s.chunks.push(chunk);
        }
        self.version.send_modify(|v| *v += 1);
    }

    pub fn finish(&self, ok: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.end = if ok { End::Complete } else { End::Failed };
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// A reader from the first byte.
    pub fn reader(&self) -> Body {
        let rx = self.version.subscribe();
        let state = self.state.clone();
        let stream = futures_util::stream::unfold(
            (state, 0usize, rx, false),
            |(state, i, mut rx, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let next = {
                        let s = state.lock().unwrap_or_else(|e| e.into_inner());
                        if i < s.chunks.len() {
                            Some(Ok(s.chunks[i].clone()))
                        } else {
                            match s.end {
                                End::Complete => return None,
                                End::Failed => Some(Err(())),
                                End::Open => None,
                            }
                        }
                    };
                    match next {
                        Some(Ok(chunk)) => {
                            return Some((
                                Ok::<_, BoxError>(Frame::data(chunk)),
                                (state, i + 1, rx, false),
                            ))
                        }
                        Some(Err(())) => {
                            let e: BoxError = "origin body failed".into();
                            return Some((Err(e), (state, i, rx, true)));
                        }
                        None => {
                            if rx.changed().await.is_err() {
                                let e: BoxError = "origin body abandoned".into();
                                return Some((Err(e), (state, i, rx, true)));
                            }
                        }
                    }
                }
            },
        );
        let body = http_body_util::StreamBody::new(stream);
        match self.len {
            Some(n) => crate::body::boxed(crate::body::WithLength::new(body, n)),
            None => crate::body::boxed(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn readers_see_chunks_as_they_arrive_and_late_readers_from_the_start() {
        let body = SharedBody::new(None);
        let early = body.reader();
        body.push(Bytes::from_static(b"ab"));
        let mut early = early;
        let first = early.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        body.push(Bytes::from_static(b"cd"));
        let late = body.reader();
        body.finish(true);
        assert_eq!(early.collect().await.unwrap().to_bytes(), "cd");
        assert_eq!(late.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_failed_body_is_an_error_for_readers() {
        let body = SharedBody::new(None);
        let r = body.reader();
        body.push(Bytes::from_static(b"ab"));
        body.finish(false);
        assert!(r.collect().await.is_err());
    }

    #[tokio::test]
    async fn one_leader_many_waiters_and_a_dropped_guard_still_answers() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(guard) = flights.join(7) else {
            panic!("first is leader")
        };
        let Join::Waiter(mut waiter) = flights.join(7) else {
            panic!("second waits")
        };
        assert_eq!(flights.len(), 1);
        assert_eq!(
            *flights.activity().borrow(),
            Activity {
                flights: 1,
                waiters: 1
            }
        );
        drop(guard);
        assert!(matches!(waiter.result().await, Some(Shared::Failed { .. })));
        drop(waiter);
        assert!(flights.is_empty());
        assert_eq!(*flights.activity().borrow(), Activity::default());
        assert!(matches!(flights.join(7), Join::Leader(_)));
    }
}
