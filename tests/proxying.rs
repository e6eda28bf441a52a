//! Proxy behaviour of the whole stack (RFC 9110 §7.6 and the origin client): a
//! real origin, the real proxy, real HTTP on loopback. Each test states the
//! origin's answer next to what the client and the origin must see.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::time::timeout;

use common::{Origin, Proxy, Reply};

/// Bound on every wait for an event, so a broken proxy fails a test instead of
/// hanging it.
const WAIT: Duration = Duration::from_secs(10);

/// Every value of a (possibly repeated) header, in order.
fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

#[tokio::test]
async fn hop_by_hop_fields_are_removed_both_ways_end_to_end_fields_pass() {
    // The origin's response carries hop-by-hop fields, one of them named only by
    // its Connection header, next to ordinary end-to-end fields.
    let origin = Origin::start(|_| {
        Reply::ok("body")
            .header("cache-control", "max-age=60")
            .header("connection", "X-Origin-Secret")
            .header("x-origin-secret", "origin-internal")
            .header("keep-alive", "timeout=5, max=100")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("upgrade", "h2c")
            .header("x-served-by", "origin-1")
            .header("content-language", "de")
            .header("etag", "\"v1\"")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let client_headers = [
        ("connection", "keep-alive, X-Client-Secret"),
        ("x-client-secret", "client-internal"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("upgrade", "websocket"),
        ("x-request-id", "r-1"),
        ("accept-language", "de, en;q=0.5"),
        ("user-agent", "proxying-test/1.0"),
    ];
    let miss = proxy.get_with("/h", &client_headers).await;

    // Request side: the origin saw none of the hop-by-hop fields.
    let seen = origin.last();
    for name in HOP_BY_HOP.iter().chain(&["x-client-secret"]) {
        assert_eq!(
            seen.headers.get(*name),
            None,
            "{name} reached the origin: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-request-id"), Some("r-1"));
    assert_eq!(seen.header("accept-language"), Some("de, en;q=0.5"));
    assert_eq!(seen.header("user-agent"), Some("proxying-test/1.0"));

    // Response side, on the miss and on the hit.
    let hit = proxy.get_with("/h", &client_headers).await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(origin.hits(), 1);
    for (label, res) in [("miss", &miss), ("hit", &hit)] {
        assert_eq!(res.status, 200, "{label}");
        assert_eq!(res.text(), "body", "{label}");
        for name in HOP_BY_HOP.iter().chain(&["x-origin-secret"]) {
            assert_eq!(
                res.headers.get(*name),
                None,
                "{label}: {name} reached the client: {:?}",
                res.headers
            );
        }
        assert_eq!(res.header("x-served-by"), Some("origin-1"), "{label}");
        assert_eq!(res.header("content-language"), Some("de"), "{label}");
        assert_eq!(res.header("etag"), Some("\"v1\""), "{label}");
        assert_eq!(res.header("cache-control"), Some("max-age=60"), "{label}");
    }
}

#[tokio::test]
async fn via_and_x_forwarded_fields() {
    let origin = Origin::start(|_| {
        Reply::ok("v")
            .header("cache-control", "max-age=60")
            .header("via", "1.1 origin-shield")
    })
    .await;
    let proxy = Proxy::start(&origin).await;

    // A client behind another proxy, trying to spoof Proto and Host.
    let miss = proxy
        .get_with(
            "/v",
            &[
                ("host", "shop.example"),
                ("via", "1.0 corp-proxy"),
                ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
            ],
        )
        .await;
    let seen = origin.last();
    assert_eq!(all(&seen.headers, "via"), ["1.0 corp-proxy", "1.1 lacquer"]);
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example"));
    assert_eq!(
        all(&miss.headers, "via"),
        ["1.1 origin-shield", "1.1 lacquer"]
    );
    // A hit carries our Via once, after the stored one.
    let hit = proxy.get_with("/v", &[("host", "shop.example")]).await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(
        all(&hit.headers, "via"),
        ["1.1 origin-shield", "1.1 lacquer"]
    );

    // A direct client: X-Forwarded-For starts with it; X-Forwarded-Host is the
    // Host it sent (the client library sends the proxy's address).
    proxy.get("/direct").await;
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(proxy.addr.to_string().as_str())
    );
    assert_eq!(all(&seen.headers, "via"), ["1.1 lacquer"]);

    // An existing chain split over two field lines is one list (RFC 9110 §5.3):
    // nothing of it is lost.
    proxy
        .get_with(
            "/chain",
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ],
        )
        .await;
    assert_eq!(
        all(&origin.last().headers, "x-forwarded-for"),
        ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]
    );
}

