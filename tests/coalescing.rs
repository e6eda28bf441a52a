//! Issue 4: the origin survives bursts, purges and outages. Single-flight
//! coalescing, hit-for-miss, stale-while-revalidate, stale-if-error, failover,
//! health checks and connection limits, against a real counting origin.
//!
//! Synchronisation is by signals: the origin's replies wait on gates the test
//! opens, and the proxy's coalescing activity (flights, waiters) is watched.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{gate, open, Origin, Proxy, Reply};
use lacquer::coalesce::Activity;
use lacquer::config::{HealthCheckSection, OriginSection};
use tokio::io::AsyncWriteExt;

/// Waits (bounded) until the proxy's coalescing activity satisfies `f`.
async fn activity(proxy: &Proxy, f: impl Fn(&Activity) -> bool) {
    let mut rx = proxy.running.proxy.flights().activity();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|a| f(a)))
        .await
        .expect("coalescing activity reached the expected state")
        .expect("activity channel open");
}

#[tokio::test]
async fn two_hundred_concurrent_misses_cost_one_origin_request() {
    let g = gate();
    let gg = g.clone();
    let origin = Origin::start(move |_| {
        Reply::ok(vec![b'x'; 10_000])
            .header("cache-control", "max-age=60")
            .gated(&gg)
    })
    .await;
    let proxy = Arc::new(Proxy::start(&origin).await);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let p = proxy.clone();
        tasks.push(tokio::spawn(async move { p.get("/hot").await }));
    }
    // One flight, 199 requests waiting on it; the origin holds the only request.
    activity(&proxy, |a| a.flights == 1 && a.waiters == 199).await;
    assert_eq!(origin.hits(), 1);
    open(&g);
    let mut collapsed = 0;
    for t in tasks {
        let res = t.await.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.body.len(), 10_000);
        if res.cache_status().contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(collapsed, 199);
    assert_eq!(
        origin.hits(),
        1,
        "200 concurrent misses, one origin request"
    );
    assert!(proxy.get("/hot").await.is_hit());
}

#[tokio::test]
async fn uncacheable_responses_release_waiters_in_parallel_and_skip_the_queue_later() {
    // Requests 2..=50 of the first burst, and all 50 of the second, must be at the
    // origin at the same time to get past these barriers: serialisation would hang.
    let first_burst = Arc::new(tokio::sync::Barrier::new(49));
    let second_burst = Arc::new(tokio::sync::Barrier::new(50));
    let g = gate();
    let n = Arc::new(AtomicUsize::new(0));
    let (b1, b2, gg, nn) = (
        first_burst.clone(),
        second_burst.clone(),
        g.clone(),
        n.clone(),
    );
    let origin = Origin::start(move |_| {
        let reply = Reply::ok("personal").header("cache-control", "private");
        match nn.fetch_add(1, Ordering::SeqCst) {
            0 => reply.gated(&gg),
            1..=49 => reply.after_barrier(&b1),
            _ => reply.after_barrier(&b2),
        }
    })
    .await;
    let proxy = Arc::new(Proxy::start(&origin).await);
    let burst = |proxy: &Arc<Proxy>| {
        (0..50)
            .map(|_| {
                let p = proxy.clone();
                tokio::spawn(async move { p.get("/me").await })
            })
            .collect::<Vec<_>>()
    };
    let tasks = burst(&proxy);
    activity(&proxy, |a| a.flights == 1 && a.waiters == 49).await;
    open(&g);
    for t in tasks {
        let res = t.await.unwrap();
        assert_eq!(res.text(), "personal");
        assert!(
            res.cache_status().contains("detail=private"),
            "{}",
            res.cache_status()
        );
    }
    assert_eq!(origin.hits(), 50);
    // Now the URL is known to be uncacheable: nobody queues, all go at once.
    for t in burst(&proxy) {
        let res = t.await.unwrap();
        assert!(
            !res.cache_status().contains("collapsed"),
            "{}",
            res.cache_status()
        );
    }
    assert_eq!(origin.hits(), 100);
}

