mod common;

// `lacquer purge` and `lacquer verify`, the real binary against the real proxy and
// origin: exit codes, token scopes, retries under one request id, polling for new
// content. The token reaches the proxy through a file and the binary through an
// environment variable set on its `Command` only.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Origin, Proxy, Reply};
use lacquer::config::{Operation, TokenSection};

const BIN: &str = env!("CARGO_BIN_EXE_lacquer");
/// Set on the child's `Command` only, never in this process.
const TOKEN_VAR: &str = "LACQUER_TEST_PURGE_TOKEN";
const TAG: &str = "campaign:summer";

fn unique() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}-{:016x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        fastrand::u64(..)
    )
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An origin whose tagged pages carry `ETag: "v{version}"`, and the proxy in front of
/// it with one token, `ci`: tag and url purges, tags `campaign:*` only.
struct Setup {
    origin: Origin,
    proxy: Proxy,
    secret: String,
    version: Arc<AtomicUsize>,
}

async fn setup() -> Setup {
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    let origin = Origin::start(move |req| {
        let etag = format!("\"v{}\"", v.load(Ordering::SeqCst));
        match req.uri.path() {
            "/untagged" => Reply::ok("plain").header("cache-control", "max-age=300"),
            path => Reply::ok(format!("{path} {etag}"))
                .header("cache-control", "max-age=300")
                .header("surrogate-key", &format!("{TAG} product:1"))
                .header("etag", &etag),
        }
    })
    .await;
    let secret = format!("ci-secret-{}", unique());
    let file = TempFile(std::env::temp_dir().join(format!("lacquer-purge-cli-{}.token", unique())));
    std::fs::write(&file.0, format!("{secret}\n")).expect("write token file");
    let path = file.0.display().to_string();
    let proxy = Proxy::start_with(&origin, |cfg| {
        cfg.admin.tokens.push(TokenSection {
            name: "ci".into(),
            file: Some(path),
            operations: vec![Operation::Tag, Operation::Url],
            tags: vec!["campaign:*".into()],
            ..Default::default()
        })
    })
    .await;
    // The proxy read the secret at start.
    drop(file);
    Setup {
        origin,
        proxy,
        secret,
        version,
    }
}

impl Setup {
    fn endpoint(&self) -> String {
        self.proxy.url("/.lacquer")
    }

    /// `lacquer purge --endpoint … --token-env …` plus `extra`, with the right token.
    async fn purge(&self, extra: &[&str]) -> Output {
        self.purge_with_token(Some(&self.secret), extra).await
    }

    async fn purge_with_token(&self, token: Option<&str>, extra: &[&str]) -> Output {
        let endpoint = self.endpoint();
        let mut args = vec!["purge", "--endpoint", &endpoint, "--token-env", TOKEN_VAR];
        args.extend_from_slice(extra);
        let out = lacquer(&args, token).await;
        assert_secret_not_printed(&out, &self.secret);
        out
    }

    /// Stores `path` and checks that a second request is a hit.
    async fn cache(&self, path: &str) {
        self.proxy.get(path).await;
        let res = self.proxy.get(path).await;
        assert!(res.is_hit(), "{path}: {}", res.cache_status());
    }
}

