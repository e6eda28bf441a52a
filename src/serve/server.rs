//! The listener: accepts TCP connections and serves HTTP/1.1 and HTTP/2 on them
//! (hyper-util's auto builder) with the limits of the config: request-head size
//! (431), header read timeout (slow clients are cut off).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::Settings;
use crate::proxy::Proxy;
use crate::request::ClientInfo;

/// A running proxy. Dropping it stops accepting connections;
/// [`Running::shutdown`] also lets the requests in flight finish.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when it has one of its own.
    pub admin_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    task: JoinHandle<()>,
    health_checks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// Every connection task holds a clone; the channel closes when the last ends.
    open_connections: mpsc::Receiver<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
        for t in &self.health_checks {
            t.abort();
        }
    }
}

impl Running {
    /// Waits until the accept loop ends (it only ends when aborted).
    pub async fn wait(mut self) {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }

    /// Graceful shutdown: stop accepting, let every connection finish its request in
    /// flight (keep-alive connections close after it), up to `drain`. Returns true
    /// when everything drained in time.
    pub async fn shutdown(mut self, drain: Duration) -> bool {
        self.stop.send_replace(true);
        let drained = tokio::time::timeout(drain, async {
            // `None` once every connection task (and the accept loop) has ended.
            while self.open_connections.recv().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            warn!(?drain, "drain timeout: closing the remaining connections");
        }
        drained
    }
}

/// Binds `settings.listen` and starts serving in the background.
pub async fn start(settings: Settings) -> io::Result<Running> {
    let listener = TcpListener::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    let proxy = Proxy::new(settings);
    proxy.origins().spawn_health_checks();
    let mut health_checks = vec![
        tokio::spawn(sweeper(proxy.clone())),
        tokio::spawn(crate::logging::announce_drops()),
    ];
    if let Some(fleet) = proxy.fleet() {
        health_checks.extend(fleet.spawn());
    }
    let admin_addr = match proxy.settings().admin.listen {
        Some(addr) => {
            let admin = TcpListener::bind(addr).await?;
            let bound = admin.local_addr()?;
            health_checks.push(tokio::spawn(admin_loop(admin, proxy.clone())));
            Some(bound)
        }
        None => None,
    };
    let (stop, stop_rx) = watch::channel(false);
    let (open_tx, open_connections) = mpsc::channel(1);
    let task = tokio::spawn(accept_loop(listener, proxy.clone(), stop_rx, open_tx));
    Ok(Running {
        addr,
        admin_addr,
        proxy,
        task,
        health_checks,
        stop,
        open_connections,
    })
}

fn connection_builder(s: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The timer is set per connection (`serve`): a `HeadClock`.
        .header_read_timeout(s.header_read_timeout)
        .keep_alive(true)
        // hyper answers 431 when the request head does not fit in this buffer.
        .max_buf_size(s.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.h2_max_streams)
        // Streams a client resets before they are served (rapid reset): past
        // this many pending, the connection gets GOAWAY (h2's default, made explicit).
        .max_pending_accept_reset_streams(20)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut stop: watch::Receiver<bool>,
    open: mpsc::Sender<()>,
) {
    let builder = Arc::new(connection_builder(&proxy.settings()));
    let tls = proxy
        .settings()
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => return, // drops the listener: no new connections
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let open = open.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = open; // dropped when this connection ends
            let header_read_timeout = proxy.settings().header_read_timeout;
            match tls {
                None => serve(TokioIo::new(stream), peer, "http", proxy, &builder, stop).await,
                Some(acceptor) => {
                    // The handshake counts against the header read timeout too.
                    match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve(
                                TokioIo::new(tls_stream),
                                peer,
                                "https",
                                proxy,
                                &builder,
                                stop,
                            )
                            .await
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one connection (plain or TLS) until it ends or a stop drains it.
async fn serve<IO>(
    io: TokioIo<IO>,
    peer: SocketAddr,
    scheme: &'static str,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let settings = proxy.settings();
    let per_connection = settings.max_origin_requests_per_connection;
    let client = ClientInfo {
        addr: peer,
        scheme,
        budget: (per_connection > 0).then(|| Arc::new(tokio::sync::Semaphore::new(per_connection))),
    };
    let (timeout, idle) = (settings.header_read_timeout, settings.h2_idle_timeout);
    drop(settings);
    // Until the first request starts, the connection is on the clock: telling
    // HTTP/1 from HTTP/2 waits for the client's first bytes, and a client that
    // sends nothing (or part of the HTTP/2 preface) must not hold it forever.
    let clock = Arc::new(HeadClock::new(timeout));
    let mut builder = builder.clone();
    builder.http1().timer(HeadTimer(clock.clone()));
    let first = clock.clone();
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        first.first_request();
        if req.version() == http::Version::HTTP_2 {
            first.h2_streams.fetch_add(1, Ordering::Relaxed);
        }
        // Hits are answered inside `respond`, before this returns (see there).
        proxy.respond(req, client.clone())
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // Shutdown and the head clock are watched by a task of their own, so that the
    // connection's many wake-ups (a few per request) poll only the connection.
    let events = Arc::new(ConnectionEvents::default());
    let _watcher = AbortOnDrop(tokio::spawn(watch_connection(
        events.clone(),
        clock,
        stop,
        (timeout.min(idle) / 4).max(Duration::from_millis(5)),
        idle,
    )));
    let mut draining = false;
    let result = std::future::poll_fn(|cx| {
        // Registered before the flags are read: an event set after the reads wakes us.
        events.waker.register(cx.waker());
        if events.expired.load(Ordering::Acquire) {
            return std::task::Poll::Ready(None);
        }
        if !draining && events.stopping.load(Ordering::Acquire) {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            draining = true;
        }
        std::future::Future::poll(conn.as_mut(), cx).map(Some)
    })
    .await;
    let Some(result) = result else {
        debug!(%peer, "request head not received within the header read timeout: closing");
        return;
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// What a connection's watcher has seen, for the connection's task to act on.
#[derive(Default)]
struct ConnectionEvents {
    /// The server is shutting down: finish the request in flight, then close.
    stopping: AtomicBool,
    /// A request head (or the first request) took longer than the timeout.
    expired: AtomicBool,
    /// The connection's task.
    waker: futures_util::task::AtomicWaker,
}

/// Watches shutdown and a connection's head clock (checked a few times per
/// timeout: a head that takes longer than the timeout closes the connection within
/// 1.25 × the timeout), and wakes the connection's task when either fires.
///
/// An HTTP/2 connection that starts no stream for `idle` is shut down gracefully
/// (GOAWAY; streams in progress finish): HTTP/1's idle bound is the head clock,
/// which HTTP/2 does not use after its first request.
async fn watch_connection(
    events: Arc<ConnectionEvents>,
    clock: Arc<HeadClock>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
    idle: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut streams, mut since) = (0, tokio::time::Instant::now());
    loop {
        tokio::select! {
            () = stopped(&mut stop), if !events.stopping.load(Ordering::Relaxed) => {
                events.stopping.store(true, Ordering::Release);
                events.waker.wake();
            }
            now = tick.tick() => {
                if clock.expired() {
                    events.expired.store(true, Ordering::Release);
                    events.waker.wake();
                    return;
                }
                let seen = clock.h2_streams.load(Ordering::Relaxed);
                if seen != streams {
                    (streams, since) = (seen, now);
                } else if seen > 0
                    && now.duration_since(since) >= idle
                    && !events.stopping.load(Ordering::Relaxed)
                {
                    events.stopping.store(true, Ordering::Release);
                    events.waker.wake();
                }
            }
        }
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The header read timeout of one connection, as hyper's HTTP/1 timer: hyper asks
/// for a sleep when it starts reading a request head and drops it once the head is
/// parsed, so the clock is armed exactly while a head is awaited (the keep-alive
/// wait included). The sleep itself never fires: the connection's watcher
/// (`watch_connection`) checks the clock a few times per timeout and has the
/// connection closed when it ran out. That costs two atomic stores per request
/// instead of a timer registration and removal.
struct HeadClock {
    base: std::time::Instant,
    /// Deadline in nanoseconds since `base`; 0 when no head is awaited.
    deadline: AtomicU64,
    first_seen: AtomicBool,
    /// HTTP/2 streams started (the watcher's sign of an h2 connection's activity).
    h2_streams: AtomicU64,
}

impl HeadClock {
    fn new(timeout: Duration) -> HeadClock {
        let clock = HeadClock {
            base: std::time::Instant::now(),
            deadline: AtomicU64::new(0),
            first_seen: AtomicBool::new(false),
            h2_streams: AtomicU64::new(0),
        };
        clock.arm(clock.base + timeout);
        clock
    }

    fn arm(&self, deadline: std::time::Instant) {
        let nanos = deadline.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX).max(1);
        self.deadline.store(nanos, Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.deadline.store(0, Ordering::Relaxed);
    }

    /// The first request started (an HTTP/2 connection's only signal).
    fn first_request(&self) {
        if !self.first_seen.load(Ordering::Relaxed) {
            self.first_seen.store(true, Ordering::Relaxed);
            self.disarm();
        }
    }

    fn expired(&self) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        deadline != 0 && self.base.elapsed().as_nanos() >= u128::from(deadline)
    }
}

/// hyper's view of a [`HeadClock`].
struct HeadTimer(Arc<HeadClock>);

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.0.arm(deadline);
        Box::pin(HeadSleep(self.0.clone()))
    }

    fn reset(&self, _sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        self.0.arm(new_deadline);
    }
}

/// A head being awaited: the clock runs until hyper drops this.
struct HeadSleep(Arc<HeadClock>);

impl std::future::Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // Never fires: the connection's watcher checks the clock and closes the
        // connection, so hyper's polls of the head read do not read the clock.
        std::task::Poll::Pending
    }
}

impl hyper::rt::Sleep for HeadSleep {}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        self.0.disarm();
    }
}

