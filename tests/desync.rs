//! Desync and poisoning shapes known from other caches, sent on raw sockets to the
//! real server in front of a real origin that records every request it receives.
//! In each, a second request hides in the first one's body or framing; the origin
//! must never see it, and a later plain request must get the real content.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request every case tries to smuggle to the origin.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n";

async fn setup() -> (Origin, Proxy) {
    let origin = Origin::start(|req| {
        Reply::ok(format!("origin saw {} {}", req.method, req.uri.path()))
            .header("cache-control", "max-age=60")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    (origin, proxy)
}

/// Sends `request` raw; checks that no smuggled request reached the origin and
/// that the proxy still serves a plain request correctly. Returns the raw answer.
async fn attempt(request: &[u8]) -> (String, Vec<Seen>) {
    let (origin, proxy) = setup().await;
    let answer = raw(proxy.addr, request).await;
    let seen = origin.seen();
    assert!(
        seen.iter().all(|s| s.uri.path() != "/smuggled"),
        "smuggled through: {:?}",
        seen.iter().map(|s| s.uri.to_string()).collect::<Vec<_>>()
    );
    assert!(
        answer.matches("HTTP/1.1 ").count() <= 1,
        "more than one response to one request: {answer}"
    );
    let after = proxy.get_with("/after", &[("host", "shop.example")]).await;
    assert_eq!(after.text(), "origin saw GET /after");
    (answer, origin.seen())
}

#[tokio::test]
async fn content_length_named_in_connection_cannot_unframe_the_body() {
    // Varnish VSV00008: Content-Length made hop-by-hop, the body then read as a
    // request by the next hop.
    let request = format!(
        "POST /form HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {}\r\nConnection: content-length, close\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    let (answer, seen) = attempt(request.as_bytes()).await;
    assert_eq!(raw_status(&answer), Some(200), "{answer}");
    let post = seen
        .iter()
        .find(|s| s.uri.path() == "/form")
        .expect("POST forwarded");
    assert_eq!(
        post.body,
        SMUGGLED.as_bytes(),
        "the body arrived whole, as a body"
    );
}

#[tokio::test]
async fn a_chunk_without_its_crlf_is_refused() {
    // Varnish VSV00016 and its kind: chunk data not followed by CRLF.
    let request = format!(
        "POST /form HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n{SMUGGLED}"
    );
    let (answer, seen) = attempt(request.as_bytes()).await;
    assert_ne!(raw_status(&answer), Some(200), "{answer}");
    assert!(
        seen.iter()
            .all(|s| s.uri.path() != "/form" || s.body.len() <= 5),
        "a malformed chunked body was forwarded whole"
    );
}

#[tokio::test]
async fn bad_content_lengths_are_refused() {
    // Traffic Server CVE-2021-32565 and the classic CL.CL shapes.
    for length in ["+5", "5, 6", "0x5", "5 5", "-5", "5\r\nContent-Length: 6"] {
        let request = format!(
            "POST /form HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {length}\r\n\r\nhello{SMUGGLED}"
        );
        let (answer, seen) = attempt(request.as_bytes()).await;
        assert_eq!(
            raw_status(&answer),
            Some(400),
            "Content-Length {length:?}: {answer}"
        );
        assert!(
            seen.iter().all(|s| s.uri.path() != "/form"),
            "Content-Length {length:?} reached the origin"
        );
    }
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    // CL.TE / TE.CL: one hop reads one framing, the next the other.
    for head in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity",
    ] {
        let request = format!(
            "POST /form HTTP/1.1\r\nHost: shop.example\r\n{head}\r\nConnection: close\r\n\r\n0\r\n\r\n{SMUGGLED}"
        );
        attempt(request.as_bytes()).await;
    }
}

#[tokio::test]
async fn chunked_trailers_never_become_request_fields() {
    // Traffic Server CVE-2024-35161: trailers of a chunked request body.
    let request = format!(
        "POST /form HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Original-URL: /admin\r\nHost: evil.example\r\n\r\n{SMUGGLED}"
    );
    let (_, seen) = attempt(request.as_bytes()).await;
    let forms: Vec<&Seen> = seen.iter().filter(|s| s.uri.path() == "/form").collect();
    assert_eq!(
        forms.len(),
        1,
        "the POST is forwarded once, its trailers dropped"
    );
    for s in forms {
        assert_eq!(s.body, "hello");
        assert_eq!(s.header("x-original-url"), None);
        assert_ne!(s.header("host"), Some("evil.example"));
    }
}

#[tokio::test]
async fn a_request_header_error_is_never_stored_for_others() {
    // CPDoS: an oversized header, a meta character, a method override. Whatever
    // the error, the next plain request for the URL gets the real page.
    let huge = "x".repeat(40 * 1024);
    let cases: Vec<Vec<u8>> = vec![
        format!("GET /page HTTP/1.1\r\nHost: shop.example\r\nX-Oversized: {huge}\r\nConnection: close\r\n\r\n").into_bytes(),
        b"GET /page HTTP/1.1\r\nHost: shop.example\r\nX-Meta: a\x01b\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /page HTTP/1.1\r\nHost: shop.example\r\nX-HTTP-Method-Override: POST\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /page HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Path: /nothing\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    for request in cases {
        let (origin, proxy) = setup().await;
        let _ = raw(proxy.addr, &request).await;
        let page = proxy.get_with("/page", &[("host", "shop.example")]).await;
        assert_eq!(page.status, 200);
        assert_eq!(page.text(), "origin saw GET /page");
        for s in origin.seen() {
            assert_eq!(s.method, "GET", "a method override reached the origin");
            assert_eq!(s.header("x-http-method-override"), None);
        }
    }
}

#[tokio::test]
async fn a_pipelined_request_after_a_refused_one_is_not_served_as_its_answer() {
    // A request the proxy refuses closes the connection: what follows it on the
    // wire is never read as a request of its own.
    let request = format!("GET /b HTTP/1.1\r\nHost: shop.example/a\r\n\r\n{SMUGGLED}");
    let (answer, _) = attempt(request.as_bytes()).await;
    assert_eq!(raw_status(&answer), Some(400), "{answer}");
}

/// An origin on raw sockets that answers a `POST` at once, before reading its body
/// (as an origin refusing an upload does), and records, per connection, every byte
/// it receives after that answer. Any other request gets a plain 200.
struct EarlyOrigin {
    addr: std::net::SocketAddr,
    /// Bytes received after an early answer, per connection that gave one.
    after_early: Arc<Mutex<Vec<Vec<u8>>>>,
    early: Arc<tokio::sync::Notify>,
}

async fn early_origin() -> EarlyOrigin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let after_early = Arc::new(Mutex::new(Vec::new()));
    let early = Arc::new(tokio::sync::Notify::new());
    let (log, told) = (after_early.clone(), early.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (log, told) = (log.clone(), told.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut pending = Vec::new();
                loop {
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = pending.drain(..end + 4).collect::<Vec<u8>>();
                    if head.starts_with(b"POST") {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                            .await;
                        let i = {
                            let mut log = log.lock().unwrap();
                            log.push(std::mem::take(&mut pending));
                            log.len() - 1
                        };
                        told.notify_one();
                        // Whatever comes now is the unread body, or a request that
                        // should never have been sent on this connection.
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 {
                                return;
                            }
                            log.lock().unwrap()[i].extend_from_slice(&buf[..n]);
                        }
                        return;
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nCache-Control: no-store\r\n\r\nnext")
                        .await;
                }
            });
        }
    });
    EarlyOrigin {
        addr,
        after_early,
        early,
    }
}

