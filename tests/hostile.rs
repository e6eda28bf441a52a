//! Hostile traffic (issue 14): one user's request must never decide what other
//! users get. Each test here failed on the code before its fix (the closing note
//! of the issue lists which); all run the real server on loopback against a real
//! origin.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The body of the origin's answer names what it saw of these request fields.
fn echo(fields: &'static [&'static str]) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |req: &Seen| {
        let seen: Vec<String> = fields
            .iter()
            .map(|f| format!("{f}={}", req.header(f).unwrap_or("-")))
            .collect();
        Reply::ok(seen.join(" ")).header("cache-control", "max-age=60")
    }
}

// 1. `Connection` options are removed before the key and the Vary variant are built.

#[tokio::test]
async fn a_connection_option_cannot_store_another_language_as_the_vary_variant() {
    let origin =
        Origin::start(|req| echo(&["accept-language"])(req).header("vary", "Accept-Language"))
            .await;
    let proxy = Proxy::start(&origin).await;
    let attack = raw(
        proxy.addr,
        b"GET /p HTTP/1.1\r\nHost: shop.example\r\nAccept-Language: fr\r\nConnection: accept-language, close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&attack), Some(200), "{attack}");
    assert!(attack.contains("accept-language=-"), "{attack}");
    let fr = proxy
        .get_with("/p", &[("host", "shop.example"), ("accept-language", "fr")])
        .await;
    assert_eq!(fr.text(), "accept-language=fr", "{}", fr.cache_status());
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_connection_option_cannot_remove_a_keyed_header_or_cookie() {
    let origin = Origin::start(echo(&["x-device", "cookie"])).await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.key.headers = vec!["X-Device".into()];
        c.key.cookies = vec!["segment".into()];
    })
    .await;
    for (field, value, wanted) in [
        ("x-device", "X-Device: mobile", "x-device=mobile cookie=-"),
        (
            "cookie",
            "Cookie: segment=vip",
            "x-device=- cookie=segment=vip",
        ),
    ] {
        let path = format!("/{field}");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: shop.example\r\n{value}\r\nConnection: {field}, close\r\n\r\n"
        );
        let attack = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(raw_status(&attack), Some(200), "{attack}");
        let (name, v) = value.split_once(": ").unwrap();
        let real = proxy
            .get_with(&path, &[("host", "shop.example"), (name, v)])
            .await;
        assert_eq!(real.text(), wanted, "{field}: {}", real.cache_status());
        assert!(!real.is_hit(), "{field}: stored under the keyed value");
    }
}

// 2. The origin is sent the query the key was built from.