#[tokio::test]
async fn host_is_preserved_unless_configured_otherwise() {
    let origin = Origin::start(|_| Reply::ok("h")).await;
    let preserving = Proxy::start(&origin).await;
    preserving.get_with("/", &[("host", "shop.example")]).await;
    assert_eq!(origin.last().header("host"), Some("shop.example"));

    let rewriting = Proxy::start_with(&origin, |c| c.origins[0].preserve_host = false).await;
    rewriting.get_with("/", &[("host", "shop.example")]).await;
    let seen = origin.last();
    assert_eq!(
        seen.header("host"),
        Some(origin.addr.to_string().as_str()),
        "the origin's own authority"
    );
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("shop.example"),
        "the client's Host is still passed on"
    );
}

#[tokio::test]
async fn a_base_path_prefixes_the_forwarded_path() {
    let origin = Origin::start(|req| Reply::ok(req.uri.to_string())).await;
    for base in ["/base", "/base/"] {
        let proxy = Proxy::start_url(&format!("{}{base}", origin.url()), |_| {}).await;
        let res = proxy.get("/x/y?q=1&r=%20").await;
        assert_eq!(res.text(), "/base/x/y?q=1&r=%20", "base {base}");
        let res = proxy.get("/").await;
        assert_eq!(res.text(), "/base/", "base {base}");
        let res = proxy.request("POST", "/submit", &[], "data").await;
        assert_eq!(res.text(), "/base/submit", "base {base}");
    }
}

#[tokio::test]
async fn an_origin_that_refuses_connections_is_a_502() {
    let addr = common::closed_port();
    let proxy = Proxy::start_url(&format!("http://{addr}"), |_| {}).await;
    for _ in 0..2 {
        let res = proxy.get("/").await;
        assert_eq!(res.status, 502);
        assert!(
            res.header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "{:?}",
            res.headers
        );
        assert!(res.body.len() < 200, "short body: {:?}", res.text());
        assert!(res.text().starts_with("502"), "{:?}", res.text());
        assert_eq!(
            res.cache_status(),
            "lacquer; fwd=uri-miss; detail=origin-unreachable",
            "an error is never stored: the second try is a miss again"
        );
    }
    let post = proxy.request("POST", "/p", &[], "x").await;
    assert_eq!(post.status, 502);
    assert_eq!(
        post.cache_status(),
        "lacquer; fwd=method; detail=origin-unreachable"
    );
}

#[tokio::test]
async fn an_origin_that_never_answers_is_a_504() {
    let origin = Origin::start(|req| {
        if req.uri.path() == "/slow" {
            Reply::hang()
        } else {
            Reply::ok("fine")
        }
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.origins[0].first_byte_timeout = Duration::from_millis(300);
        // The deadline of an origin request is connect + first byte: keep it short.
        c.origins[0].connect_timeout = Duration::from_millis(500);
    })
    .await;
    let res = proxy.get("/slow").await;
    assert_eq!(res.status, 504);
    assert_eq!(
        res.cache_status(),
        "lacquer; fwd=uri-miss; detail=first-byte-timeout"
    );
    assert!(res.body.len() < 200, "{:?}", res.text());
    let post = proxy.request("POST", "/slow", &[], "x").await;
    assert_eq!(post.status, 504);
    assert!(post.cache_status().contains("detail=first-byte-timeout"));
    // The origin got both requests; the proxy goes on serving.
    assert_eq!(origin.hits(), 2);
    assert_eq!(proxy.get("/fast").await.text(), "fine");
}

