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

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Frame, SizeHint};
use tokio::sync::{watch, Notify};

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
    /// Fetches waiting for a slow reader of a body too large to store (its
    /// origin held back: see [`SharedBody`]).
    pub paused: usize,
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

    /// Counts a fetch as paused while the returned guard lives.
    pub fn paused(self: &Arc<Self>) -> Paused {
        self.activity.send_modify(|a| a.paused += 1);
        Paused(self.clone())
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

/// A fetch waiting for its readers ([`Flights::paused`]).
pub struct Paused(Arc<Flights>);

impl Drop for Paused {
    fn drop(&mut self) {
        self.0.activity.send_modify(|a| a.paused -= 1);
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

    /// Who still wants this flight's result: the leader's request (alive while
    /// `leader` is) and its waiters.
    pub fn interest(&self, leader: &Arc<()>) -> Interest {
        Interest {
            leader: Arc::downgrade(leader),
            flight: self.flight.clone(),
        }
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

/// Whether anybody still waits for a flight (see [`FlightGuard::interest`]).
pub struct Interest {
    leader: std::sync::Weak<()>,
    flight: Arc<Flight>,
}

impl Interest {
    pub fn wanted(&self) -> bool {
        self.leader.strong_count() > 0 || self.flight.tx.receiver_count() > 0
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

/// One reader's place: the index of the next chunk it reads, and its waker while
/// it waits for one.
struct Place {
    next: usize,
    waker: Option<Waker>,
}

struct BodyState {
    chunks: VecDeque<Bytes>,
    /// The index in the whole body of `chunks[0]` (chunks before it were dropped).
    first: usize,
    /// Bytes in `chunks`.
    held: usize,
    end: End,
    /// The body will not be stored: chunks every reader has passed are dropped,
    /// and no new reader can start from the first byte.
    streaming: bool,
    readers: HashMap<u64, Place>,
    next_id: u64,
}

impl BodyState {
    /// Drops the chunks every reader has read (streaming only).
    fn trim(&mut self) {
        if !self.streaming {
            return;
        }
        let slowest = self
            .readers
            .values()
            .map(|p| p.next)
            .min()
            .unwrap_or(self.first + self.chunks.len());
        while self.first < slowest {
            match self.chunks.pop_front() {
                Some(c) => self.held -= c.len(),
                None => break,
            }
            self.first += 1;
        }
    }

    fn wake_readers(&mut self) {
        for place in self.readers.values_mut() {
            if let Some(w) = place.waker.take() {
                w.wake();
            }
        }
    }
}

/// A body written once (by the fetch) and read by any number of clients, each from
/// the start, each at its own pace. While it may still be stored, every chunk is
/// kept (at most `max_object_size` of them: past it the fetch calls
/// [`SharedBody::stream`]). From then on the body is only a stream: what every
/// reader has read is dropped, new readers are refused, and the fetch waits for the
/// slowest reader whenever more than [`STREAM_WINDOW`] bytes are held, so memory
/// per flight stays bounded and a reader that does not read holds back the origin.
#[derive(Clone)]
pub struct SharedBody {
    state: Arc<Mutex<BodyState>>,
    /// Readers that moved on (or left): the fetch may read more.
    room: Arc<Notify>,
    len: Option<u64>,
}

/// Whether a fetch may read more of a shared body's origin ([`SharedBody::room_now`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Read on: the body may still be stored, or its readers keep up.
    Free,
    /// More than [`STREAM_WINDOW`] is held for the slowest reader: wait for it.
    Full,
    /// A stream nobody reads any more: stop reading the origin.
    Unread,
}

/// Most bytes a streaming shared body holds for its slowest reader.
pub const STREAM_WINDOW: usize = 1 << 20;

impl SharedBody {
    pub fn new(len: Option<u64>) -> SharedBody {
        SharedBody {
            state: Arc::new(Mutex::new(BodyState {
                chunks: VecDeque::new(),
                first: 0,
                held: 0,
                end: End::Open,
                streaming: false,
                readers: HashMap::new(),
                next_id: 0,
            })),
            room: Arc::new(Notify::new()),
            len,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BodyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, chunk: Bytes) {
        let mut s = self.lock();
        if s.streaming && s.readers.is_empty() {
            return; // nobody will read it, and it will not be stored
        }
        s.held += chunk.len();
        s.chunks.push_back(chunk);
        s.wake_readers();
    }

    pub fn finish(&self, ok: bool) {
        let mut s = self.lock();
        s.end = if ok { End::Complete } else { End::Failed };
        s.wake_readers();
    }

    /// The body will not be stored: from now on it is a stream (see the type).
    pub fn stream(&self) {
        let mut s = self.lock();
        s.streaming = true;
        s.trim();
    }

    /// Bytes held for readers now.
    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// May the fetch read on now?
    pub fn room_now(&self) -> Room {
        let s = self.lock();
        match (s.streaming, s.readers.is_empty()) {
            (true, true) => Room::Unread,
            (true, false) if s.held > STREAM_WINDOW => Room::Full,
            _ => Room::Free,
        }
    }

    /// Waits while the body is [`Room::Full`]; `false` when no reader is left on a
    /// streaming body (nobody needs the rest of it).
    pub async fn room(&self) -> bool {
        loop {
            match self.room_now() {
                Room::Free => return true,
                Room::Unread => return false,
                // A reader that moves on leaves a permit: no wake-up is lost
                // between the check and this wait.
                Room::Full => self.room.notified().await,
            }
        }
    }

    /// A reader from the first byte; `None` once the body is only a stream.
    pub fn reader(&self) -> Option<Body> {
        let mut s = self.lock();
        if s.streaming {
            return None;
        }
        let id = s.next_id;
        s.next_id += 1;
        s.readers.insert(
            id,
            Place {
                next: 0,
                waker: None,
            },
        );
        drop(s);
        let reader = SharedReader {
            body: self.clone(),
            id,
            done: false,
        };
        Some(crate::body::boxed(reader))
    }
}

/// One client's read of a [`SharedBody`]; leaving (dropped) lets the fetch go on.
struct SharedReader {
    body: SharedBody,
    id: u64,
    done: bool,
}

impl http_body::Body for SharedReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let SharedReader { body, id, done } = &mut *self;
        if *done {
            return Poll::Ready(None);
        }
        let mut guard = body.lock();
        let s = &mut *guard;
        let Some(next) = s.readers.get(id).map(|p| p.next) else {
            return Poll::Ready(None);
        };
        if let Some(chunk) = next.checked_sub(s.first).and_then(|i| s.chunks.get(i)) {
            let chunk = chunk.clone();
            if let Some(p) = s.readers.get_mut(id) {
                p.next += 1;
            }
            if s.streaming {
                s.trim();
                body.room.notify_one();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match s.end {
            End::Complete => {
                *done = true;
                Poll::Ready(None)
            }
            End::Failed => {
                *done = true;
                Poll::Ready(Some(Err("origin body failed".into())))
            }
            End::Open => {
                if let Some(p) = s.readers.get_mut(id) {
                    p.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        crate::body::size_hint(self.body.len)
    }
}

impl Drop for SharedReader {
    fn drop(&mut self) {
        let mut s = self.body.lock();
        s.readers.remove(&self.id);
        s.trim();
        drop(s);
        self.body.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn readers_see_chunks_as_they_arrive_and_late_readers_from_the_start() {
        let body = SharedBody::new(None);
        let early = body.reader().unwrap();
        body.push(Bytes::from_static(b"ab"));
        let mut early = early;
        let first = early.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        body.push(Bytes::from_static(b"cd"));
        let late = body.reader().unwrap();
        body.finish(true);
        assert_eq!(early.collect().await.unwrap().to_bytes(), "cd");
        assert_eq!(late.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_streaming_body_holds_only_what_its_slowest_reader_has_not_read() {
        let body = SharedBody::new(None);
        let mut fast = body.reader().unwrap();
        let mut slow = body.reader().unwrap();
        let chunk = Bytes::from(vec![7u8; STREAM_WINDOW / 4]);
        for _ in 0..4 {
            body.push(chunk.clone());
        }
        body.stream();
        assert!(
            body.reader().is_none(),
            "a stream has no first byte to start from"
        );
        // Everything is held for both readers: at the window, no room yet wanted.
        assert_eq!(body.held(), STREAM_WINDOW);
        body.push(chunk.clone());
        assert_eq!(
            body.room_now(),
            Room::Full,
            "past the window the fetch waits"
        );
        for _ in 0..5 {
            fast.frame().await.unwrap().unwrap();
        }
        assert_eq!(body.held(), 5 * chunk.len(), "the slow reader read nothing");
        slow.frame().await.unwrap().unwrap();
        slow.frame().await.unwrap().unwrap();
        assert_eq!(body.held(), 3 * chunk.len());
        assert!(body.room().await, "room again, and readers left");
        drop(slow);
        assert_eq!(body.held(), 0, "the fast reader has read everything held");
        drop(fast);
        assert!(!body.room().await, "no reader left: nobody needs the rest");
        body.push(chunk);
        assert_eq!(body.held(), 0, "nothing is kept for nobody");
    }

    #[tokio::test]
    async fn a_failed_body_is_an_error_for_readers() {
        let body = SharedBody::new(None);
        let r = body.reader().unwrap();
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
                waiters: 1,
                paused: 0
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