#[tokio::test]
async fn dropped_query_parameters_never_reach_the_origin() {
    let origin = Origin::start(|req| {
        Reply::ok(format!("page for {}", req.uri)).header("cache-control", "max-age=60")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let poisoned = proxy
        .get("/landing?utm_source=%3Cscript%3Ealert(1)%3C/script%3E&short=1")
        .await;
    assert_eq!(poisoned.text(), "page for /landing?short=1");
    let clean = proxy.get("/landing?short=1").await;
    assert!(clean.is_hit());
    assert!(!clean.text().contains("script"), "{}", clean.text());
    // `;` cloaking: the origin gets exactly what is keyed.
    let cloaked = proxy
        .get("/jsonp?callback=cb&utm_content=x;callback=evil")
        .await;
    assert_eq!(cloaked.text(), "page for /jsonp?callback=cb");
    assert_eq!(
        origin
            .seen()
            .iter()
            .map(|s| s.uri.to_string())
            .collect::<Vec<_>>(),
        ["/landing?short=1", "/jsonp?callback=cb"]
    );
}

// 3. A host that is not a host name or address is refused.

#[tokio::test]
async fn a_host_with_a_path_cannot_collide_with_another_urls_key() {
    let origin = Origin::start(|req| {
        Reply::ok(format!("page {}", req.uri.path())).header("cache-control", "max-age=60")
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| c.origins[0].preserve_host = false).await;
    for bad in [
        "shop.example/a",
        "shop.example?x=",
        "user@shop.example",
        "shop.example:80x",
        "a b",
    ] {
        let request = format!("GET /b HTTP/1.1\r\nHost: {bad}\r\nConnection: close\r\n\r\n");
        let res = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(raw_status(&res), Some(400), "Host {bad:?}: {res}");
    }
    let ab = proxy.get_with("/a/b", &[("host", "shop.example")]).await;
    assert_eq!(ab.text(), "page /a/b");
    assert_eq!(origin.hits(), 1, "no refused request reached the origin");
}

#[tokio::test]
async fn userinfo_foreign_schemes_and_connect_are_refused() {
    let origin = Origin::start(|_| Reply::ok("x").header("cache-control", "max-age=60")).await;
    let proxy = Proxy::start(&origin).await;
    for (request, status) in [
        (
            "GET http://user:pw@shop.example/ HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET ftp://shop.example/ HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "CONNECT shop.example:443 HTTP/1.1\r\nHost: shop.example:443\r\nConnection: close\r\n\r\n",
            405,
        ),
        (
            "GET http://shop.example/ok HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
            200,
        ),
    ] {
        let res = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(raw_status(&res), Some(status), "{request:?}: {res}");
    }
    assert_eq!(origin.hits(), 1);
}

// 4. A coalesced revalidation whose 304 sets a cookie is the requester's alone.

#[tokio::test]
async fn a_304_with_set_cookie_never_reaches_the_waiting_clients() {
    let gate = gate();
    let n = Arc::new(AtomicUsize::new(0));
    let origin = {
        let (gate, n) = (gate.clone(), n.clone());
        Origin::start(move |req| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            if req.header("if-none-match").is_none() {
                return Reply::ok("v1")
                    .header("etag", "\"v1\"")
                    .header("cache-control", "max-age=0");
            }
            let reply = Reply::status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=60")
                .header("set-cookie", &format!("session=user{i}"));
            // The first revalidation waits until every client is queued behind it.
            if i == 1 {
                reply.gated(&gate)
            } else {
                reply
            }
        })
        .await
    };
    let proxy = Arc::new(Proxy::start(&origin).await);
    assert_eq!(proxy.get("/p").await.text(), "v1");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let p = proxy.clone();
            tokio::spawn(async move { p.get("/p").await })
        })
        .collect();
    let mut activity = proxy.running.proxy.flights().activity();
    tokio::time::timeout(
        Duration::from_secs(20),
        activity.wait_for(|a| a.waiters == 3),
    )
    .await
    .expect("three clients wait on the revalidation")
    .expect("activity channel");
    open(&gate);
    let mut cookies = Vec::new();
    for c in clients {
        let res = c.await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), "v1");
        let status = res.cache_status().to_string();
        assert!(!status.contains("stored"), "nothing was stored: {status}");
        assert!(
            !status.contains("ttl="),
            "no ttl for what was not stored: {status}"
        );
        cookies.extend(res.header("set-cookie").map(str::to_string));
    }
    // Each client has at most its own cookie: from its own trip to the origin.
    let mut unique = cookies.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        cookies.len(),
        "a cookie was shared: {cookies:?}"
    );
    assert_eq!(
        origin.hits(),
        5,
        "every client revalidated on its own behalf"
    );
    assert!(proxy.get("/p").await.cache_status().contains("fwd="));
}

// 5. A body too large to store is read from the origin at its client's pace.

const TOTAL: u64 = 128 * 1024 * 1024;

/// A client that has asked for a 128 MiB chunked body through a proxy whose
/// `max_object_size` is 1 MiB, and what its origin has produced so far.
struct BigBody {
    proxy: Proxy,
    client: TcpStream,
    produced: Arc<AtomicU64>,
    done_rx: tokio::sync::watch::Receiver<Streamed>,
}

