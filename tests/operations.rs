//! Issue 6: operating Lacquer — graceful shutdown (and more as it lands).

mod common;

use std::time::Duration;

use common::{gate, open, Origin, Proxy, Reply};

#[tokio::test]
async fn shutdown_drains_a_request_in_flight_and_refuses_new_connections() {
    let g = gate();
    let gg = g.clone();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let origin = Origin::start(move |_| {
        let _ = arrived_tx.send(());
        Reply::ok("slow but complete")
            .header("cache-control", "no-store")
            .gated(&gg)
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let addr = proxy.addr;
    let url = proxy.url("/slow");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Full<bytes::Bytes>>(
        hyper_util::client::legacy::connect::HttpConnector::new(),
    );
    let in_flight = tokio::spawn(async move {
        let res = client
            .get(url.parse().unwrap())
            .await
            .expect("in-flight request answered");
        let status = res.status();
        use http_body_util::BodyExt;
        let body = res
            .into_body()
            .collect()
            .await
            .expect("complete body")
            .to_bytes();
        (status, body)
    });
    // The request is at the origin.
    arrived
        .recv()
        .await
        .expect("the request reached the origin");
    let common::Proxy { running, .. } = proxy;
    let shutdown = tokio::spawn(running.shutdown(Duration::from_secs(20)));
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "the listener closed");
    open(&g);
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow but complete");
    assert!(shutdown.await.unwrap(), "drained within the drain timeout");
}

#[tokio::test]
async fn metrics_move_as_requests_are_served() {
    let origin = Origin::start(|_| Reply::ok("m").header("cache-control", "max-age=60")).await;
    let proxy = Proxy::start(&origin).await;
    let scrape = || async { proxy.get("/.lacquer/metrics").await.text() };
    let before = scrape().await;
    assert!(
        before.contains("lacquer_requests_total{cache_status=\"hit\"} 0"),
        "{before}"
    );
    proxy.get("/m").await;
    proxy.get("/m").await;
    proxy.get("/m").await;
    let after = scrape().await;
    assert!(
        after.contains("lacquer_requests_total{cache_status=\"miss\"} 1"),
        "{after}"
    );
    assert!(
        after.contains("lacquer_requests_total{cache_status=\"hit\"} 2"),
        "{after}"
    );
    assert!(
        after.contains("lacquer_origin_requests_total{origin=\"default\",status=\"200\"} 1"),
        "{after}"
    );
    assert!(after.contains("lacquer_entries 1"), "{after}");
    assert!(
        after.contains("lacquer_origin_healthy{origin=\"default\"} 1"),
        "{after}"
    );
    assert_eq!(origin.hits(), 1, "scrapes never reach the origin");
}

/// Runs the real binary with `config`, sends `gets` GETs of one URL (the first a
/// miss, then hits), stops it with SIGTERM (asserting a graceful exit) and returns
/// what it wrote to standard error, a pipe.
fn serve_and_log(name: &str, config: &str, gets: usize) -> String {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(Origin::start(|_| {
        Reply::ok("logged").header("cache-control", "public, max-age=60")
    }));
    let dir = std::env::temp_dir().join(format!("lacquer-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lacquer"))
        .args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--origin",
            &origin.url(),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, http_body_util::Full<bytes::Bytes>>(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            );
        for _ in 0..gets {
            let req = http::Request::get(format!("http://{addr}/page?q=1"))
                .header("authorization", "Bearer super-secret-value")
                .body(http_body_util::Full::default())
                .unwrap();
            let res = client.request(req).await.unwrap();
            assert_eq!(res.status(), 200);
            use http_body_util::BodyExt;
            res.into_body().collect().await.unwrap();
        }
    });
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM: graceful exit");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

/// The real binary: JSON access log lines, and SIGTERM exits 0 after draining.
#[test]
fn access_log_lines_and_sigterm() {
    let stderr = serve_and_log("json-log", "[log]\nformat = \"json\"\n", 2);
    assert!(
        !stderr.contains("super-secret-value"),
        "secrets never reach the log"
    );
    let access: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "lacquer::access")
        .collect();
    assert_eq!(access.len(), 2, "{stderr}");
    let f = &access[0]["fields"];
    assert_eq!(f["method"], "GET");
    assert_eq!(f["path"], "/page");
    assert_eq!(f["status"], 200);
    assert_eq!(f["cache"], "miss");
    assert_eq!(access[1]["fields"]["cache"], "hit");
    assert!(f["key"].as_str().is_some_and(|k| k.len() == 16), "{f}");
    assert!(
        f["total_ms"].is_number() && f["origin_ms"].is_number(),
        "{f}"
    );
    assert_eq!(
        access[1]["fields"]["origin_ms"], 0.0,
        "a hit spends no time at the origin"
    );
    assert!(f["request_id"].is_number());
}

