//! Desync and poisoning shapes known from other caches, sent on raw sockets to the
//! real server in front of a real origin that records every request it receives.
//! In each, a second request hides in the first one's body or framing; the origin
//! must never see it, and a later plain request must get the real content.

mod common;

use common::*;

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
    for s in seen.iter().filter(|s| s.uri.path() == "/form") {
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