async fn big_body() -> BigBody {
    let produced = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(Streamed::Going);
    let origin = streaming_origin(64 * 1024, TOTAL, produced.clone(), done_tx).await;
    let proxy = Proxy::start_url(&format!("http://{origin}"), |c| {
        c.cache.max_object_size = bytesize::ByteSize::mib(1);
    })
    .await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    BigBody {
        proxy,
        client,
        produced,
        done_rx,
    }
}

#[tokio::test]
async fn a_slow_client_holds_back_a_chunked_body_too_large_to_store() {
    let BigBody {
        proxy,
        mut client,
        produced,
        mut done_rx,
    } = big_body().await;
    // Read the head only, then stop reading.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let mut activity = proxy.running.proxy.flights().activity();
    tokio::select! {
        _ = done_rx.wait_for(|d| *d == Streamed::Whole) => {
            panic!("the proxy read the whole {TOTAL}-byte body for a client that reads nothing");
        }
        paused = activity.wait_for(|a| a.paused == 1) => { paused.unwrap(); }
    }
    // Kernel socket buffers on both sides, hyper's buffers and the stream window.
    let held_back = produced.load(Ordering::SeqCst);
    assert!(held_back < TOTAL / 2, "{held_back} bytes read ahead");
    // The client then reads everything, complete.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    let body = dechunk(&rest);
    assert_eq!(body.len() as u64, TOTAL);
    assert!(body.iter().all(|b| *b == b'x'));
    assert_eq!(proxy.running.proxy.flights().activity().borrow().paused, 0);
}

#[tokio::test]
async fn a_body_too_large_to_store_is_no_longer_read_once_its_client_leaves() {
    let BigBody {
        proxy: _proxy,
        mut client,
        produced,
        mut done_rx,
    } = big_body().await;
    // Read past max_object_size (the body is a stream by then), then leave.
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 4 * 1024 * 1024 {
        got += client.read(&mut buf).await.unwrap();
    }
    drop(client);
    let ended = tokio::time::timeout(
        Duration::from_secs(20),
        done_rx.wait_for(|d| *d != Streamed::Going),
    )
    .await
    .expect("the origin's body ended")
    .map(|d| *d)
    .unwrap();
    assert_eq!(
        ended,
        Streamed::Dropped,
        "the proxy read the rest for nobody"
    );
    assert!(produced.load(Ordering::SeqCst) < TOTAL);
}

/// How a [`streaming_origin`]'s body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Streamed {
    Going,
    /// Every byte was handed to the connection.
    Whole,
    /// The proxy dropped the body before its end.
    Dropped,
}

