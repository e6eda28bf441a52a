//! Test harness: a real origin (a hyper server on 127.0.0.1:0 whose answers the
//! test declares) and the real proxy in front of it, in three lines:
//!
//! ```ignore
//! let origin = Origin::start(|_req| Reply::ok("hello").header("cache-control", "max-age=60")).await;
//! let proxy = Proxy::start(&origin).await;
//! let res = proxy.get("/x").await;
//! ```
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use lacquer::config::{ConfigFile, OriginSection, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: http::Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the origin answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    /// Wait this long before sending the response head.
    pub delay: Option<Duration>,
    /// Never answer (for timeout tests).
    pub hang: bool,
    /// Send the body in these chunks, waiting for `release` before the last one.
    pub hold_last_chunk: Option<Arc<Notify>>,
    /// Wait for a permit of this gate before answering (the test opens it).
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Wait at this barrier before answering (proves requests are concurrent).
    pub barrier: Option<Arc<tokio::sync::Barrier>>,
}

/// A closed gate for [`Reply::gated`]; `open(&gate)` lets every waiting reply go.
pub fn gate() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(0))
}

pub fn open(gate: &tokio::sync::Semaphore) {
    gate.add_permits(1_000_000);
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply::status(200).body(body)
    }
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: None,
            hang: false,
            hold_last_chunk: None,
            gate: None,
            barrier: None,
        }
    }
    /// Answer only once `gate` is opened.
    pub fn gated(mut self, gate: &Arc<tokio::sync::Semaphore>) -> Reply {
        self.gate = Some(gate.clone());
        self
    }
    /// Answer only once `barrier`'s other parties have arrived too.
    pub fn after_barrier(mut self, barrier: &Arc<tokio::sync::Barrier>) -> Reply {
        self.barrier = Some(barrier.clone());
        self
    }
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
        self
    }
    /// A header value with arbitrary bytes (malformed-input tests).
    pub fn raw_header(mut self, name: &str, value: &[u8]) -> Reply {
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = Some(d);
        self
    }
    pub fn hang() -> Reply {
        Reply {
            hang: true,
            ..Reply::status(200)
        }
    }
    /// Sends the first half of the body at once and the rest only after `release`
    /// is notified (sets [`Reply::hold_last_chunk`]).
    pub fn hold_second_half(mut self, release: Arc<Notify>) -> Reply {
        self.hold_last_chunk = Some(release);
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A counting origin on 127.0.0.1:0.
pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
        self.shutdown.send_replace(true);
    }
}