fn command(args: &[&str], token: Option<&str>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .kill_on_drop(true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match token {
        Some(t) => cmd.env(TOKEN_VAR, t),
        None => cmd.env_remove(TOKEN_VAR),
    };
    cmd
}

/// Runs the binary (asynchronously: the proxy runs on this test's runtime).
async fn lacquer(args: &[&str], token: Option<&str>) -> Output {
    tokio::time::timeout(Duration::from_secs(60), command(args, token).output())
        .await
        .expect("lacquer finished within 60 s")
        .expect("run lacquer")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_secret_not_printed(out: &Output, secret: &str) {
    assert!(
        !stdout(out).contains(secret) && !stderr(out).contains(secret),
        "the token was printed"
    );
}

#[tokio::test]
async fn tag_purge_exits_0_and_only_tagged_urls_are_fetched_again() {
    let s = setup().await;
    s.cache("/p/1").await;
    s.cache("/untagged").await;
    let hits = s.origin.hits();

    let out = s.purge(&["--tag", TAG]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("purged, generation "), "{text}");
    assert!(text.contains(&format!("tag {TAG}: 1 entry\n")), "{text}");
    assert!(text.contains("token ci, request id lacquer-cli-"), "{text}");

    let res = s.proxy.get("/p/1").await;
    assert!(!res.is_hit(), "{}", res.cache_status());
    assert_eq!(s.origin.hits(), hits + 1, "the purged URL is fetched again");
    let res = s.proxy.get("/untagged").await;
    assert!(res.is_hit(), "{}", res.cache_status());
    assert_eq!(s.origin.hits(), hits + 1, "the untagged URL stays cached");
}

#[tokio::test]
async fn json_prints_the_servers_report_and_a_repeated_request_id_is_replayed() {
    let s = setup().await;
    s.cache("/p/1").await;
    let id = format!("deploy-{}", unique());
    let out = s
        .purge(&["--tag", TAG, "--json", "--request-id", &id])
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let first: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(first["report"]["tags"][TAG], 1, "{first}");
    assert_eq!(first["token"], "ci");
    assert_eq!(first["request_id"], id.as_str());
    assert!(first["report"]["generation"].as_u64().unwrap() > 0);

    // The same id again (as a retry would send it): the first result, not a new purge.
    s.cache("/p/1").await;
    let out = s
        .purge(&["--tag", TAG, "--json", "--request-id", &id])
        .await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let again: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(again, first);
    assert!(stderr(&out).contains("replayed"), "{}", stderr(&out));
    assert!(
        s.proxy.get("/p/1").await.is_hit(),
        "a replay purges nothing"
    );
}

#[tokio::test]
async fn wrong_token_exits_1_and_purges_nothing() {
    let s = setup().await;
    s.cache("/p/1").await;
    let out = s
        .purge_with_token(Some("not-the-right-token-at-all"), &["--tag", TAG])
        .await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("401") && err.contains("missing or invalid token"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
    assert!(s.proxy.get("/p/1").await.is_hit());
}

#[tokio::test]
async fn tag_outside_the_tokens_scope_exits_1_with_the_servers_reason() {
    let s = setup().await;
    s.cache("/p/1").await;
    let out = s.purge(&["--tag", "product:1"]).await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("403") && err.contains("outside the scope"),
        "{err}"
    );
    assert!(s.proxy.get("/p/1").await.is_hit());
}

#[tokio::test]
async fn usage_errors_exit_2_before_any_request() {
    let s = setup().await;
    s.cache("/p/1").await;
    let hits = s.origin.hits();

    let out = s.purge_with_token(None, &["--tag", TAG]).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains(TOKEN_VAR), "{}", stderr(&out));

    let out = s.purge(&[]).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing to purge"),
        "{}",
        stderr(&out)
    );

    let out = s.purge(&["--soft", "--dry-run"]).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));

    // clap's own usage errors.
    let out = s.purge(&["--tag", TAG, "--retries", "many"]).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));

    assert!(s.proxy.get("/p/1").await.is_hit());
    assert_eq!(s.origin.hits(), hits);
}