/// An origin that streams `total` bytes of `x` in chunks (no Content-Length),
/// counting what it has handed to its connection, and says how the body ended.
async fn streaming_origin(
    chunk: usize,
    total: u64,
    produced: Arc<AtomicU64>,
    done: tokio::sync::watch::Sender<Streamed>,
) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let done = Arc::new(done);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (produced, done) = (produced.clone(), done.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let (produced, done) = (produced.clone(), done.clone());
                    async move {
                        let (tx, rx) = tokio::sync::mpsc::channel::<
                            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
                        >(1);
                        tokio::spawn(async move {
                            let data = Bytes::from(vec![b'x'; chunk]);
                            let mut sent = 0;
                            while sent < total {
                                if tx
                                    .send(Ok(http_body::Frame::data(data.clone())))
                                    .await
                                    .is_err()
                                {
                                    done.send_replace(Streamed::Dropped);
                                    return;
                                }
                                sent += chunk as u64;
                                produced.store(sent, Ordering::SeqCst);
                            }
                            done.send_replace(Streamed::Whole);
                        });
                        let body = http_body_util::StreamBody::new(ReceiverStream(rx));
                        let mut res = http::Response::new(body);
                        res.headers_mut().insert(
                            "cache-control",
                            http::HeaderValue::from_static("max-age=60"),
                        );
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// The data of a chunked HTTP/1.1 body (without trailers).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

// Weaknesses.

#[tokio::test]
async fn content_length_goes_when_the_origin_sends_transfer_encoding_too() {
    for (length, body) in [("20abc", "hello"), ("3", "hello")] {
        let raw_response = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\nContent-Length: {length}\r\n\r\n5\r\n{body}\r\n0\r\n\r\n"
        );
        let origin = RawOrigin::start(raw_response).await;
        let proxy = Proxy::start_url(&origin.url(), |_| {}).await;
        let first = proxy.get("/te").await;
        assert_eq!(first.text(), "hello", "Content-Length {length}");
        let hit = proxy.get("/te").await;
        assert!(hit.is_hit(), "{}", hit.cache_status());
        assert_eq!(hit.text(), "hello", "Content-Length {length}");
        assert_eq!(hit.header("content-length"), Some("5"));
    }
}

#[tokio::test]
async fn unkeyed_forwarding_fields_and_their_underscore_spellings_never_reach_the_origin() {
    let origin = Origin::start(|_| Reply::ok("x").header("cache-control", "max-age=60")).await;
    let proxy = Proxy::start(&origin).await;
    let sent = [
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-uri", "/evil"),
        ("x-forwarded-path", "/evil"),
        ("x-forwarded-ssl", "on"),
        ("front-end-https", "on"),
        ("x-original-host", "evil.example"),
        ("x-url-scheme", "https"),
        ("x_forwarded_host", "evil.example"),
        ("x_forwarded_proto", "https"),
        ("x_forwarded_for", "10.9.9.9"),
        ("x_original_url", "/admin"),
        ("x-forwarded_prefix", "/evil"),
    ];
    proxy.get_with("/f", &sent).await;
    let seen = origin.last();
    for (name, _) in sent {
        assert_eq!(seen.header(name), None, "{name} reached the origin");
    }
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(&*proxy.addr.to_string())
    );
}

#[tokio::test]
async fn the_origin_gets_the_normalized_host_the_key_was_built_from() {
    let origin = Origin::start(|req| {
        Reply::ok(format!("host {}", req.header("host").unwrap_or("-")))
            .header("cache-control", "max-age=60")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let odd = proxy.get_with("/h", &[("host", "SHOP.Example.:80")]).await;
    assert_eq!(odd.text(), "host shop.example");
    assert_eq!(
        origin.last().header("x-forwarded-host"),
        Some("shop.example")
    );
    assert!(proxy
        .get_with("/h", &[("host", "shop.example")])
        .await
        .is_hit());
}

#[tokio::test]
async fn no_heuristic_freshness_for_requests_with_credentials_unless_configured() {
    let last_modified =
        httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(10 * 86_400));
    for allowed in [false, true] {
        let lm = last_modified.clone();
        let origin = Origin::start(move |req| {
            Reply::ok(format!(
                "page for {}",
                req.header("cookie").unwrap_or("nobody")
            ))
            .header("last-modified", &lm)
        })
        .await;
        let proxy = Proxy::start_with(&origin, |c| {
            c.cache.heuristic_with_credentials = allowed;
        })
        .await;
        let alice = proxy.get_with("/me", &[("cookie", "session=alice")]).await;
        assert_eq!(alice.text(), "page for session=alice");
        let bob = proxy.get_with("/me", &[("cookie", "session=bob")]).await;
        assert_eq!(bob.is_hit(), allowed, "{}", bob.cache_status());
        if !allowed {
            assert_eq!(bob.text(), "page for session=bob");
            assert!(alice.cache_status().contains("detail=credentials"));
        }
        // Explicit freshness always counts; no credentials, the heuristic applies.
        let anon = proxy.get("/anon").await;
        assert!(
            anon.cache_status().contains("stored"),
            "{}",
            anon.cache_status()
        );
    }
}

/// A hyper origin that counts the connections it accepts.
async fn counting_origin() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn origin_connections_are_not_reused_without_keepalive() {
    for keepalive in [true, false] {
        let (addr, connections) = counting_origin().await;
        let proxy = Proxy::start_url(&format!("http://{addr}"), |c| {
            c.origins[0].keepalive = keepalive;
        })
        .await;
        for i in 0..3 {
            assert_eq!(proxy.get(&format!("/{i}")).await.text(), "ok");
        }
        let expected = if keepalive { 1 } else { 3 };
        assert_eq!(
            connections.load(Ordering::SeqCst),
            expected,
            "keepalive {keepalive}"
        );
    }
}

#[tokio::test]
async fn the_admin_listener_and_purge_bodies_have_a_read_timeout() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin.read_timeout = Duration::from_millis(200);
        add_token(
            c,
            "ops",
            "s3cret-s3cret-s3cret",
            &[lacquer::config::Operation::Tag],
            &[],
            &[],
        );
    })
    .await;
    let admin = proxy.running.admin_addr.expect("admin listener");
    // A head that never ends: the proxy closes the connection (the read ends),
    // without a response.
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(b"GET /.lacquer/stats HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut partial = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut partial))
        .await
        .expect("the proxy closed the connection")
        .unwrap();
    let partial = String::from_utf8_lossy(&partial);
    assert_eq!(raw_status(&partial), None, "{partial}");
    // A purge body that never arrives: 408.
    let trickle = raw(
        admin,
        b"POST /.lacquer/purge HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret-s3cret-s3cret\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tags\":",
    )
    .await;
    assert_eq!(raw_status(&trickle), Some(408), "{trickle}");
}