async fn one_connection(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    path: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let req = http::Request::get(path)
        .header("host", "reload.test")
        .body(http_body_util::Full::default())
        .unwrap();
    let res = sender
        .send_request(req)
        .await
        .expect("the same connection still works");
    let cs = res
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    (status, cs)
}

#[tokio::test]
async fn reload_changes_a_ttl_rule_while_a_connection_stays_open_and_the_cache_stays() {
    let lm = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(10_000));
    let origin = Origin::start(move |_| Reply::ok("h").header("last-modified", &lm)).await;
    let proxy = Proxy::start(&origin).await;
    let mut conn = one_connection(proxy.addr).await;
    let (_, cs) = get_on(&mut conn, "/a").await;
    assert!(
        cs.contains("ttl=1000") || cs.contains("ttl=999"),
        "heuristic: 10% of 10,000 s: {cs}"
    );

    let mut file = proxy.running.proxy.settings().file.clone();
    file.cache.heuristic_max = Duration::from_secs(10);
    file.server.listen = "127.0.0.1:1".parse().unwrap();
    let report = proxy
        .running
        .proxy
        .reload(lacquer::config::Settings::from_file(file).unwrap());
    assert_eq!(report.restart_required, vec!["server.listen".to_string()]);

    let (_, cs) = get_on(&mut conn, "/b").await;
    assert!(
        cs.contains("ttl=10") || cs.contains("ttl=9"),
        "the new cap applies: {cs}"
    );
    let (_, cs) = get_on(&mut conn, "/a").await;
    assert!(cs.contains("hit"), "the cache survived the reload: {cs}");
    assert_ne!(
        proxy.running.proxy.settings().listen.port(),
        1,
        "the listen address needs a restart: kept"
    );
}

#[tokio::test]
async fn reload_through_the_admin_api_rejects_a_bad_config_and_keeps_the_old_one() {
    let origin = Origin::start(|_| Reply::ok("r").header("cache-control", "max-age=60")).await;
    let secret = "reload-secret-0123456789";
    let proxy = Proxy::start_with(&origin, |c| {
        common::add_token(
            c,
            "ops",
            secret,
            &[lacquer::config::Operation::Reload],
            &[],
            &[],
        );
        common::add_token(
            c,
            "ci",
            "ci-secret-0123456789",
            &[lacquer::config::Operation::Tag],
            &[],
            &[],
        );
    })
    .await;
    let dir = std::env::temp_dir().join(format!("lacquer-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    let base = proxy.running.proxy.settings().file.clone();
    let p = path.clone();
    proxy.running.proxy.set_reloader(Box::new(move || {
        lacquer::config::ConfigFile::load(&p).and_then(lacquer::config::Settings::from_file)
    }));
    let reload = |token: &'static str| {
        let proxy = &proxy;
        async move {
            let req = http::Request::post(proxy.url("/.lacquer/reload"))
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::default())
                .unwrap();
            proxy.send(req).await
        }
    };
    // A broken file: 400 naming the key; nothing changes.
    std::fs::write(&path, "[cache]\nheuristic_fraction = \"lots\"\n").unwrap();
    let res = reload(secret).await;
    assert_eq!(res.status, 400);
    assert!(
        res.text().contains("cache.heuristic_fraction"),
        "{}",
        res.text()
    );
    assert_eq!(
        proxy.running.proxy.settings().policy.heuristic_fraction,
        0.1
    );
    // A token without the reload operation: 403.
    assert_eq!(reload("ci-secret-0123456789").await.status, 403);
    // A good file: applied.
    let mut good = base.clone();
    good.cache.heuristic_fraction = 0.5;
    std::fs::write(&path, good.to_toml()).unwrap();
    let res = reload(secret).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        proxy.running.proxy.settings().policy.heuristic_fraction,
        0.5
    );
}