#[tokio::test]
async fn an_origin_connection_still_owed_a_body_carries_no_other_request() {
    // Traffic Server CVE-2025-31699's shape: the origin answered before the request
    // body was all sent; the connection must not carry another client's request.
    let origin = early_origin().await;
    let proxy = Proxy::start_url(&format!("http://{}", origin.addr), |_| {}).await;
    let mut uploader = TcpStream::connect(proxy.addr).await.unwrap();
    uploader
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    origin.early.notified().await;
    for _ in 0..3 {
        let next = proxy.get_with("/next", &[("host", "shop.example")]).await;
        assert_eq!(next.text(), "next");
    }
    // The rest of the body, then the uploader's end of it.
    uploader.write_all(&[b'x'; 90]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = uploader.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    drop(uploader);
    drop(proxy);
    for bytes in origin.after_early.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains("GET /next"),
            "another request shared the connection: {text}"
        );
    }
}

/// A minimal HTTP/2 frame: 24-bit length, type, flags, stream id.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name" for each field.
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

#[tokio::test]
async fn an_http2_body_longer_than_its_content_length_never_reaches_the_origin() {
    // Varnish VSV00007: an HTTP/2 request whose DATA exceeds its content-length,
    // forwarded to an HTTP/1 origin, where the excess is read as a request.
    let (origin, proxy) = setup().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    let head = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "shop.example"),
        (":path", "/form"),
        ("content-length", "5"),
    ]);
    wire.extend(h2_frame(0x1, 0x4, 1, &head)); // HEADERS, END_HEADERS
    let data = format!("hello{SMUGGLED}");
    wire.extend(h2_frame(0x0, 0x1, 1, data.as_bytes())); // DATA, END_STREAM
    s.write_all(&wire).await.unwrap();
    // Read until the proxy resets the stream or answers it (or closes).
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let done = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            // A RST_STREAM (type 3) or a HEADERS (type 1) frame for stream 1.
            let mut at = 0;
            let mut seen = false;
            while at + 9 <= got.len() {
                let len = (usize::from(got[at]) << 16)
                    | (usize::from(got[at + 1]) << 8)
                    | usize::from(got[at + 2]);
                let (kind, stream) = (
                    got[at + 3],
                    u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]])
                        & 0x7fff_ffff,
                );
                if stream == 1 && (kind == 3 || kind == 1) || kind == 7 {
                    seen = true;
                }
                at += 9 + len;
            }
            if seen {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), done)
        .await
        .expect("the proxy answered or reset the stream");
    for seen in origin.seen() {
        assert_ne!(seen.uri.path(), "/smuggled", "smuggled through HTTP/2");
        assert!(
            seen.body.len() <= 5,
            "the origin got {} body bytes for content-length 5",
            seen.body.len()
        );
    }
    let after = proxy.get_with("/after", &[("host", "shop.example")]).await;
    assert_eq!(after.text(), "origin saw GET /after");
}
