//! The real `lacquer` binary: config validation and exit codes, and the README
//! quickstart (`lacquer origin` + `lacquer serve`, miss → hit → revalidation).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BIN: &str = env!("CARGO_BIN_EXE_lacquer");

fn repo_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn temp_config(text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("lacquer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("c{}.toml", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn shipped_proxy_toml_is_valid_and_check_config_prints_settings() {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(repo_file("proxy.toml"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:8080\""), "{text}");
    assert!(text.contains("url = \"http://127.0.0.1:9000\""), "{text}");
    assert!(text.contains("max_variants = 32"), "{text}");
}

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let cases = [
        (
            "[server]\nlisten = \"127.0.0.1:1\"\nbogus = true\n[[origins]]\nurl=\"http://a\"\n",
            "server.bogus",
        ),
        (
            "[server]\nlisten = 8080\n[[origins]]\nurl=\"http://a\"\n",
            "server.listen",
        ),
        (
            "[server]\nlisten = \"localhost:http\"\n[[origins]]\nurl=\"http://a\"\n",
            "server.listen",
        ),
        (
            "[cache]\nmax_size = true\n[[origins]]\nurl=\"http://a\"\n",
            "cache.max_size",
        ),
        ("[[origins]]\nurl = \"gopher://a\"\n", "origins[0].url"),
        (
            "[[origins]]\nurl = \"http://a\"\nfirst_byte_timeout = \"0s\"\n",
            "origins[0].first_byte_timeout",
        ),
    ];
    for (text, key) in cases {
        let path = temp_config(text);
        for args in [
            vec!["check-config".to_string(), path.display().to_string()],
            vec![
                "serve".to_string(),
                "--config".to_string(),
                path.display().to_string(),
            ],
        ] {
            let out = Command::new(BIN).args(&args).output().expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {text:?}: {err}");
            assert!(
                err.contains(&format!("`{key}`")),
                "{args:?}: stderr names `{key}`: {err}"
            );
        }
    }
}

#[test]
fn missing_config_file_and_bad_flags_exit_2() {
    let out = Command::new(BIN)
        .args(["check-config", "/nonexistent/lacquer.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let out = Command::new(BIN)
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    // The fleet flags: a node name without a fleet, a bad Redis URL.
    let origin = "--origin=http://127.0.0.1:9";
    for (args, says) in [
        (
            vec!["serve", origin, "--node", "edge-1"],
            "--node and --tier need --fleet",
        ),
        (vec!["serve", origin, "--fleet", "http://x"], "fleet.redis"),
        (
            vec![
                "serve",
                origin,
                "--fleet",
                "redis://127.0.0.1:1",
                "--node",
                "a b",
            ],
            "fleet.node",
        ),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Kills the child when the test ends, however it ends.
struct Running {
    child: Child,
    addr: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary and waits for its "listening on ADDR" line.
fn spawn(args: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lacquer");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read listening line");
    let addr = line.trim().rsplit(' ').next().unwrap_or("").to_string();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "unexpected first line {line:?}"
    );
    Running { child, addr }
}

struct Got {
    status: u16,
    cache_status: String,
    age: Option<String>,
    body: Bytes,
}

async fn get(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Got {
    let res = client
        .get(url.parse().expect("url"))
        .await
        .expect("request");
    let status = res.status().as_u16();
    let h = |n: &str| {
        res.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let cache_status = h("cache-status").unwrap_or_default();
    let age = h("age");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Got {
        status,
        cache_status,
        age,
        body,
    }
}

#[tokio::test]
async fn quickstart_origin_and_proxy_show_miss_hit_and_revalidation() {
    let origin = spawn(&["origin", "--listen", "127.0.0.1:0"]);
    let origin_url = format!("http://{}", origin.addr);
    let config = repo_file("proxy.toml");
    let proxy = spawn(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--origin",
        &origin_url,
    ]);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let base = format!("http://{}", proxy.addr);

    let url = format!("{base}/demo?cc=max-age%3D60");
    let miss = get(&client, &url).await;
    assert_eq!(miss.status, 200);
    // ttl=60, or 59 when the origin's Date (one-second resolution) makes it a second old.
    assert!(
        miss.cache_status == "lacquer; fwd=uri-miss; fwd-status=200; stored; ttl=60"
            || miss.cache_status == "lacquer; fwd=uri-miss; fwd-status=200; stored; ttl=59",
        "{}",
        miss.cache_status
    );
    let hit = get(&client, &url).await;
    assert!(
        hit.cache_status.starts_with("lacquer; hit; ttl="),
        "{}",
        hit.cache_status
    );
    assert!(hit.age.is_some());
    assert_eq!(hit.body, miss.body, "the same stored bytes");

    // max-age=0 with an ETag: stored, and every later use is revalidated with a 304.
    let url = format!("{base}/page?cc=max-age%3D0&etag=v1");
    let first = get(&client, &url).await;
    assert!(
        first.cache_status.contains("stored"),
        "{}",
        first.cache_status
    );
    let second = get(&client, &url).await;
    assert_eq!(second.status, 200);
    assert!(
        second.cache_status == "lacquer; fwd=stale; fwd-status=304; stored; ttl=0"
            || second.cache_status == "lacquer; fwd=stale; fwd-status=304; stored; ttl=-1",
        "{}",
        second.cache_status
    );
    // One-second resolution: 0, or 1 across a second boundary.
    assert!(
        matches!(second.age.as_deref(), Some("0") | Some("1")),
        "{:?}",
        second.age
    );
    assert_eq!(second.body, first.body);

    // The demo origin counted exactly the requests that went forward: 1 + 2.
    let stats = get(&client, &format!("{origin_url}/.origin/stats")).await;
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).expect("json");
    assert_eq!(stats["requests"], 3, "{stats}");
}