#[tokio::test]
async fn closed_port_exits_3_quickly() {
    let endpoint = format!("http://{}/.lacquer", common::closed_port());
    let started = Instant::now();
    let out = purge_tag(&endpoint, "1", "1", "some-token-0123456789").await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("unreachable after 2 attempts"), "{err}");
    assert!(err.contains("attempt 1/2 failed"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A stand-in admin API answering `status` with `body` to every request.
async fn fake_admin(replies: Vec<(u16, &'static str)>) -> Origin {
    let n = AtomicUsize::new(0);
    Origin::start(move |_req| {
        let i = n.fetch_add(1, Ordering::SeqCst).min(replies.len() - 1);
        let (status, body) = replies[i];
        Reply::status(status)
            .body(body)
            .header("content-type", "application/json")
    })
    .await
}

async fn purge_fake(admin: &Origin, retries: &str) -> Output {
    let endpoint = format!("{}/.lacquer/", admin.url());
    purge_tag(&endpoint, retries, "5", "fake-admin-token-0123456789").await
}

/// `lacquer purge --tag TAG` against `endpoint`, the token in `TOKEN_VAR`.
async fn purge_tag(endpoint: &str, retries: &str, timeout: &str, token: &str) -> Output {
    let args = [
        "purge",
        "--endpoint",
        endpoint,
        "--token-env",
        TOKEN_VAR,
        "--tag",
        TAG,
        "--retries",
        retries,
        "--timeout",
        timeout,
    ];
    lacquer(&args, Some(token)).await
}

#[tokio::test]
async fn server_errors_are_retried_under_one_request_id_and_4xx_never() {
    let report = r#"{"request_id":"x","token":"ci","report":{"tags":{"campaign:summer":2},"urls":{},"prefixes":{},"all":null,"soft":false,"dry_run":false,"generation":5}}"#;
    let flaky = fake_admin(vec![(503, r#"{"error":"busy"}"#), (200, report)]).await;
    let out = purge_fake(&flaky, "3").await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("tag campaign:summer: 2 entries"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("attempt 1/4 failed (server error (503 Service Unavailable): busy)"),
        "{}",
        stderr(&out)
    );
    let seen = flaky.seen();
    assert_eq!(seen.len(), 2);
    let ids: Vec<serde_json::Value> = seen
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["request_id"].clone()
        })
        .collect();
    assert!(
        ids[0]
            .as_str()
            .is_some_and(|id| id.starts_with("lacquer-cli-")),
        "{ids:?}"
    );
    assert_eq!(ids[0], ids[1], "retries reuse the request id");
    for r in &seen {
        assert_eq!(r.method, http::Method::POST);
        assert_eq!(r.uri.path(), "/.lacquer/purge");
        assert_eq!(
            r.header("authorization"),
            Some("Bearer fake-admin-token-0123456789")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }

    let down = fake_admin(vec![(502, "")]).await;
    let out = purge_fake(&down, "1").await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(down.hits(), 2);

    let bad = fake_admin(vec![(400, r#"{"error":"invalid purge JSON: nope"}"#)]).await;
    let out = purge_fake(&bad, "3").await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused (400 Bad Request): invalid purge JSON: nope"),
        "{}",
        stderr(&out)
    );
    assert_eq!(bad.hits(), 1, "4xx is never retried");

    // A 200 that is not a purge report (the wrong endpoint) is not taken as done.
    let wrong = fake_admin(vec![(200, "<html>hello</html>")]).await;
    let out = purge_fake(&wrong, "0").await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not with a purge report"),
        "{}",
        stderr(&out)
    );
}

fn verify_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["verify", "--url", url];
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn verify_exits_0_once_the_new_etag_is_served_after_a_purge() {
    let s = setup().await;
    s.cache("/p/1").await;
    s.version.store(2, Ordering::SeqCst);
    assert_eq!(s.proxy.get("/p/1").await.header("etag"), Some("\"v1\""));

    // Polling while the old version is cached, then the purge lets v2 through.
    let url = s.proxy.url("/p/1");
    let args = verify_args(&url, &["--expect-etag", "\"v2\"", "--interval-ms", "50"]);
    let verify = command(&args, None).spawn().expect("spawn verify");
    let out = s.purge(&["--tag", TAG]).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = tokio::time::timeout(Duration::from_secs(60), verify.wait_with_output())
        .await
        .expect("verify finished")
        .expect("verify output");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("verified: ETag \"v2\" served by {url} after ")),
        "{text}"
    );
    assert!(text.contains("ETag \"v2\", Cache-Status: "), "{text}");

    // The other expectations against the same, now current, content.
    let args = verify_args(&url, &["--expect-body-contains", "/p/1 \"v2\""]);
    let out = lacquer(&args, None).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let args = verify_args(&url, &["--expect-header", "etag:\"v2\""]);
    let out = lacquer(&args, None).await;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("header etag: \"v2\""),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn verify_exits_1_when_the_new_etag_is_never_served() {
    let s = setup().await;
    s.cache("/p/1").await;
    s.version.store(2, Ordering::SeqCst); // but nobody purges
    let url = s.proxy.url("/p/1");
    let started = Instant::now();
    let args = verify_args(
        &url,
        &[
            "--expect-etag",
            "v2",
            "--timeout",
            "1",
            "--interval-ms",
            "100",
        ],
    );
    let out = lacquer(&args, None).await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("not verified: ETag v2 not served"), "{err}");
    assert!(
        err.contains("last seen: status 200 OK, ETag \"v1\", Cache-Status: lacquer; hit"),
        "{err}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn verify_exits_3_when_nothing_answers_and_2_on_usage_errors() {
    let url = format!("http://{}/p/1", common::closed_port());
    let out = lacquer(
        &verify_args(&url, &["--expect-etag", "v2", "--timeout", "1"]),
        None,
    )
    .await;
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));

    for extra in [
        &[][..],
        &["--expect-etag", "a", "--expect-body-contains", "b"][..],
        &["--expect-header", "no-colon"][..],
    ] {
        let out = lacquer(&verify_args(&url, extra), None).await;
        assert_eq!(code(&out), 2, "{extra:?}: {}", stderr(&out));
    }
}