#[tokio::test]
async fn waiters_give_up_with_504_after_coalesce_wait() {
    let g = gate();
    let gg = g.clone();
    let origin = Origin::start(move |_| {
        Reply::ok("slow")
            .header("cache-control", "max-age=60")
            .gated(&gg)
    })
    .await;
    let proxy = Arc::new(
        Proxy::start_with(&origin, |c| {
            c.cache.coalesce_wait = Duration::from_millis(200)
        })
        .await,
    );
    let p = proxy.clone();
    let leader = tokio::spawn(async move { p.get("/slow").await });
    activity(&proxy, |a| a.flights == 1).await;
    let waiter = proxy.get("/slow").await;
    assert_eq!(waiter.status, 504);
    assert!(
        waiter.cache_status().contains("detail=coalesce-timeout"),
        "{}",
        waiter.cache_status()
    );
    open(&g);
    assert_eq!(leader.await.unwrap().text(), "slow");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn the_fetch_goes_on_when_the_client_that_started_it_leaves() {
    let g = gate();
    let gg = g.clone();
    let origin = Origin::start(move |_| {
        Reply::ok("complete body")
            .header("cache-control", "max-age=60")
            .gated(&gg)
    })
    .await;
    let proxy = Arc::new(Proxy::start(&origin).await);
    // The leader speaks raw HTTP and hangs up while the origin is still thinking.
    let mut leader = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    leader
        .write_all(b"GET /obj HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    activity(&proxy, |a| a.flights == 1).await;
    let p = proxy.clone();
    let waiter = tokio::spawn(async move { p.get_with("/obj", &[("host", "test")]).await });
    activity(&proxy, |a| a.waiters == 1).await;
    drop(leader);
    open(&g);
    let res = waiter.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "complete body");
    assert!(proxy.get_with("/obj", &[("host", "test")]).await.is_hit());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn a_waiter_whose_vary_does_not_match_is_not_served_the_other_variant() {
    let g = gate();
    let gg = g.clone();
    let origin = Origin::start(move |req| {
        let v = req.header("x-v").unwrap_or("-").to_string();
        let reply = Reply::ok(format!("variant {v}"))
            .header("cache-control", "max-age=60")
            .header("vary", "X-V");
        if v == "a" {
            reply.gated(&gg)
        } else {
            reply
        }
    })
    .await;
    let proxy = Arc::new(Proxy::start(&origin).await);
    let p = proxy.clone();
    let a = tokio::spawn(async move { p.get_with("/v", &[("x-v", "a")]).await });
    activity(&proxy, |a| a.flights == 1).await;
    let p = proxy.clone();
    let b = tokio::spawn(async move { p.get_with("/v", &[("x-v", "b")]).await });
    activity(&proxy, |a| a.waiters == 1).await;
    open(&g);
    assert_eq!(a.await.unwrap().text(), "variant a");
    assert_eq!(b.await.unwrap().text(), "variant b");
    assert_eq!(origin.hits(), 2);
    assert!(proxy.get_with("/v", &[("x-v", "a")]).await.is_hit());
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once_in_the_background() {
    let g = gate();
    let n = Arc::new(AtomicUsize::new(0));
    let (gg, nn) = (g.clone(), n.clone());
    let origin = Origin::start(move |_| match nn.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::ok("v1")
            .header("cache-control", "max-age=0, stale-while-revalidate=60")
            .header("etag", "\"1\""),
        _ => Reply::ok("v2")
            .header("cache-control", "max-age=60")
            .header("etag", "\"2\"")
            .gated(&gg),
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    assert_eq!(proxy.get("/swr").await.text(), "v1");
    // Stale: served at once (the origin is held), one background revalidation.
    let stale = proxy.get("/swr").await;
    assert_eq!(stale.text(), "v1");
    assert!(
        stale
            .cache_status()
            .contains("fwd=stale; detail=stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    assert!(stale.age().is_some());
    let again = proxy.get("/swr").await;
    assert_eq!(again.text(), "v1");
    activity(&proxy, |a| a.flights == 1).await;
    assert_eq!(
        origin.hits(),
        2,
        "one background revalidation, not one per request"
    );
    open(&g);
    activity(&proxy, |a| a.flights == 0).await;
    let fresh = proxy.get("/swr").await;
    assert!(fresh.is_hit());
    assert_eq!(fresh.text(), "v2");
}

#[tokio::test]
async fn a_failed_background_revalidation_keeps_the_stale_entry() {
    let n = Arc::new(AtomicUsize::new(0));
    let nn = n.clone();
    let origin = Origin::start(move |_| match nn.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::ok("good")
            .header("cache-control", "max-age=0, stale-while-revalidate=60")
            .header("etag", "\"1\""),
        _ => Reply::status(500).body("broken"),
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/").await;
    assert_eq!(proxy.get("/").await.text(), "good");
    activity(&proxy, |a| a.flights == 0).await;
    assert_eq!(origin.hits(), 2);
    assert_eq!(
        proxy.get("/").await.text(),
        "good",
        "still served after the failure"
    );
}

#[tokio::test]
async fn stale_if_error_on_a_503() {
    let n = Arc::new(AtomicUsize::new(0));
    let nn = n.clone();
    let origin =
        Origin::start(
            move |req| match (req.uri.path(), nn.fetch_add(1, Ordering::SeqCst)) {
                ("/sie", 0) => Reply::ok("saved")
                    .header("cache-control", "max-age=0, stale-if-error=60")
                    .header("etag", "\"1\""),
                ("/plain", 1) => Reply::ok("lost")
                    .header("cache-control", "max-age=0")
                    .header("etag", "\"1\""),
                _ => Reply::status(503).body("down for maintenance"),
            },
        )
        .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/sie").await;
    let res = proxy.get("/sie").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "saved");
    assert!(
        res.cache_status()
            .contains("detail=stale-if-error-origin-5xx"),
        "{}",
        res.cache_status()
    );
    // Without stale-if-error, the client sees the origin's 503.
    proxy.get("/plain").await;
    let res = proxy.get("/plain").await;
    assert_eq!(res.status, 503);
    assert_eq!(res.text(), "down for maintenance");
}

#[tokio::test]
async fn stale_if_error_when_the_origin_is_really_gone() {
    let origin = Origin::start(|_| {
        Reply::ok("kept")
            .header("cache-control", "max-age=0, stale-if-error=300")
            .header("etag", "\"1\"")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/gone").await;
    origin.shutdown().await;
    let res = proxy.get("/gone").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "kept");
    assert!(
        res.cache_status()
            .contains("stale-if-error-origin-unreachable"),
        "{}",
        res.cache_status()
    );
    // No stale copy: a 502, not a hang.
    assert_eq!(proxy.get("/never-fetched").await.status, 502);
}

#[tokio::test]
async fn configured_stale_if_error_default_applies_to_responses_without_the_directive() {
    let n = Arc::new(AtomicUsize::new(0));
    let nn = n.clone();
    let origin = Origin::start(move |_| match nn.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::ok("kept")
            .header("cache-control", "max-age=0")
            .header("etag", "\"1\""),
        _ => Reply::status(502),
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.cache.stale_if_error = Duration::from_secs(60)
    })
    .await;
    proxy.get("/").await;
    assert_eq!(proxy.get("/").await.text(), "kept");
}

fn origin_section(url: String, name: &str) -> OriginSection {
    OriginSection {
        name: name.into(),
        url,
        connect_timeout: Duration::from_secs(2),
        ..OriginSection::default()
    }
}

#[tokio::test]
async fn failover_to_the_next_origin_when_the_primary_refuses() {
    let backup =
        Origin::start(|_| Reply::ok("from backup").header("cache-control", "max-age=60")).await;
    let dead = common::closed_port();
    let proxy = Proxy::start_url(&format!("http://{dead}"), |c| {
        c.origins.push(origin_section(backup.url(), "backup"));
    })
    .await;
    let res = proxy.get("/f").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "from backup");
    assert_eq!(backup.hits(), 1);
    // A POST is never retried: its body went with the first attempt.
    let post = proxy.request("POST", "/f", &[], "data").await;
    assert_eq!(post.status, 502);
    assert_eq!(backup.hits(), 1);
}

#[tokio::test]
async fn health_checks_move_traffic_and_fail_fast() {
    let primary_ok = Arc::new(AtomicBool::new(true));
    let ok = primary_ok.clone();
    let primary = Origin::start(move |req| {
        if req.uri.path() == "/health" {
            return Reply::status(if ok.load(Ordering::SeqCst) { 200 } else { 503 });
        }
        Reply::ok("primary")
            .header("cache-control", "max-age=0")
            .header("etag", "\"p\"")
    })
    .await;
    let backup = Origin::start(|_| Reply::ok("backup").header("cache-control", "no-store")).await;
    let check = HealthCheckSection {
        path: "/health".into(),
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
        expect_status: None,
    };
    let proxy = Proxy::start_with(&primary, |c| {
        c.origins[0].health_check = Some(check.clone());
        c.origins.push(origin_section(backup.url(), "backup"));
        c.cache.unhealthy_grace = Duration::from_secs(3600);
    })
    .await;
    let mut health = proxy.running.proxy.origins().list()[0].health();
    assert_eq!(proxy.get("/x").await.text(), "primary");
    // The primary starts failing its check: traffic moves to the backup.
    primary_ok.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| !*h))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(proxy.get("/y").await.text(), "backup");
    // It recovers: traffic comes back.
    primary_ok.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| *h))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(proxy.get("/z").await.text(), "primary");
}

#[tokio::test]
async fn with_every_origin_unhealthy_misses_fail_fast_and_stale_gets_grace() {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let origin = Origin::start(move |req| {
        if req.uri.path() == "/health" {
            return Reply::status(if h.load(Ordering::SeqCst) { 204 } else { 500 });
        }
        // No stale-if-error of its own: only the unhealthy grace can save it.
        Reply::ok("cached before the outage")
            .header("cache-control", "max-age=0")
            .header("etag", "\"1\"")
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.origins[0].health_check = Some(HealthCheckSection {
            path: "/health".into(),
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 2,
            expect_status: Some(204),
        });
        c.cache.unhealthy_grace = Duration::from_secs(3600);
    })
    .await;
    proxy.get("/page").await;
    let mut health = proxy.running.proxy.origins().list()[0].health();
    healthy.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), health.wait_for(|h| !*h))
        .await
        .unwrap()
        .unwrap();
    let before = origin
        .seen()
        .iter()
        .filter(|r| r.uri.path() != "/health")
        .count();
    let miss = proxy.get("/not-cached").await;
    assert_eq!(miss.status, 503);
    assert!(
        miss.cache_status().contains("detail=origin-unhealthy"),
        "{}",
        miss.cache_status()
    );
    let stale = proxy.get("/page").await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "cached before the outage");
    assert!(
        stale
            .cache_status()
            .contains("stale-if-error-origin-unhealthy"),
        "{}",
        stale.cache_status()
    );
    let after = origin
        .seen()
        .iter()
        .filter(|r| r.uri.path() != "/health")
        .count();
    assert_eq!(
        before, after,
        "an unhealthy origin gets no traffic but its health checks"
    );
}