/// An HTTP/2 connection (prior knowledge) to the proxy.
async fn h2_connection(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

/// An origin whose answers wait for `gate`, and that says when a request arrives.
async fn gated_origin(
    gate: &Arc<tokio::sync::Semaphore>,
) -> (Origin, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let gate = gate.clone();
    let origin = Origin::start(move |req| {
        let _ = tx.send(req.uri.path().to_string());
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .gated(&gate)
    })
    .await;
    (origin, arrivals)
}

/// Twenty GETs for distinct keys under `prefix` on one HTTP/2 connection whose
/// budget is four origin requests, against a gated origin: returns once sixteen
/// wait for the budget and four have reached the origin.
struct OverBudget {
    gate: Arc<tokio::sync::Semaphore>,
    origin: Origin,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<String>,
    proxy: Proxy,
    requests: Vec<tokio::task::JoinHandle<Option<Bytes>>>,
}

async fn twenty_on_a_budget_of_four(prefix: &'static str) -> OverBudget {
    let gate = gate();
    let (origin, mut arrivals) = gated_origin(&gate).await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.server.max_origin_requests_per_connection = 4;
    })
    .await;
    let send = h2_connection(proxy.addr).await;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let mut send = send.clone();
            tokio::spawn(async move {
                let req = http::Request::get(format!("http://shop.example/{prefix}{i}"))
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                let res = send.send_request(req).await.ok()?;
                let body = http_body_util::BodyExt::collect(res.into_body())
                    .await
                    .ok()?;
                Some(body.to_bytes())
            })
        })
        .collect();
    let mut waits = proxy.running.proxy.budget_waits();
    tokio::time::timeout(Duration::from_secs(20), waits.wait_for(|n| *n == 16))
        .await
        .expect("sixteen fetches wait for the connection's budget")
        .unwrap();
    for _ in 0..4 {
        arrivals.recv().await.unwrap();
    }
    OverBudget {
        gate,
        origin,
        arrivals,
        proxy,
        requests,
    }
}

#[tokio::test]
async fn one_connection_has_at_most_its_budget_of_origin_requests_in_flight() {
    let mut t = twenty_on_a_budget_of_four("k").await;
    assert!(
        t.arrivals.try_recv().is_err(),
        "a fifth request reached the origin"
    );
    open(&t.gate);
    for r in t.requests {
        assert_eq!(r.await.unwrap().as_deref(), Some(&b"x"[..]));
    }
    assert_eq!(t.origin.hits(), 20);
}