#[tokio::test]
async fn a_connect_timeout_is_a_504() {
    // A listener with a backlog of 0 that never accepts: once its accept queue
    // is full, Linux drops further SYNs, so a connect neither succeeds nor fails.
    // Fill the queue, and prove it is full: a probe connect must not complete.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    let mut full = false;
    for _ in 0..64 {
        match timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connect to the full listener failed outright: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    if !full {
        // Not Linux-like (SYNs are answered even with a full queue): nothing to test.
        eprintln!("skipped: this kernel completes connects to a full accept queue");
        return;
    }
    let proxy = Proxy::start_url(&format!("http://{addr}"), |c| {
        c.origins[0].connect_timeout = Duration::from_millis(300);
        c.origins[0].first_byte_timeout = Duration::from_secs(20);
    })
    .await;
    let res = proxy.get("/").await;
    assert_eq!(res.status, 504, "{}", res.text());
    assert_eq!(
        res.cache_status(),
        "lacquer; fwd=uri-miss; detail=connect-timeout"
    );
    drop((queued, listener));
}

/// Reads from `stream` until the response head and `body_bytes` of body are in.
async fn read_head_and_some_body(stream: &mut TcpStream, body_bytes: usize) -> String {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    timeout(WAIT, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                if got.len() >= end + 4 + body_bytes {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "connection closed early: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("head and some body within the wait");
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    String::from_utf8_lossy(&got[..end]).into_owned()
}

#[tokio::test]
async fn a_client_leaving_mid_response_breaks_nothing() {
    let big: Bytes = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let b = big.clone();
    let origin = Origin::start(move |req| {
        let cc = if req.uri.path() == "/cacheable" {
            "max-age=60"
        } else {
            "no-store"
        };
        Reply::ok(b.clone()).header("cache-control", cc)
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    for path in ["/cacheable", "/uncacheable"] {
        let hits_before = origin.hits();
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = read_head_and_some_body(&mut stream, 64 * 1024).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Gone with most of the body unread (the kernel answers with a reset).
        drop(stream);

        // The next client gets the whole, correct body: stored by the first
        // fetch (which goes on without its client) or fetched again.
        let res = proxy.get(path).await;
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.body.len(), big.len(), "{path}");
        assert!(res.body == big, "{path}: body differs");
        let fetches = origin.hits() - hits_before;
        if res.is_hit() {
            assert_eq!(fetches, 1, "{path}");
        } else {
            assert_eq!(fetches, 2, "{path}");
        }
        if path == "/uncacheable" {
            assert!(!res.is_hit());
        }
    }
    // And the proxy goes on serving.
    assert_eq!(proxy.get("/cacheable").await.body.len(), big.len());
}

fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

#[tokio::test]
async fn http2_clients_miss_then_hit() {
    let origin = Origin::start(|req| {
        Reply::ok(format!(
            "h2 {} {}",
            req.method,
            String::from_utf8_lossy(&req.body)
        ))
        .header("cache-control", "max-age=60")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let client = h2_client();
    let send = |req: Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let res = timeout(WAIT, client.request(req))
                .await
                .expect("answer within the wait")
                .expect("h2 request");
            let version = res.version();
            let (parts, body) = res.into_parts();
            let body = body.collect().await.expect("h2 body").to_bytes();
            (version, parts, body)
        }
    };
    let get = || {
        Request::get(proxy.url("/two"))
            .body(Full::default())
            .unwrap()
    };

    let (version, miss, body) = send(get()).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(miss.status, 200);
    assert_eq!(body, "h2 GET ");
    // ttl=60, or 59 when the origin's Date (one-second resolution) makes it a second old.
    let cs = miss.headers["cache-status"].to_str().unwrap();
    assert!(
        cs == "lacquer; fwd=uri-miss; fwd-status=200; stored; ttl=60"
            || cs == "lacquer; fwd=uri-miss; fwd-status=200; stored; ttl=59",
        "{cs}"
    );
    // The origin hop is HTTP/1.1; Via records that the client spoke HTTP/2.
    let seen = origin.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.header("via"), Some("2 lacquer"));
    assert_eq!(seen.header("host"), Some(proxy.addr.to_string().as_str()));

    let (version, hit, body) = send(get()).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(body, "h2 GET ");
    assert!(
        hit.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("lacquer; hit"),
        "{:?}",
        hit.headers
    );
    // One-second resolution: 0, or 1 across a second boundary.
    assert!(
        hit.headers["age"] == "0" || hit.headers["age"] == "1",
        "{:?}",
        hit.headers["age"]
    );
    assert_eq!(origin.hits(), 1);
    // HTTP/1.1 clients share the entry.
    assert!(proxy.get("/two").await.is_hit());

    // A request body over HTTP/2.
    let post = Request::post(proxy.url("/two"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (_, res, body) = send(post).await;
    assert_eq!(res.status, 200);
    assert_eq!(body, "h2 POST payload");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn request_bodies_are_forwarded() {
    let origin = Origin::start(|req| {
        Reply::ok(format!(
            "{} {} {}",
            req.method,
            req.header("content-type").unwrap_or("-"),
            req.body.len()
        ))
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let res = proxy
        .request(
            "POST",
            "/form",
            &[("content-type", "application/x-www-form-urlencoded")],
            "a=1&b=2",
        )
        .await;
    assert_eq!(res.text(), "POST application/x-www-form-urlencoded 7");
    assert_eq!(origin.last().body, "a=1&b=2");
    assert!(res.cache_status().contains("fwd=method"));
    // A large body arrives whole.
    let big = "x".repeat(3 * 1024 * 1024 + 7);
    let res = proxy.request("PUT", "/upload", &[], &big).await;
    assert_eq!(res.text(), format!("PUT - {}", big.len()));
    assert_eq!(origin.last().body, big.as_bytes());
}

type ChunkTx = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;
type StreamedBody = StreamBody<common::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

#[tokio::test]
async fn request_bodies_are_streamed_to_the_origin() {
    // An origin of its own: it reports the first piece of the request body as
    // soon as it has it, then reads the rest.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let (first_tx, first_rx) = oneshot::channel::<Bytes>();
    let first_tx = Arc::new(Mutex::new(Some(first_tx)));
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let first_tx = first_tx.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let first_tx = first_tx.clone();
                async move {
                    let mut body = req.into_body();
                    let first = loop {
                        match body.frame().await {
                            Some(Ok(f)) => match f.into_data() {
                                Ok(d) if !d.is_empty() => break d,
                                _ => continue,
                            },
                            _ => break Bytes::new(),
                        }
                    };
                    if let Some(tx) = first_tx.lock().unwrap().take() {
                        let _ = tx.send(first.clone());
                    }
                    let rest = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "{}|{}",
                        String::from_utf8_lossy(&first),
                        String::from_utf8_lossy(&rest)
                    )))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    let proxy = Proxy::start_url(&format!("http://{origin_addr}"), |_| {}).await;

    let (tx, rx): (ChunkTx, _) = tokio::sync::mpsc::channel(4);
    let client =
        Client::builder(TokioExecutor::new()).build::<_, StreamedBody>(HttpConnector::new());
    let req = Request::post(proxy.url("/upload"))
        .body(StreamBody::new(common::ReceiverStream(rx)))
        .unwrap();
    let pending = tokio::spawn(async move { client.request(req).await });
    tx.send(Ok(Frame::data(Bytes::from_static(b"first-part"))))
        .await
        .unwrap();
    // The origin has the first part while the client still holds the rest.
    let first = timeout(WAIT, first_rx)
        .await
        .expect("the first part reached the origin before the body was complete")
        .unwrap();
    assert_eq!(first, "first-part");
    tx.send(Ok(Frame::data(Bytes::from_static(b"second-part"))))
        .await
        .unwrap();
    drop(tx);
    let res = timeout(WAIT, pending)
        .await
        .expect("answer within the wait")
        .unwrap()
        .expect("response");
    assert_eq!(res.status(), 200);
    let body = timeout(WAIT, res.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(body, "first-part|second-part");
    server.abort();
}

#[tokio::test]
async fn uncacheable_response_bodies_are_streamed_to_the_client() {
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let origin = Origin::start(move |req| {
        let cc = if req.method == http::Method::GET {
            "no-store"
        } else {
            "max-age=60"
        };
        Reply::ok("first-half|second-half")
            .header("cache-control", cc)
            .hold_second_half(r.clone())
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let client =
        Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(HttpConnector::new());
    // An uncacheable GET (no-store) and a pass-through POST.
    for (method, outcome) in [
        ("GET", "fwd=uri-miss; fwd-status=200; detail=no-store"),
        ("POST", "fwd=method; fwd-status=200"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(proxy.url("/stream"))
            .body(match method {
                "GET" => Full::default(),
                _ => Full::new(Bytes::from_static(b"in")),
            })
            .unwrap();
        let res = timeout(WAIT, client.request(req))
            .await
            .expect("head within the wait")
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["cache-status"]
                .to_str()
                .unwrap()
                .contains(outcome),
            "{method}: {:?}",
            res.headers()
        );
        let mut body = res.into_body();
        // The first half arrives while the origin still holds the second.
        let mut got = Vec::new();
        while got.len() < "first-half|".len() {
            let frame = timeout(WAIT, body.frame())
                .await
                .expect("first half within the wait")
                .expect("a frame")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(got, b"first-half|", "{method}");
        release.notify_one();
        let rest = timeout(WAIT, body.collect())
            .await
            .expect("rest within the wait")
            .unwrap()
            .to_bytes();
        assert_eq!(rest, "second-half", "{method}");
    }
    assert_eq!(origin.hits(), 2);
}