#[tokio::test]
async fn max_connections_caps_what_the_origin_sees() {
    let g = gate();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let gg = g.clone();
    let origin = Origin::start(move |_| {
        let _ = arrived_tx.send(());
        Reply::ok("done").gated(&gg)
    })
    .await;
    let proxy = Arc::new(
        Proxy::start_with(&origin, |c| {
            c.origins[0].max_connections = 2;
            c.origins[0].connect_timeout = Duration::from_millis(200);
        })
        .await,
    );
    let mut held = Vec::new();
    for i in 0..2 {
        let p = proxy.clone();
        held.push(tokio::spawn(async move {
            p.request("POST", &format!("/w{i}"), &[], "x").await
        }));
    }
    for _ in 0..2 {
        arrived.recv().await.unwrap();
    }
    // Both slots are taken: the third request waits connect_timeout, then 503.
    let third = proxy.request("POST", "/w3", &[], "x").await;
    assert_eq!(third.status, 503);
    assert!(
        third.cache_status().contains("detail=origin-busy"),
        "{}",
        third.cache_status()
    );
    open(&g);
    for t in held {
        assert_eq!(t.await.unwrap().text(), "done");
    }
    assert_eq!(origin.hits(), 2);
    // Slots are released with the responses.
    assert_eq!(proxy.request("POST", "/w4", &[], "x").await.status, 200);
}