#[tokio::test]
async fn fetches_whose_streams_were_reset_before_they_were_sent_are_never_sent() {
    let t = twenty_on_a_budget_of_four("r").await;
    // The client resets every stream.
    for r in t.requests {
        r.abort();
        let _ = r.await;
    }
    open(&t.gate);
    let mut activity = t.proxy.running.proxy.flights().activity();
    tokio::time::timeout(
        Duration::from_secs(20),
        activity.wait_for(|a| a.flights == 0),
    )
    .await
    .expect("every flight ends")
    .unwrap();
    assert_eq!(
        t.origin.hits(),
        4,
        "only the fetches already sent went to the origin"
    );
    // The four that were sent still filled the cache.
    assert_eq!(t.proxy.store().len(), 4);
}

#[tokio::test]
async fn a_pass_through_request_whose_stream_was_reset_is_cancelled() {
    let gate = gate();
    let (tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let origin = {
        let gate = gate.clone();
        Origin::start(move |req| {
            let _ = tx.send(());
            let reply = Reply::ok(format!("{} {}", req.method, req.uri.path()));
            if req.method == "POST" {
                reply.gated(&gate)
            } else {
                reply
            }
        })
        .await
    };
    let proxy = Proxy::start_with(&origin, |c| {
        c.server.max_origin_requests_per_connection = 1;
    })
    .await;
    let send = h2_connection(proxy.addr).await;
    let upload = {
        let mut send = send.clone();
        tokio::spawn(async move {
            let req = http::Request::post("http://shop.example/slow")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let _ = send.send_request(req).await;
        })
    };
    // The POST is at the origin, holding the connection's one slot...
    arrivals.recv().await.unwrap();
    // (A second one waits for the slot; reset while waiting, it is counted out.)
    let queued = {
        let mut send = send.clone();
        tokio::spawn(async move {
            let req = http::Request::post("http://shop.example/queued")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let _ = send.send_request(req).await;
        })
    };
    let mut waits = proxy.running.proxy.budget_waits();
    tokio::time::timeout(Duration::from_secs(20), waits.wait_for(|n| *n == 1))
        .await
        .expect("the second POST waits for the slot")
        .unwrap();
    queued.abort();
    let _ = queued.await;
    tokio::time::timeout(Duration::from_secs(20), waits.wait_for(|n| *n == 0))
        .await
        .expect("a reset request no longer counts as waiting")
        .unwrap();
    // ...when its stream is reset: the proxy drops it, and the slot is free again.
    upload.abort();
    let _ = upload.await;
    let mut send = send.clone();
    let req = http::Request::get("http://shop.example/other")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(20), send.send_request(req))
        .await
        .expect("the reset request no longer holds the connection's origin slot")
        .unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "GET /other");
    open(&gate);
}

/// An origin that answers its first request on a connection, then writes an
/// unasked response on it and waits for the proxy to close the connection (it
/// says when).
async fn junk_origin(closed: Arc<tokio::sync::Notify>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_none() {
                    return;
                }
                let mut buf = [0u8; 4096];
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: no-store\r\n\r\nhello")
                    .await;
                // Later, on the idle connection: a response to no request.
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nCache-Control: max-age=60\r\n\r\nevil")
                    .await;
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                closed.notify_one();
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_origin_connection_that_became_readable_while_idle_is_closed_not_reused() {
    let closed = Arc::new(tokio::sync::Notify::new());
    let addr = junk_origin(closed.clone()).await;
    let proxy = Proxy::start_url(&format!("http://{addr}"), |_| {}).await;
    assert_eq!(proxy.get("/one").await.text(), "hello");
    // The proxy closes the connection the unasked bytes came on...
    closed.notified().await;
    // ...and the next request goes on a new one.
    assert_eq!(proxy.get("/two").await.text(), "hello");
    closed.notified().await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_its_first_request() {
    let origin = Origin::start(|_| Reply::ok("x").header("cache-control", "max-age=60")).await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.server.header_read_timeout = Duration::from_millis(400);
        c.server.h2_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://shop.example/x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    drop(res);
    // The proxy ends the connection (GOAWAY, then close): the client's side ends.
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the idle HTTP/2 connection was closed by the proxy")
        .unwrap()
        .unwrap();
}
