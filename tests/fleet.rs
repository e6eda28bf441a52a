//! Issue 16: a fleet that purges as one over a bus on Redis Streams. Every test
//! starts a real `redis-server` on a free loopback port in a temporary directory,
//! real Lacquer nodes (in-process servers) and a real origin.

mod common;

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{add_token, Origin, Proxy, Reply};
use lacquer::config::FleetSection;
use lacquer::config::Operation::{All, Tag, Url};
use lacquer::config::Tier;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CI: &str = "ci-secret-0123456789";
const NARROW: &str = "narrow-secret-0123456789";

/// A `redis-server` of this test's own: a free port, a temporary directory.
struct Redis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
    aof: bool,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Redis {
    async fn start() -> Redis {
        Redis::start_with(false).await
    }

    /// `aof`: every write is on disk before Redis answers it (the persistence the
    /// README documents for a fleet), so a restart loses nothing confirmed.
    async fn start_with(aof: bool) -> Redis {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lacquer-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = Redis {
            port: free_port(),
            dir,
            child: None,
            aof,
        };
        r.spawn().await;
        r
    }

    /// Starts the server and returns once it says it accepts connections.
    async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg(if self.aof { "yes" } else { "no" })
            .arg("--appendfsync")
            .arg("always")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        };
        let ok = tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .unwrap_or(false);
        assert!(ok, "redis-server did not become ready");
        // Keep draining its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// SIGKILL: no chance to write anything more.
    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fleet(redis: &str, node: &str, tier: Tier) -> FleetSection {
    FleetSection {
        redis: redis.to_string(),
        node: Some(node.to_string()),
        tier,
        heartbeat: Duration::from_millis(100),
        down_after: Some(Duration::from_millis(400)),
        max_lag: Duration::from_secs(60),
        catch_up_wait: Duration::from_millis(200),
        ..FleetSection::default()
    }
}

async fn node(origin_url: &str, f: FleetSection) -> Proxy {
    Proxy::start_url(origin_url, |c| {
        add_token(c, "ci", CI, &[Tag, Url, All], &[], &[]);
        add_token(c, "narrow", NARROW, &[Tag], &["campaign:*"], &[]);
        c.fleet = Some(f);
    })
    .await
}

/// Waits until the node's consumer has applied, in stream order, `id`.
async fn applied(p: &Proxy, id: &str) {
    let id: lacquer::purge::StreamId = id.parse().expect("stream id");
    let mut rx = p.running.proxy.fleet_applied().expect("in a fleet");
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|a| *a >= id))
        .await
        .expect("applied within 30 s")
        .expect("fleet alive");
}

/// Waits until every node's record is in Redis (the others can see it).
async fn joined(nodes: &[&Proxy]) {
    for n in nodes {
        let mut rx = n.running.proxy.fleet_recorded().expect("in a fleet");
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|r| *r))
            .await
            .expect("recorded within 30 s")
            .expect("fleet alive");
    }
}