#[tokio::test]
async fn a_hit_renders_the_same_head_as_the_general_path_and_a_reload_renders_it_anew() {
    // Hits reuse a rendering of the head (proxy.rs `serve_fresh`); debug builds also
    // compare each reuse with a new rendering. Here: what a client sees.
    let origin = Origin::start(|_| {
        Reply::ok("body")
            .header("cache-control", "max-age=600")
            .header("cdn-cache-control", "max-age=600")
            .header("surrogate-key", "a b")
            .header("etag", "\"v1\"")
            .header("x-custom", "kept")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/r").await; // miss, stored
    let first = proxy.get("/r").await;
    // The second hit in a second: rendered and kept.
    let second = proxy.get("/r").await;
    // Reused (unless a second passed): none of the request's own fields show through.
    let third = proxy
        .get_with(
            "/r",
            &[("x-request-only", "secret"), ("user-agent", "probe")],
        )
        .await;
    assert_eq!(third.header("x-request-only"), None);
    assert_eq!(third.header("user-agent"), None);
    // A conditional request that does not match takes the general path.
    let general = proxy
        .get_with("/r", &[("if-none-match", "\"other\"")])
        .await;
    for res in [&first, &second, &third, &general] {
        assert!(res.is_hit(), "{}", res.cache_status());
        assert_eq!(res.text(), "body");
        assert_eq!(res.header("x-custom"), Some("kept"));
        assert_eq!(res.header("etag"), Some("\"v1\""));
        assert_eq!(
            res.header("surrogate-key"),
            None,
            "tag headers are stripped"
        );
        assert_eq!(res.header("content-length"), Some("4"));
        assert!(res.header("via").is_some_and(|v| v.contains("lacquer")));
    }
    let names = |r: &common::Res| {
        let mut n: Vec<String> = r.headers.keys().map(|k| k.to_string()).collect();
        n.sort();
        n.dedup();
        n
    };
    assert_eq!(names(&third), names(&general));

    // A reload that changes what a hit's head carries applies to the next hit.
    let mut file = proxy.running.proxy.settings().file.clone();
    file.server.via = "edge-7".into();
    file.server.cache_status_name = "edge-7".into();
    file.cache.forward_targeted_fields = false;
    proxy
        .running
        .proxy
        .reload(lacquer::config::Settings::from_file(file).unwrap());
    let after = proxy.get("/r").await;
    assert!(
        after.cache_status().starts_with("edge-7; hit"),
        "{}",
        after.cache_status()
    );
    assert!(after.header("via").is_some_and(|v| v.contains("edge-7")));
    assert_eq!(after.header("cdn-cache-control"), None);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn shutdown_closes_idle_kept_alive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(|_| Reply::ok("idle").header("cache-control", "max-age=60")).await;
    // A header read timeout longer than the drain timeout: only shutdown can close it.
    let proxy = Proxy::start_with(&origin, |c| {
        c.server.header_read_timeout = Duration::from_secs(600);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nhost: example.com\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.ends_with(b"idle") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the response arrived: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    // The connection is open and idle (keep-alive) when shutdown begins.
    let common::Proxy { running, .. } = proxy;
    let drained = running.shutdown(Duration::from_secs(30)).await;
    assert!(drained, "the idle connection was closed, not waited out");
    assert_eq!(
        stream.read(&mut buf).await.unwrap(),
        0,
        "closed by the proxy"
    );
}

/// Issue 18: the access log goes through a writer thread and is all there after a
/// SIGTERM; no colour codes when standard error is not a terminal; with
/// `log.sample_hits = 0` hits get no line, misses still do.
#[test]
fn the_buffered_log_is_complete_plain_and_samples_only_hits() {
    let stderr = serve_and_log("sampled", "[log]\nsample_hits = 0.0\n", 5);
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes into a pipe: {stderr:?}"
    );
    let access: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lacquer::access"))
        .collect();
    assert_eq!(access.len(), 1, "the miss alone: {stderr}");
    assert!(
        access[0].contains("cache=\"miss\"") || access[0].contains("cache=miss"),
        "{}",
        access[0]
    );
    let all = serve_and_log("every", "", 5);
    let lines = all
        .lines()
        .filter(|l| l.contains("lacquer::access"))
        .count();
    assert_eq!(lines, 5, "every request, flushed before exit: {all}");
}