/// Reclaims the memory of purged entries in the background, once per second when
/// purges happened (the purge itself only wrote marks). A sweep scans only the
/// shards its marks can cover (`Store::sweep`), on a thread of its own at nice 19:
/// on a busy core it yields to the request path (a purge storm must not slow hits
/// down), and purged entries are already refused by their marks while they wait.
async fn sweeper(proxy: Arc<Proxy>) {
    let (wake, sweeps) = std::sync::mpsc::sync_channel::<()>(1);
    let p = proxy.clone();
    let spawned = std::thread::Builder::new()
        .name("lacquer-sweep".into())
        .spawn(move || {
            lowest_priority();
            // Ends when the sender (this task) is dropped.
            for () in sweeps {
                let removed = p.store().sweep();
                debug!(removed, "purge sweep");
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the sweep thread: purged entries are reclaimed by eviction only");
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if proxy.store().needs_sweep() {
            // Full: a sweep is still running, and it will see this purge's marks.
            let _ = wake.try_send(());
        }
    }
}

/// Nice 19 for the calling thread (Linux: priority is per thread). Not the idle
/// scheduling class: a sweep holds a shard's lock for a chunk at a time, and a
/// thread that may wait indefinitely for the CPU must not hold a lock that the
/// request path waits on.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: plain system calls on the calling thread, no pointers involved.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 19) != 0 {
            debug!("could not lower the sweep thread's priority");
        }
    }
}

async fn admin_loop(listener: TcpListener, proxy: Arc<Proxy>) {
    // Off the request path: hyper's own timer bounds a request head's arrival.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.settings().admin.read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let proxy = proxy.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let client = ClientInfo::new(peer, "http");
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (proxy, client) = (proxy.clone(), client.clone());
                async move {
                    let path = req.uri().path();
                    let path = path.strip_prefix("/.lacquer").unwrap_or(path).to_string();
                    Ok::<_, Infallible>(proxy.admin(req, client, &path).await)
                }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Resolves once a stop is signalled (or the signal's sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