impl Origin {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        Origin::serve(listener, Arc::new(handler))
    }

    fn serve(listener: TcpListener, handler: Arc<Handler>) -> Origin {
        let addr = listener.local_addr().expect("origin addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s) = (hits.clone(), seen.clone());
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, hits, seen) = (handler.clone(), h.clone(), s.clone());
                let mut down = shutdown_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (handler, hits, seen) = (handler.clone(), hits.clone(), seen.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let req = Seen {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            hits.fetch_add(1, Ordering::SeqCst);
                            seen.lock().unwrap().push(req.clone());
                            let reply = handler(&req);
                            if reply.hang {
                                std::future::pending::<()>().await;
                            }
                            if let Some(g) = &reply.gate {
                                let _ = g.acquire().await.map(|p| p.forget());
                            }
                            if let Some(b) = &reply.barrier {
                                b.wait().await;
                            }
                            if let Some(d) = reply.delay {
                                tokio::time::sleep(d).await;
                            }
                            Ok::<_, Infallible>(build(reply))
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    // `shutdown()` drops every open connection, not just the listener.
                    tokio::select! {
                        _ = conn => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        Origin {
            addr,
            hits,
            seen,
            task,
            shutdown,
        }
    }

    /// Really goes away: the listener closes (connections are refused) and every
    /// open connection is dropped. Returns once the port refuses connections.
    pub async fn shutdown(&self) {
        self.task.abort();
        self.shutdown.send_replace(true);
        for _ in 0..1000 {
            if TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("origin port still accepting after shutdown");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests the origin received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the origin saw no request")
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn build(reply: Reply) -> Response<lacquer::body::Body> {
    let body = match reply.hold_last_chunk {
        None => lacquer::body::full(reply.body),
        Some(release) => {
            // First half now, the rest after `release` is notified.
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(4);
            let half = reply.body.len() / 2;
            let (a, b) = (reply.body.slice(..half), reply.body.slice(half..));
            tokio::spawn(async move {
                let _ = tx.send(Ok(http_body::Frame::data(a))).await;
                release.notified().await;
                let _ = tx.send(Ok(http_body::Frame::data(b))).await;
            });
            lacquer::body::boxed(http_body_util::StreamBody::new(ReceiverStream(rx)))
        }
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(reply.status).expect("valid status");
    for (name, value) in reply.headers {
        res.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_bytes(&value).expect("header value"),
        );
    }
    res
}

/// A minimal `Stream` over a tokio receiver (avoids a dependency on tokio-stream).
pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Res {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Res {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
    /// Checks `Cache-Status` against `prefix` followed by `ttl=N`, where N may be one
    /// less than `ttl`: ages have one-second resolution, and the origin's `Date`
    /// can make a fresh response up to a second old.
    pub fn assert_cache_status(&self, prefix: &str, ttl: i64) {
        let cs = self.cache_status();
        let rest = cs.strip_prefix(prefix).and_then(|r| r.strip_prefix("ttl="));
        let got: Option<i64> = rest.and_then(|t| t.parse().ok());
        assert!(
            matches!(got, Some(n) if n == ttl || n == ttl - 1),
            "Cache-Status {cs:?}, want {prefix}ttl={ttl}"
        );
    }

    /// The `ttl` parameter of our `Cache-Status` member.
    pub fn ttl(&self) -> Option<i64> {
        self.cache_status()
            .rsplit("ttl=")
            .next()?
            .split(';')
            .next()?
            .trim()
            .parse()
            .ok()
    }

    pub fn is_hit(&self) -> bool {
        self.cache_status().contains("lacquer; hit")
    }
    pub fn age(&self) -> Option<u64> {
        self.header("age").and_then(|a| a.parse().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The real proxy on 127.0.0.1:0, with a client.
pub struct Proxy {
    pub running: lacquer::server::Running,
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Proxy {
    pub async fn start(origin: &Origin) -> Proxy {
        Proxy::start_with(origin, |_| {}).await
    }

    /// Starts the proxy with the default config for `origin`, adjusted by `tweak`.
    pub async fn start_with(origin: &Origin, tweak: impl FnOnce(&mut ConfigFile)) -> Proxy {
        Proxy::start_url(&origin.url(), tweak).await
    }

    pub async fn start_url(url: &str, tweak: impl FnOnce(&mut ConfigFile)) -> Proxy {
        let mut file = ConfigFile::default();
        file.server.listen = "127.0.0.1:0".parse().unwrap();
        file.origins.push(OriginSection {
            url: url.to_string(),
            ..OriginSection::default()
        });
        tweak(&mut file);
        let settings = Settings::from_file(file).expect("valid test config");
        let running = lacquer::server::start(settings).await.expect("start proxy");
        let addr = running.addr;
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Proxy {
            running,
            addr,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> Res {
        self.send(Request::get(self.url(path)).body(Full::default()).unwrap())
            .await
    }

    /// GET with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Res {
        let mut req = Request::get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(Full::default()).unwrap()).await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Res {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(
            req.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
                .unwrap(),
        )
        .await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Res {
        let res = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("proxy answered within 30 s")
            .expect("request to proxy");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Res {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    /// Like [`Proxy::send`], but a failed request or a broken response body is an
    /// `Err` (with the error text) instead of a panic. Still bounded: 30 s.
    pub async fn try_send(&self, req: Request<Full<Bytes>>) -> Result<Res, String> {
        let exchange = async {
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = res.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body: {e:?}"))?
                .to_bytes();
            Ok(Res {
                status: parts.status.as_u16(),
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("proxy answered (or failed) within 30 s")
    }

    /// `try_send` of a plain GET.
    pub async fn try_get(&self, path: &str) -> Result<Res, String> {
        self.try_send(Request::get(self.url(path)).body(Full::default()).unwrap())
            .await
    }

    pub fn store(&self) -> &lacquer::store::Store {
        self.running.proxy.store()
    }
}

/// Sends raw bytes to `addr` and reads until the server closes the connection
/// (or 10 s pass, so a broken server fails the test instead of hanging it).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in raw HTTP/1 text (`HTTP/1.1 400 ...`).
pub fn raw_status(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// A loopback address where nothing listens: a port that was just free. (The
/// kernel does not hand it out again right away; good enough for a test.)
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// Reads from `stream` until a request head has arrived (what came with it
/// included); `None` if the peer closed first.
pub async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// An origin that speaks broken HTTP: for every connection it reads the request
/// head, writes `response` verbatim, closes its sending side and waits for the
/// peer to close. Counts accepted connections.
pub struct RawOrigin {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawOrigin {
    pub async fn start(response: impl Into<Bytes>) -> RawOrigin {
        let response: Bytes = response.into();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw origin");
        let addr = listener.local_addr().expect("raw origin addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    if read_head(&mut stream).await.is_none() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                    // Drain until the peer closes, so closing never turns into a reset
                    // that could destroy the bytes just written.
                    let _ = tokio::time::timeout(Duration::from_secs(10), async {
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                });
            }
        });
        RawOrigin {
            addr,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Panics seen per thread name, recorded by a hook that [`watch_panics`] installs
/// (and that then calls the default hook). A `#[tokio::test]` runs the proxy's
/// tasks on the test's own thread, so a panic inside a spawned proxy task, which
/// tokio would swallow, is counted under the test's name.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn watch_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if let Ok(mut panics) = PANICS.lock() {
                panics.push(name);
            }
            default(info);
        }));
    });
}

/// Panics recorded on the current thread since [`watch_panics`] was called.
pub fn panics_on_this_thread() -> usize {
    let name = std::thread::current().name().unwrap_or("").to_string();
    PANICS
        .lock()
        .map(|p| p.iter().filter(|n| **n == name).count())
        .unwrap_or(0)
}

/// Adds a token to the config, its secret in a fresh temp file (never in the config).
pub fn add_token(
    cfg: &mut ConfigFile,
    name: &str,
    secret: &str,
    operations: &[lacquer::config::Operation],
    tags: &[&str],
    hosts: &[&str],
) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("lacquer-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("t{}", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&path, format!("{secret}\n")).expect("write token file");
    cfg.admin.tokens.push(lacquer::config::TokenSection {
        name: name.into(),
        env: None,
        file: Some(path.display().to_string()),
        operations: operations.to_vec(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    });
}

impl Proxy {
    /// POSTs a purge (JSON text) to the admin API on the client listener.
    pub async fn purge(&self, token: Option<&str>, json: &str) -> Res {
        let mut req =
            Request::post(self.url("/.lacquer/purge")).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.send(
            req.body(Full::new(Bytes::copy_from_slice(json.as_bytes())))
                .unwrap(),
        )
        .await
    }

    /// Runs the background sweep now (tests check the memory it reclaims).
    pub fn sweep(&self) -> usize {
        self.store().sweep()
    }
}
