//! Bad input from both sides: malformed, oversized and slow clients; malformed
//! and broken origins. The real proxy on loopback each time; the rule is the
//! same throughout: a sane answer (or a closed connection), no panic, nothing
//! wrong stored, and the proxy goes on serving.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use common::{raw, raw_status, Origin, Proxy, RawOrigin, Reply};

/// Bound on every wait for an event, so a broken proxy fails a test instead of
/// hanging it.
const WAIT: Duration = Duration::from_secs(10);

async fn still_serves(proxy: &Proxy) {
    let res = proxy.get("/still-serving").await;
    assert_eq!(res.status, 200, "the proxy stopped serving: {res:?}");
}

#[tokio::test]
async fn malformed_requests_get_a_400_and_the_proxy_keeps_serving() {
    let origin = Origin::start(|_| Reply::ok("fine")).await;
    let proxy = Proxy::start(&origin).await;
    let cases: [&[u8]; 8] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ];
    for request in cases {
        let answer = raw(proxy.addr, request).await;
        assert_eq!(
            raw_status(&answer),
            Some(400),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(origin.hits(), 0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn http11_requests_need_exactly_one_host() {
    // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without
    // Host or with more than one Host line.
    let origin =
        Origin::start(|req| Reply::ok(req.header("host").unwrap_or("-").to_string())).await;
    let proxy = Proxy::start(&origin).await;
    for request in [
        &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(proxy.addr, request).await;
        assert_eq!(
            raw_status(&answer),
            Some(400),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(origin.hits(), 0);
    // HTTP/1.0 has no such rule; an absolute-form target carries its authority.
    let answer = raw(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw_status(&answer), Some(200), "{answer:?}");
    let answer = raw(
        proxy.addr,
        b"GET http://shop.example/abs HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), Some(200), "{answer:?}");
    assert!(answer.ends_with("shop.example"), "{answer:?}");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn oversized_heads_get_431_and_long_uris_414_before_the_origin() {
    let origin = Origin::start(|req| Reply::ok(req.uri.path().len().to_string())).await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.server.max_header_bytes = bytesize::ByteSize::kib(4);
        c.server.max_uri_bytes = bytesize::ByteSize::kib(1);
    })
    .await;

    // Over the configured limit, but small enough for the parser's buffer: the
    // proxy's own check.
    let big = "b".repeat(6 * 1024);
    let res = proxy.get_with("/h", &[("x-big", &big)]).await;
    assert_eq!(res.status, 431, "{}", res.text());
    // Far over it: the HTTP parser's limit, same answer.
    let huge = format!(
        "GET /h HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(20 * 1024)
    );
    assert_eq!(
        raw_status(&raw(proxy.addr, huge.as_bytes()).await),
        Some(431)
    );
    // Just under the limit: served.
    let under = "u".repeat(3 * 1024);
    let res = proxy.get_with("/h", &[("x-big", &under)]).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(origin.hits(), 1);

    let long = format!("/{}", "a".repeat(2000));
    let res = proxy.get(&long).await;
    assert_eq!(res.status, 414, "{}", res.text());
    let res = proxy.request("POST", &long, &[], "x").await;
    assert_eq!(res.status, 414, "{}", res.text());
    let ok = format!("/{}", "a".repeat(900));
    let res = proxy.get(&ok).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "901");
    // The origin saw only the two accepted requests.
    assert_eq!(origin.hits(), 2);
    assert!(origin.seen().iter().all(|s| s.uri.path().len() < 1000));
}

#[tokio::test]
async fn slow_and_silent_clients_are_cut_off() {
    let origin = Origin::start(|_| Reply::ok("fine")).await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.server.header_read_timeout = Duration::from_millis(300)
    })
    .await;
    for sent in [
        // A head that never ends.
        &b"GET / HTTP/1.1\r\nHost: x\r\n"[..],
        b"G",
        // Nothing at all, and the start of an HTTP/2 preface: the server cannot
        // even tell the protocol yet.
        b"",
        b"PRI * HTTP/2.0\r\n",
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let mut answer = Vec::new();
        let closed = timeout(WAIT, stream.read_to_end(&mut answer)).await;
        assert!(
            closed.is_ok(),
            "connection still open after {WAIT:?} having sent {:?}",
            String::from_utf8_lossy(sent)
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || raw_status(&answer) == Some(408),
            "{answer:?}"
        );
    }
    assert_eq!(origin.hits(), 0);
    // On a kept-alive connection: one request served, then a head that never ends.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /kept HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = timeout(WAIT, stream.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "a slow second head keeps the connection");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(raw_status(&answer), Some(200), "{answer:?}");
    assert!(
        answer.ends_with("fine"),
        "only the first was answered: {answer:?}"
    );
    assert_eq!(origin.hits(), 1);
    still_serves(&proxy).await;
}

/// Origin answers with malformed fields, each next to a normal body.
fn malformed_replies() -> Vec<(&'static str, Reply)> {
    let ok = |name: &str| Reply::ok(format!("case {name}"));
    let cached = |name: &str| ok(name).header("cache-control", "max-age=60");
    vec![
        (
            "cache-control-not-utf8",
            ok("cache-control-not-utf8").raw_header("cache-control", b"max-age=60, \xff\xfe"),
        ),
        ("age-garbage", cached("age-garbage").header("age", "soon")),
        (
            "age-huge",
            cached("age-huge").header("age", "99999999999999999999999"),
        ),
        ("age-negative", cached("age-negative").header("age", "-5")),
        (
            "expires-yesterday",
            ok("expires-yesterday").header("expires", "yesterday"),
        ),
        (
            "expires-far-future",
            ok("expires-far-future").header("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ),
        (
            "date-garbage",
            cached("date-garbage").header("date", "tomorrow-ish garbage"),
        ),
        (
            "date-epoch",
            cached("date-epoch").header("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ),
        (
            "date-far-future",
            cached("date-far-future").header("date", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ),
        (
            "max-age-overflow",
            ok("max-age-overflow").header(
                "cache-control",
                "max-age=99999999999999999999, s-maxage=18446744073709551616",
            ),
        ),
        (
            "max-age-negative",
            ok("max-age-negative").header("cache-control", "max-age=-1"),
        ),
        (
            "directive-junk",
            ok("directive-junk").header(
                "cache-control",
                "max-age=60, stale-while-revalidate=abc, =, \"unterminated",
            ),
        ),
        (
            "cdn-cache-control-junk",
            ok("cdn-cache-control-junk").header("cdn-cache-control", "max-age=\""),
        ),
        (
            "vary-junk",
            cached("vary-junk").header("vary", ",, @@@ , accept-language ,"),
        ),
        (
            "vary-not-utf8",
            cached("vary-not-utf8").raw_header("vary", b"\xff\xfe"),
        ),
        (
            "connection-not-utf8",
            cached("connection-not-utf8").raw_header("connection", b"\xff"),
        ),
        (
            "content-type-not-utf8",
            cached("content-type-not-utf8").raw_header("content-type", b"text/\xff"),
        ),
        (
            "validators-garbage",
            ok("validators-garbage")
                .header("last-modified", "last tuesday")
                .header("etag", "no-quotes"),
        ),
        (
            "last-modified-future",
            ok("last-modified-future").header("last-modified", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ),
        (
            "upstream-cache-status-not-utf8",
            cached("upstream-cache-status-not-utf8").raw_header("cache-status", b"\xff up; hit"),
        ),
        (
            "content-range-junk",
            cached("content-range-junk").header("content-range", "bytes banana"),
        ),
        (
            "set-cookie-not-utf8",
            cached("set-cookie-not-utf8").raw_header("set-cookie", b"a=\xff"),
        ),
    ]
}

#[tokio::test]
async fn malformed_origin_fields_never_panic_or_poison_the_cache() {
    common::watch_panics();
    let panics_before = common::panics_on_this_thread();
    let cases = malformed_replies();
    let replies = cases.clone();
    let origin = Origin::start(move |req| {
        let name = req.uri.path().trim_start_matches('/');
        replies
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Reply::ok("plain"))
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    for (name, _) in &cases {
        let path = format!("/{name}");
        let body = format!("case {name}");
        // Twice: a miss, then whatever the (mis)declared freshness allows.
        for round in 0..2 {
            let res = proxy.get(&path).await;
            assert_eq!(res.status, 200, "{name} #{round}");
            assert_eq!(res.text(), body, "{name} #{round}");
        }
        let range = proxy.get_with(&path, &[("range", "bytes=0-3")]).await;
        match range.status {
            200 => assert_eq!(range.text(), body, "{name}"),
            206 => assert_eq!(range.text(), "case", "{name}"),
            s => panic!("{name}: range answered {s}"),
        }
        let inm = proxy
            .get_with(&path, &[("if-none-match", "no-quotes, \"x\", *")])
            .await;
        assert!(matches!(inm.status, 200 | 304), "{name}: {}", inm.status);
        let head = proxy.request("HEAD", &path, &[], "").await;
        assert_eq!(head.status, 200, "{name}");
        assert!(head.body.is_empty(), "{name}");
        assert_eq!(proxy.get("/plain").await.text(), "plain", "after {name}");
    }
    // Nothing got mixed up: every entry still answers with its own body.
    for (name, _) in &cases {
        assert_eq!(
            proxy.get(&format!("/{name}")).await.text(),
            format!("case {name}")
        );
    }
    assert_eq!(
        common::panics_on_this_thread(),
        panics_before,
        "a proxy task panicked (see the output above)"
    );
}

#[tokio::test]
async fn broken_origin_responses_are_errors_and_never_stored() {
    common::watch_panics();
    let panics_before = common::panics_on_this_thread();
    let cases: [(&str, &[u8]); 9] = [
        (
            "body shorter than Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nCache-Control: max-age=60\r\n\r\nabc",
        ),
        (
            "chunked body without its last chunk",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: max-age=60\r\n\r\n5\r\nhello\r\n",
        ),
        (
            "bad chunk size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: max-age=60\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "conflicting Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nabcde",
        ),
        (
            "invalid Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\nCache-Control: max-age=60\r\n\r\nok",
        ),
        (
            "control byte in a field name",
            b"HTTP/1.1 200 OK\r\nX-B\x01d: y\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok",
        ),
        ("garbage status line", b"HTTP/1.1 abc\r\n\r\n"),
        ("not HTTP at all", b"NOT HTTP AT ALL\r\n\r\n"),
        ("closed without a word", b""),
    ];
    for (name, response) in cases {
        let origin = RawOrigin::start(response).await;
        let proxy = Proxy::start_url(&origin.url(), |_| {}).await;
        for round in 1..=2 {
            match proxy.try_get("/broken").await {
                Err(_) => {} // the head went out, then the body broke: the client sees it
                Ok(res) => {
                    assert_eq!(res.status, 502, "{name} #{round}: {res:?}");
                    assert!(
                        res.cache_status().contains("detail=origin-protocol-error"),
                        "{name}: {}",
                        res.cache_status()
                    );
                }
            }
            // Nothing was stored: every request went to the origin again.
            assert_eq!(origin.connections(), round, "{name}");
        }
    }
    assert_eq!(common::panics_on_this_thread(), panics_before);
}

#[tokio::test]
async fn private_answers_are_not_served_to_another_user() {
    let origin = Origin::start(|req| {
        let cookie = req.header("cookie").unwrap_or("none").to_string();
        Reply::ok(format!("account of {cookie}")).header("cache-control", "private, max-age=60")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let alice = proxy
        .get_with("/account", &[("cookie", "user=alice")])
        .await;
    assert_eq!(alice.text(), "account of user=alice");
    assert!(alice.cache_status().contains("detail=private"));
    let bob = proxy.get_with("/account", &[("cookie", "user=bob")]).await;
    assert_eq!(bob.text(), "account of user=bob");
    assert!(!bob.is_hit());
    let alice_again = proxy
        .get_with("/account", &[("cookie", "user=alice")])
        .await;
    assert_eq!(alice_again.text(), "account of user=alice");
    assert_eq!(origin.hits(), 3, "alice's answer is never stored");

    // With Vary: Cookie each user gets their own page, whether the proxy keeps a
    // variant per user or (its default) does not store per-user variants at all.
    let origin = Origin::start(|req| {
        Reply::ok(format!(
            "page for {}",
            req.header("cookie").unwrap_or("none")
        ))
        .header("cache-control", "max-age=60")
        .header("vary", "Cookie")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    for user in ["user=alice", "user=bob", "user=alice", "user=bob"] {
        let res = proxy.get_with("/page", &[("cookie", user)]).await;
        assert_eq!(res.text(), format!("page for {user}"));
    }
}

#[tokio::test]
async fn a_slow_download_outlives_the_header_read_timeout() {
    // The header read timeout bounds request heads, never the writing of a response:
    // a client reading a large stored object slowly gets all of it.
    const SIZE: usize = 24 << 20; // beyond what loopback socket buffers hold
    let body = bytes::Bytes::from(vec![b'x'; SIZE]);
    let origin =
        Origin::start(move |_| Reply::ok(body.clone()).header("cache-control", "max-age=600"))
            .await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.server.header_read_timeout = Duration::from_millis(200);
        c.cache.max_object_size = bytesize::ByteSize::mib(64);
    })
    .await;
    assert_eq!(proxy.get("/big").await.body.len(), SIZE);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0; 256 << 10];
    let started = std::time::Instant::now();
    while got < SIZE {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
        // The slow reader is the behaviour under test (not a synchronisation).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        got >= SIZE,
        "cut off after {got} bytes and {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() > Duration::from_millis(200),
        "the download took longer than the timeout, or it tested nothing"
    );
}