#[tokio::test]
async fn early_refresh_renews_a_hot_entry_before_it_expires() {
    let n = Arc::new(AtomicUsize::new(0));
    let nn = n.clone();
    let origin = Origin::start(move |_| {
        let v = nn.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::ok(format!("v{v}"))
            .header("cache-control", "max-age=2")
            .header("etag", &format!("\"{v}\""))
    })
    .await;
    // A window far longer than the lifetime: each fresh hit refreshes with
    // probability 1 - left/window (> 0.999 here).
    let proxy = Proxy::start_with(&origin, |c| {
        c.cache.early_refresh = Duration::from_secs(3600)
    })
    .await;
    assert_eq!(proxy.get("/hot").await.text(), "v1");
    let mut refreshed = false;
    for _ in 0..20 {
        let res = proxy.get("/hot").await;
        assert!(res.is_hit(), "hits are served while the refresh runs");
        if origin.hits() >= 2 {
            refreshed = true;
            break;
        }
        activity(&proxy, |a| a.flights == 0).await;
    }
    assert!(refreshed, "a background refresh was triggered");
    activity(&proxy, |a| a.flights == 0).await;
    let res = proxy.get("/hot").await;
    assert!(res.is_hit());
    assert_eq!(
        res.text(),
        "v2",
        "the refreshed object is served before the old one expired"
    );
}