/// An admin endpoint's answer (200 expected) as text, with the test's token.
async fn admin_text(p: &Proxy, path: &str) -> String {
    let res = p
        .request(
            "GET",
            path,
            &[("authorization", &format!("Bearer {CI}"))],
            "",
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    res.text()
}

async fn fleet_status(p: &Proxy) -> serde_json::Value {
    serde_json::from_str(&admin_text(p, "/.lacquer/fleet").await).expect("fleet JSON")
}

async fn purge(p: &Proxy, secret: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let res = p
        .request(
            "POST",
            "/.lacquer/purge",
            &[
                ("authorization", &format!("Bearer {secret}")),
                ("content-type", "application/json"),
            ],
            &body.to_string(),
        )
        .await;
    let value = serde_json::from_str(&res.text()).unwrap_or(serde_json::Value::Null);
    (res.status, value)
}

/// Tagged, versioned content: `/t/<tag>/…` carries `Surrogate-Key: <tag>`, and
/// the body names the version the origin publishes now.
fn versioned_origin(version: Arc<AtomicUsize>) -> impl Fn(&common::Seen) -> Reply {
    move |req| {
        let path = req.uri.path().to_string();
        let tag = path.split('/').nth(2).unwrap_or("none").to_string();
        let v = version.load(Ordering::SeqCst);
        Reply::ok(format!("{path} v{v}"))
            .header("cache-control", "max-age=600")
            .header("etag", &format!("\"v{v}\""))
            .header("surrogate-key", &tag)
    }
}

#[tokio::test]
async fn a_purge_with_wait_is_applied_on_every_node_before_the_answer() {
    let redis = Redis::start().await;
    let version = Arc::new(AtomicUsize::new(1));
    let origin = Origin::start(versioned_origin(version.clone())).await;
    let a = node(&origin.url(), fleet(&redis.url(), "edge-a", Tier::Edge)).await;
    let b = node(&origin.url(), fleet(&redis.url(), "edge-b", Tier::Edge)).await;
    let c = node(&origin.url(), fleet(&redis.url(), "edge-c", Tier::Edge)).await;
    joined(&[&a, &b, &c]).await;
    for n in [&a, &b, &c] {
        assert_eq!(n.get("/t/sale/page").await.text(), "/t/sale/page v1");
        assert!(n.get("/t/sale/page").await.is_hit());
    }
    version.store(2, Ordering::SeqCst);
    let (status, answer) =
        purge(&a, CI, serde_json::json!({"tags": ["sale"], "wait": "10s"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["fleet"]["complete"], true, "{answer}");
    for name in ["edge-a", "edge-b", "edge-c"] {
        assert_eq!(answer["fleet"]["nodes"][name], "applied", "{answer}");
    }
    // The answer keeps its local fields.
    assert_eq!(answer["report"]["tags"]["sale"], 1, "{answer}");
    assert!(answer["request_id"].is_string(), "{answer}");
    // Confirmed means applied: no node serves the old version any more.
    for n in [&a, &b, &c] {
        assert_eq!(n.get("/t/sale/page").await.text(), "/t/sale/page v2");
    }
}

#[tokio::test]
async fn a_request_id_sent_to_two_nodes_is_applied_once() {
    let redis = Redis::start().await;
    let origin = Origin::start(versioned_origin(Arc::new(AtomicUsize::new(1)))).await;
    let a = node(&origin.url(), fleet(&redis.url(), "edge-a", Tier::Edge)).await;
    let b = node(&origin.url(), fleet(&redis.url(), "edge-b", Tier::Edge)).await;
    joined(&[&a, &b]).await;
    let body = serde_json::json!({"tags": ["sale"], "request_id": "deploy-42", "wait": "10s"});
    let (s1, first) = purge(&a, CI, body.clone()).await;
    assert_eq!(s1, 200, "{first}");
    let (s2, second) = purge(&b, CI, body).await;
    assert_eq!(s2, 200, "{second}");
    assert_eq!(
        first["fleet"]["id"], second["fleet"]["id"],
        "one stream entry"
    );
    assert_eq!(
        first["report"], second["report"],
        "b answers with the first figures"
    );
    let status = fleet_status(&a).await;
    assert_eq!(status["length"], 1, "{status}");
    // Each node applied it once: one purge generation each.
    assert_eq!(a.store().generation(), 1);
    assert_eq!(b.store().generation(), 1);
}

#[tokio::test]
async fn scopes_still_refuse_and_nothing_reaches_the_bus() {
    let redis = Redis::start().await;
    let origin = Origin::start(versioned_origin(Arc::new(AtomicUsize::new(1)))).await;
    let a = node(&origin.url(), fleet(&redis.url(), "edge-a", Tier::Edge)).await;
    let b = node(&origin.url(), fleet(&redis.url(), "edge-b", Tier::Edge)).await;
    joined(&[&a, &b]).await;
    let (status, answer) = purge(&a, NARROW, serde_json::json!({"tags": ["price:1"]})).await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = purge(&a, NARROW, serde_json::json!({"all": true})).await;
    assert_eq!(status, 403, "{answer}");
    let (status, _) = purge(
        &a,
        "wrong-secret-0123456789",
        serde_json::json!({"tags": ["x"]}),
    )
    .await;
    assert_eq!(status, 401);
    let status = fleet_status(&a).await;
    assert_eq!(status["length"], 0, "nothing was appended: {status}");
    assert_eq!(a.store().generation(), 0);
    assert_eq!(b.store().generation(), 0);
}

#[tokio::test]
async fn an_unreachable_redis_refuses_the_purge_with_503_and_applies_nothing() {
    let origin = Origin::start(versioned_origin(Arc::new(AtomicUsize::new(1)))).await;
    let closed = common::closed_port();
    let mut f = fleet(&format!("redis://{closed}"), "edge-a", Tier::Edge);
    f.redis_timeout = Duration::from_millis(300);
    let a = node(&origin.url(), f).await;
    assert_eq!(a.get("/t/sale/page").await.text(), "/t/sale/page v1");
    let (status, answer) = purge(&a, CI, serde_json::json!({"tags": ["sale"]})).await;
    assert_eq!(status, 503, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot be reached"), "{answer}");
    assert!(error.contains("applied nowhere"), "{answer}");
    assert_eq!(answer["retry"], true, "{answer}");
    assert_eq!(a.store().generation(), 0, "nothing applied");
    assert!(
        a.get("/t/sale/page").await.is_hit(),
        "the entry is still served"
    );
}

#[tokio::test]
async fn a_stopped_node_is_reported_down_and_catches_up_when_it_comes_back() {
    let redis = Redis::start().await;
    let origin = Origin::start(versioned_origin(Arc::new(AtomicUsize::new(1)))).await;
    let a = node(&origin.url(), fleet(&redis.url(), "edge-a", Tier::Edge)).await;
    let b = node(&origin.url(), fleet(&redis.url(), "edge-b", Tier::Edge)).await;
    joined(&[&a, &b]).await;
    drop(b);
    let (status, answer) = purge(&a, CI, serde_json::json!({"tags": ["sale"], "wait": "2s"})).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["fleet"]["complete"], false, "{answer}");
    assert_eq!(answer["fleet"]["nodes"]["edge-a"], "applied", "{answer}");
    assert_eq!(answer["fleet"]["nodes"]["edge-b"], "down", "{answer}");
    let id = answer["fleet"]["id"].as_str().expect("id").to_string();
    assert_eq!(
        lacquer::cli::unconfirmed(&answer).as_deref(),
        Some("edge-b (down)")
    );
    // `lacquer purge --wait` exits with 4 when not every node confirmed.
    std::env::set_var("LACQUER_FLEET_TEST_TOKEN", CI);
    let args = lacquer::cli::PurgeArgs {
        endpoint: a.url("/.lacquer"),
        token_env: "LACQUER_FLEET_TEST_TOKEN".into(),
        tags: vec!["sale".into()],
        urls: Vec::new(),
        prefixes: Vec::new(),
        all: false,
        soft: false,
        dry_run: false,
        wait: Some(Duration::from_secs(1)),
        request_id: None,
        json: false,
        retries: 0,
        timeout: 10,
    };
    assert_eq!(
        lacquer::cli::purge(args).await,
        lacquer::cli::Exit::Unconfirmed
    );
    // Back under its name: it resumes from the position it recorded.
    let b = node(&origin.url(), fleet(&redis.url(), "edge-b", Tier::Edge)).await;
    applied(&b, &id).await;
    let mut rx = b.running.proxy.fleet_applied().expect("fleet");
    assert!(*rx.borrow_and_update() >= id.parse().unwrap());
    let (status, answer) = purge(
        &a,
        CI,
        serde_json::json!({"tags": ["other"], "wait": "10s"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["fleet"]["nodes"]["edge-b"], "applied", "{answer}");
    assert_eq!(lacquer::cli::unconfirmed(&answer), None);
}

#[tokio::test]
async fn shields_catch_up_before_answering_an_edge_that_applied_a_purge() {
    for order in [true, false] {
        let redis = Redis::start().await;
        let version = Arc::new(AtomicUsize::new(1));
        let origin = Origin::start(versioned_origin(version.clone())).await;
        let mut sf = fleet(&redis.url(), "shield-1", Tier::Shield);
        sf.shield_order = order;
        let shield = node(&origin.url(), sf).await;
        let edge = node(
            &format!("http://{}", shield.addr),
            fleet(&redis.url(), "edge-1", Tier::Edge),
        )
        .await;
        joined(&[&shield, &edge]).await;
        assert_eq!(edge.get("/t/sale/page").await.text(), "/t/sale/page v1");
        assert_eq!(origin.hits(), 1);
        // The shield's delivery stalls; the origin publishes v2; the edge is purged.
        shield.running.proxy.hold_fleet(true);
        version.store(2, Ordering::SeqCst);
        let (status, answer) = purge(&edge, CI, serde_json::json!({"tags": ["sale"]})).await;
        assert_eq!(status, 200, "{answer}");
        let body = edge.get("/t/sale/page").await.text();
        if order {
            assert_eq!(
                body, "/t/sale/page v2",
                "the edge never refills with old content"
            );
        } else {
            // The classic failure the ordering prevents: the shield's old copy.
            assert_eq!(body, "/t/sale/page v1");
        }
        shield.running.proxy.hold_fleet(false);
    }
}

#[tokio::test]
async fn a_tag_purge_reaches_what_an_edge_got_through_a_shield() {
    let redis = Redis::start().await;
    let version = Arc::new(AtomicUsize::new(1));
    let origin = Origin::start(versioned_origin(version.clone())).await;
    let shield = node(&origin.url(), fleet(&redis.url(), "shield-1", Tier::Shield)).await;
    let edge = node(
        &format!("http://{}", shield.addr),
        fleet(&redis.url(), "edge-1", Tier::Edge),
    )
    .await;
    joined(&[&shield, &edge]).await;
    let res = edge.get("/t/sale/page").await;
    assert_eq!(res.text(), "/t/sale/page v1");
    assert_eq!(
        res.header("surrogate-key"),
        None,
        "the outermost node strips tags"
    );
    // The edge indexed the tag the shield kept on its answer.
    let (status, dry) = purge(
        &edge,
        CI,
        serde_json::json!({"tags": ["sale"], "dry_run": true}),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["report"]["tags"]["sale"], 1, "{dry}");
    // A client talking to the shield directly gets no tags either.
    assert_eq!(
        shield.get("/t/sale/page").await.header("surrogate-key"),
        None
    );
    version.store(2, Ordering::SeqCst);
    let (status, answer) = purge(
        &shield,
        CI,
        serde_json::json!({"tags": ["sale"], "wait": "10s"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["fleet"]["complete"], true, "{answer}");
    assert_eq!(edge.get("/t/sale/page").await.text(), "/t/sale/page v2");
}

#[tokio::test]
async fn purges_trimmed_before_a_node_read_them_make_it_revalidate_everything() {
    let redis = Redis::start().await;
    let version = Arc::new(AtomicUsize::new(1));
    let origin = Origin::start(versioned_origin(version.clone())).await;
    let mut fa = fleet(&redis.url(), "edge-a", Tier::Edge);
    fa.retention = 100;
    let a = node(&origin.url(), fa.clone()).await;
    fa.node = Some("edge-b".into());
    let b = node(&origin.url(), fa).await;
    joined(&[&a, &b]).await;
    assert_eq!(b.get("/t/sale/page").await.text(), "/t/sale/page v1");
    b.running.proxy.hold_fleet(true);
    // Far more purges than the stream keeps, none of them for `sale`.
    let mut last = String::new();
    for i in 0..400 {
        let (status, answer) = purge(&a, CI, serde_json::json!({"tags": [format!("t{i}")]})).await;
        assert_eq!(status, 200, "{answer}");
        last = answer["fleet"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    let seen_before = origin.hits();
    b.running.proxy.hold_fleet(false);
    applied(&b, &last).await;
    let metrics = admin_text(&b, "/.lacquer/metrics").await;
    assert!(
        metrics.contains("lacquer_fleet_gap_flushes_total 1"),
        "{metrics}"
    );
    // The entry is revalidated with the origin before it is reused.
    let res = b.get("/t/sale/page").await;
    assert_eq!(res.text(), "/t/sale/page v1");
    assert_eq!(origin.hits(), seen_before + 1, "one conditional request");
    assert_eq!(origin.last().header("if-none-match"), Some("\"v1\""));
    assert!(
        b.get("/t/sale/page").await.is_hit(),
        "revalidated, then reused"
    );
}

#[tokio::test]
async fn a_partition_longer_than_max_lag_revalidates_each_entry_once_then_recovers() {
    let mut redis = Redis::start_with(true).await;
    let origin = Origin::start(versioned_origin(Arc::new(AtomicUsize::new(1)))).await;
    let mut f = fleet(&redis.url(), "edge-a", Tier::Edge);
    // Long enough that the burst below fits well inside one max_lag window.
    f.max_lag = Duration::from_secs(3);
    f.redis_timeout = Duration::from_millis(300);
    let a = node(&origin.url(), f).await;
    joined(&[&a]).await;
    for path in ["/t/a/1", "/t/b/2"] {
        a.get(path).await;
        assert!(a.get(path).await.is_hit());
    }
    let before = origin.hits();
    let mut partitioned = a.running.proxy.fleet_partitioned().expect("fleet");
    redis.kill().await;
    tokio::time::timeout(Duration::from_secs(60), partitioned.wait_for(|p| *p))
        .await
        .expect("partitioned after max_lag")
        .expect("fleet alive");
    // Heavy load on two hot objects: each is revalidated once, with a conditional
    // request, and reused after that.
    let gets = (0..200).map(|i| {
        let path = if i % 2 == 0 { "/t/a/1" } else { "/t/b/2" };
        a.get(path)
    });
    let answers = futures_util::future::join_all(gets).await;
    assert!(answers.iter().all(|r| r.status == 200));
    assert!(
        answers
            .iter()
            .all(|r| r.cache_status().contains("detail=fleet-partitioned")),
        "{}",
        answers[0].cache_status()
    );
    let conditionals: Vec<_> = origin.seen()[before..]
        .iter()
        .map(|s| s.header("if-none-match").map(str::to_string))
        .collect();
    assert_eq!(
        conditionals.len(),
        2,
        "one revalidation per entry: {conditionals:?}"
    );
    assert!(conditionals.iter().all(|c| c.is_some()), "{conditionals:?}");
    // The partition shows in the fleet status.
    let metrics = admin_text(&a, "/.lacquer/metrics").await;
    assert!(
        metrics.contains("lacquer_fleet_partitioned_seconds_total"),
        "{metrics}"
    );
    // Redis comes back: the node reads the stream again and leaves the partition.
    redis.spawn().await;
    tokio::time::timeout(Duration::from_secs(60), partitioned.wait_for(|p| !*p))
        .await
        .expect("recovered")
        .expect("fleet alive");
    let (status, answer) = purge(&a, CI, serde_json::json!({"tags": ["a"], "wait": "10s"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["fleet"]["complete"], true, "{answer}");
}

#[tokio::test]
async fn a_confirmed_purge_survives_a_redis_restart() {
    let mut redis = Redis::start_with(true).await;
    let origin = Origin::start(versioned_origin(Arc::new(AtomicUsize::new(1)))).await;
    let mut fa = fleet(&redis.url(), "edge-a", Tier::Edge);
    fa.redis_timeout = Duration::from_millis(300);
    let a = node(&origin.url(), fa.clone()).await;
    joined(&[&a]).await;
    let (status, answer) =
        purge(&a, CI, serde_json::json!({"tags": ["sale"], "wait": "10s"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["fleet"]["complete"], true, "{answer}");
    let id = answer["fleet"]["id"].as_str().expect("id").to_string();
    let mut reads = a.running.proxy.fleet_reads().expect("fleet");
    redis.kill().await;
    let before = *reads.borrow_and_update();
    redis.spawn().await;
    // The node reads the stream again on its own once Redis is back; then its
    // status shows the stream as Redis restored it from its log.
    tokio::time::timeout(Duration::from_secs(30), reads.wait_for(|n| *n > before))
        .await
        .expect("reading again within 30 s")
        .expect("fleet alive");
    let status = fleet_status(&a).await;
    assert_eq!(status["bus"], "reachable", "{status}");
    assert_eq!(status["last_id"], id.as_str(), "{status}");
    assert_eq!(status["length"], 1, "{status}");
    // And the fleet goes on confirming purges.
    let (status, answer) =
        purge(&a, CI, serde_json::json!({"tags": ["next"], "wait": "10s"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["fleet"]["complete"], true, "{answer}");
}

#[tokio::test]
async fn a_shield_honours_the_fleet_header_only_from_its_peers_networks() {
    let redis = Redis::start().await;
    let origin = Origin::start(versioned_origin(Arc::new(AtomicUsize::new(1)))).await;
    let mut sf = fleet(&redis.url(), "shield-1", Tier::Shield);
    // The edge below talks from 127.0.0.1, outside this list.
    sf.peers = vec!["10.0.0.0/8".into()];
    let shield = node(&origin.url(), sf).await;
    let edge = node(
        &format!("http://{}", shield.addr),
        fleet(&redis.url(), "edge-1", Tier::Edge),
    )
    .await;
    joined(&[&shield, &edge]).await;
    assert_eq!(edge.get("/t/sale/page").await.text(), "/t/sale/page v1");
    // Not a peer: the shield stripped the tags, so the edge indexed none.
    let (status, dry) = purge(
        &edge,
        CI,
        serde_json::json!({"tags": ["sale"], "dry_run": true}),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["report"]["tags"]["sale"], 0, "{dry}");
    // And a forged position from a stranger costs the shield nothing: its cache
    // answers (the first request stores, the second is a hit).
    let forged = [("lacquer-purged-through", "99999999999999-0")];
    shield.get_with("/t/sale/other", &forged).await;
    let res = shield.get_with("/t/sale/other", &forged).await;
    assert!(res.is_hit(), "{}", res.cache_status());
    assert_eq!(res.header("surrogate-key"), None);
}
