//! Issue 5: surrogate keys and purges through the authenticated, scoped admin API
//! and the PURGE method. The origin's request counter proves what went through.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{add_token, gate, open, Origin, Proxy, Reply};
use lacquer::config::Operation::{All, Prefix, Tag, Url};

const CI: &str = "ci-secret-0123456789";
const OPS: &str = "ops-secret-0123456789";
const NARROW: &str = "narrow-secret-0123456789";

/// Every response is tagged from its path: /campaign/... carries campaign:summer,
/// /product/N carries product:N, everything carries site:all.
fn tagged_origin(req: &common::Seen) -> Reply {
    let path = req.uri.path().to_string();
    let mut keys = vec!["site:all".to_string()];
    if path.starts_with("/campaign/") {
        keys.push("campaign:summer".into());
    }
    if let Some(n) = path.strip_prefix("/product/") {
        keys.push(format!("product:{n}"));
    }
    let lang = req.header("accept-language").unwrap_or("none").to_string();
    Reply::ok(format!("{path} {lang}"))
        .header("cache-control", "max-age=600")
        .header("surrogate-key", &keys.join(" "))
        .header("cache-tag", "from-cache-tag")
        .header("vary", "Accept-Language")
}

async fn proxy_with_tokens(origin: &Origin) -> Proxy {
    Proxy::start_with(origin, |c| {
        add_token(c, "ci", CI, &[Tag, Url, Prefix], &[], &[]);
        add_token(c, "ops", OPS, &[Tag, Url, Prefix, All], &[], &[]);
        add_token(c, "narrow", NARROW, &[Tag], &["campaign:*"], &[]);
    })
    .await
}

fn report(res: &common::Res) -> serde_json::Value {
    assert_eq!(res.status, 200, "{}", res.text());
    serde_json::from_slice(&res.body).expect("purge answers JSON")
}

#[tokio::test]
async fn tag_purge_covers_every_url_and_variant_carrying_the_tag() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = proxy_with_tokens(&origin).await;
    for path in ["/campaign/a", "/campaign/b", "/product/1"] {
        for lang in ["en", "fr"] {
            let res = proxy.get_with(path, &[("accept-language", lang)]).await;
            // Tag headers are for the cache, not for clients (default: stripped).
            assert_eq!(res.header("surrogate-key"), None);
            assert_eq!(res.header("cache-tag"), None);
        }
    }
    assert_eq!(origin.hits(), 6);
    let r = report(
        &proxy
            .purge(Some(CI), r#"{"tags":["campaign:summer","nobody:uses"]}"#)
            .await,
    );
    assert_eq!(
        r["report"]["tags"]["campaign:summer"], 4,
        "two URLs × two variants"
    );
    assert_eq!(r["report"]["tags"]["nobody:uses"], 0);
    assert_eq!(r["token"], "ci");
    for lang in ["en", "fr"] {
        assert!(!proxy
            .get_with("/campaign/a", &[("accept-language", lang)])
            .await
            .is_hit());
        assert!(!proxy
            .get_with("/campaign/b", &[("accept-language", lang)])
            .await
            .is_hit());
        assert!(proxy
            .get_with("/product/1", &[("accept-language", lang)])
            .await
            .is_hit());
    }
    assert_eq!(origin.hits(), 10);
}

#[tokio::test]
async fn tag_headers_can_be_kept_for_clients() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = Proxy::start_with(&origin, |c| c.tags.strip = false).await;
    let res = proxy.get("/product/7").await;
    assert_eq!(res.header("surrogate-key"), Some("site:all product:7"));
}

#[tokio::test]
async fn purge_method_purges_every_variant_of_a_url_with_a_token() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = proxy_with_tokens(&origin).await;
    for lang in ["en", "fr", "de"] {
        proxy
            .get_with("/product/9", &[("accept-language", lang)])
            .await;
    }
    let before = origin.hits();
    // No token, a wrong token, a token without the url operation: refused, nothing purged.
    assert_eq!(
        proxy.request("PURGE", "/product/9", &[], "").await.status,
        401
    );
    assert_eq!(
        proxy
            .request(
                "PURGE",
                "/product/9",
                &[("authorization", "Bearer wrong-secret-000000000")],
                ""
            )
            .await
            .status,
        401
    );
    let narrow = proxy
        .request(
            "PURGE",
            "/product/9",
            &[("authorization", &format!("Bearer {NARROW}"))],
            "",
        )
        .await;
    assert_eq!(narrow.status, 403);
    assert!(proxy
        .get_with("/product/9", &[("accept-language", "en")])
        .await
        .is_hit());
    let ok = proxy
        .request(
            "PURGE",
            "/product/9",
            &[("authorization", &format!("Bearer {CI}"))],
            "",
        )
        .await;
    let r = report(&ok);
    let url = format!("http://{}/product/9", proxy.addr);
    assert_eq!(r["report"]["urls"][&url], 3, "{r}");
    for lang in ["en", "fr", "de"] {
        assert!(!proxy
            .get_with("/product/9", &[("accept-language", lang)])
            .await
            .is_hit());
    }
    assert_eq!(
        origin.seen().iter().filter(|s| s.method == "PURGE").count(),
        0,
        "PURGE never reaches the origin"
    );
    assert_eq!(origin.hits(), before + 3);
}

#[tokio::test]
async fn prefix_purge_and_the_break_glass_scope() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = proxy_with_tokens(&origin).await;
    for p in ["/product/1", "/product/2", "/campaign/x"] {
        proxy.get(p).await;
    }
    let host = proxy.addr.to_string();
    let dry = report(
        &proxy
            .purge(
                Some(CI),
                &format!(r#"{{"prefixes":["{host}/product/"],"dry_run":true}}"#),
            )
            .await,
    );
    assert_eq!(dry["report"]["prefixes"][format!("{host}/product/")], 2);
    assert!(
        proxy.get("/product/1").await.is_hit(),
        "a dry run changes nothing"
    );
    report(
        &proxy
            .purge(
                Some(CI),
                &format!(r#"{{"prefixes":["http://{host}/product/"]}}"#),
            )
            .await,
    );
    assert!(!proxy.get("/product/1").await.is_hit());
    assert!(!proxy.get("/product/2").await.is_hit());
    assert!(proxy.get("/campaign/x").await.is_hit());
    // Everything: only with the break-glass scope.
    let refused = proxy.purge(Some(CI), r#"{"all":true}"#).await;
    assert_eq!(refused.status, 403);
    assert!(refused.text().contains("break-glass"), "{}", refused.text());
    assert!(proxy.get("/campaign/x").await.is_hit());
    report(&proxy.purge(Some(OPS), r#"{"all":true}"#).await);
    assert!(!proxy.get("/campaign/x").await.is_hit());
}

#[tokio::test]
async fn token_scopes_and_authentication_failures_change_nothing() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = proxy_with_tokens(&origin).await;
    proxy.get("/campaign/z").await;
    proxy.get("/product/3").await;
    let hits = origin.hits();
    let cases: [(Option<&str>, &str, u16); 6] = [
        (None, r#"{"tags":["campaign:summer"]}"#, 401),
        (
            Some("not-the-secret-at-all"),
            r#"{"tags":["campaign:summer"]}"#,
            401,
        ),
        (Some(NARROW), r#"{"tags":["product:3"]}"#, 403),
        (
            Some(NARROW),
            r#"{"tags":["campaign:summer","product:3"]}"#,
            403,
        ),
        (Some(NARROW), r#"{"prefixes":["x/"]}"#, 403),
        (Some(NARROW), r#"{"urls":["http://x/"]}"#, 403),
    ];
    for (token, body, status) in cases {
        let res = proxy.purge(token, body).await;
        assert_eq!(res.status, status, "{token:?} {body}: {}", res.text());
    }
    assert!(proxy.get("/campaign/z").await.is_hit());
    assert!(proxy.get("/product/3").await.is_hit());
    assert_eq!(origin.hits(), hits, "nothing reached the origin");
    // Within scope: allowed.
    report(
        &proxy
            .purge(Some(NARROW), r#"{"tags":["campaign:summer"]}"#)
            .await,
    );
    assert!(!proxy.get("/campaign/z").await.is_hit());
}

#[tokio::test]
async fn malformed_purges_get_400_naming_the_problem_and_change_nothing() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = Proxy::start_with(&origin, |c| {
        add_token(c, "ci", CI, &[Tag, Url, Prefix], &[], &[]);
        c.admin.max_batch = 3;
    })
    .await;
    proxy.get("/campaign/m").await;
    let cases = [
        ("{not json", "invalid purge JSON"),
        (r#"{"tags":["a"],"colour":"red"}"#, "unknown field"),
        (r#"{}"#, "empty purge"),
        (r#"{"tags":["a","b","c","d"]}"#, "limit of 3"),
        ("{\"tags\":[\"campaign:summer\",\"bad\\u0007\"]}", "tags[1]"),
        (r#"{"tags":[""]}"#, "tags[0]"),
        (r#"{"urls":["/relative"]}"#, "urls[0]"),
        (r#"{"tags":"campaign:summer"}"#, "invalid purge JSON"),
    ];
    for (body, message) in cases {
        let res = proxy.purge(Some(CI), body).await;
        assert_eq!(res.status, 400, "{body}");
        assert!(res.text().contains(message), "{body}: {}", res.text());
    }
    assert!(
        proxy.get("/campaign/m").await.is_hit(),
        "nothing was purged"
    );
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_first_result_and_does_nothing_more() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = proxy_with_tokens(&origin).await;
    proxy.get("/campaign/r").await;
    let body = r#"{"tags":["campaign:summer"],"request_id":"deploy-42"}"#;
    let first = proxy.purge(Some(CI), body).await;
    let first_json = report(&first);
    assert_eq!(first_json["report"]["tags"]["campaign:summer"], 1);
    // The object comes back (fetched after the purge).
    proxy.get("/campaign/r").await;
    assert!(proxy.get("/campaign/r").await.is_hit());
    let again = proxy.purge(Some(CI), body).await;
    assert_eq!(report(&again), first_json, "the first result, replayed");
    assert_eq!(again.header("lacquer-idempotent-replay"), Some("true"));
    assert!(
        proxy.get("/campaign/r").await.is_hit(),
        "the replay purged nothing"
    );
}

#[tokio::test]
async fn soft_purge_serves_stale_once_then_revalidates() {
    let n = Arc::new(AtomicUsize::new(0));
    let nn = n.clone();
    let origin = Origin::start(move |_| {
        let v = nn.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::ok(format!("v{v}"))
            .header("cache-control", "max-age=600, stale-while-revalidate=60")
            .header("surrogate-key", "price:eur")
            .header("etag", &format!("\"{v}\""))
    })
    .await;
    let proxy = proxy_with_tokens(&origin).await;
    assert_eq!(proxy.get("/price").await.text(), "v1");
    let r = report(
        &proxy
            .purge(Some(CI), r#"{"tags":["price:eur"],"soft":true}"#)
            .await,
    );
    assert_eq!(r["report"]["soft"], true);
    // Still served (stale) at once, while one background revalidation runs.
    let stale = proxy.get("/price").await;
    assert_eq!(stale.text(), "v1");
    assert!(
        stale.cache_status().contains("stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    let mut rx = proxy.running.proxy.flights().activity();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|a| a.flights == 0))
        .await
        .unwrap()
        .unwrap();
    let fresh = proxy.get("/price").await;
    assert!(fresh.is_hit(), "{}", fresh.cache_status());
    assert_eq!(fresh.text(), "v2");
    assert_eq!(origin.hits(), 2, "no stampede: one revalidation");
}

#[tokio::test]
async fn a_fetch_in_flight_during_a_purge_is_not_stored_or_served_as_fresh_after_it() {
    let g = gate();
    let n = Arc::new(AtomicUsize::new(0));
    let (gg, nn) = (g.clone(), n.clone());
    let origin = Origin::start(move |_| {
        let v = nn.fetch_add(1, Ordering::SeqCst) + 1;
        let reply = Reply::ok(format!("v{v}"))
            .header("cache-control", "max-age=600")
            .header("surrogate-key", "race");
        if v == 1 {
            reply.gated(&gg)
        } else {
            reply
        }
    })
    .await;
    let proxy = Arc::new(proxy_with_tokens(&origin).await);
    let p = proxy.clone();
    let early = tokio::spawn(async move { p.get("/race").await });
    let mut rx = proxy.running.proxy.flights().activity();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|a| a.flights == 1))
        .await
        .unwrap()
        .unwrap();
    // The purge lands while the origin is still answering the first request.
    report(&proxy.purge(Some(CI), r#"{"tags":["race"]}"#).await);
    // A request after the purge does not join the old fetch: it gets new content.
    let after = proxy.get("/race").await;
    assert_eq!(after.text(), "v2");
    open(&g);
    assert_eq!(
        early.await.unwrap().text(),
        "v1",
        "the request from before the purge gets its answer"
    );
    // The late v1 was not stored over v2.
    let later = proxy.get("/race").await;
    assert!(later.is_hit());
    assert_eq!(later.text(), "v2");
}

/// A proxy holding /product/0 to /product/19 (tags site:all, from-cache-tag and
/// product:N), and its origin.
async fn twenty_products() -> (Origin, Proxy) {
    let origin = Origin::start(tagged_origin).await;
    let proxy = proxy_with_tokens(&origin).await;
    for i in 0..20 {
        proxy.get(&format!("/product/{i}")).await;
    }
    (origin, proxy)
}

#[tokio::test]
async fn the_tag_index_empties_when_everything_is_purged_and_swept() {
    let (_origin, proxy) = twenty_products().await;
    let stats = proxy.running.proxy.stats();
    assert_eq!(
        stats["tag_index"], 22,
        "site:all, from-cache-tag, product:0..19: {stats}"
    );
    report(&proxy.purge(Some(OPS), r#"{"all":true}"#).await);
    // (The server's own sweeper may get there first: the figures are the same.)
    proxy.sweep();
    let stats = proxy.running.proxy.stats();
    assert_eq!(stats["tag_index"], 0, "{stats}");
    assert_eq!(stats["entries"], 0, "{stats}");
    assert_eq!(stats["purge_marks"], 0, "{stats}");
}

#[tokio::test]
async fn a_sweep_looks_only_where_the_purged_tags_are() {
    let (_origin, proxy) = twenty_products().await;
    let scanned = || proxy.running.proxy.stats()["sweep_shards_scanned"].clone();
    assert_eq!(scanned(), 0);
    // A tag nothing carries: marks to forget, nothing to scan. (The server's own
    // sweeper may get there first; sweeps run one at a time, so the counts are the
    // same.)
    report(
        &proxy
            .purge(Some(OPS), r#"{"tags":["campaign:none"]}"#)
            .await,
    );
    proxy.sweep();
    assert_eq!(scanned(), 0);
    // A tag on one entry: one shard scanned, the entry reclaimed.
    report(&proxy.purge(Some(OPS), r#"{"tags":["product:3"]}"#).await);
    proxy.sweep();
    assert_eq!(scanned(), 1);
    let stats = proxy.running.proxy.stats();
    assert_eq!(stats["entries"], 19, "{stats}");
    assert_eq!(stats["purge_marks"], 0, "{stats}");
    assert!(proxy.get("/product/4").await.is_hit());
    assert!(!proxy.get("/product/3").await.is_hit());
}

#[tokio::test]
async fn surrogate_control_is_obeyed_first_and_never_sent_downstream() {
    let origin = Origin::start(|_| {
        Reply::ok("x")
            .header("surrogate-control", "max-age=900")
            .header("cdn-cache-control", "max-age=60")
            .header("cache-control", "no-store")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let res = proxy.get("/sc").await;
    assert!(
        matches!(res.ttl(), Some(899..=900)),
        "{}",
        res.cache_status()
    );
    assert_eq!(res.header("surrogate-control"), None);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert!(proxy.get("/sc").await.is_hit());
}

#[tokio::test]
async fn admin_api_on_its_own_listener_with_an_ip_allowlist() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = Proxy::start_with(&origin, |c| {
        add_token(c, "ci", CI, &[Tag], &[], &[]);
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = proxy.running.admin_addr.expect("admin listener");
    proxy.get("/campaign/q").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Full<bytes::Bytes>>(
        hyper_util::client::legacy::connect::HttpConnector::new(),
    );
    let req = http::Request::post(format!("http://{admin}/purge"))
        .header("authorization", format!("Bearer {CI}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"tags":["campaign:summer"]}"#,
        )))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(!proxy.get("/campaign/q").await.is_hit());
    let health = client
        .get(format!("http://{admin}/healthz").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The client listener no longer serves the admin API: /.lacquer/ goes to the origin.
    let passthrough = proxy.purge(Some(CI), r#"{"tags":["x"]}"#).await;
    assert_eq!(origin.last().uri.path(), "/.lacquer/purge");
    assert_eq!(passthrough.status, 200);

    // An allowlist without loopback: refused before any token check.
    let origin2 = Origin::start(tagged_origin).await;
    let locked = Proxy::start_with(&origin2, |c| {
        add_token(c, "ci", CI, &[Tag], &[], &[]);
        c.admin.allow_ips = vec!["10.0.0.0/8".into()];
    })
    .await;
    let res = locked
        .purge(Some(CI), r#"{"tags":["campaign:summer"]}"#)
        .await;
    assert_eq!(res.status, 403);
    assert!(res.text().contains("not allowed"));
}

#[tokio::test]
async fn stats_need_a_token_and_healthz_does_not() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = proxy_with_tokens(&origin).await;
    assert_eq!(proxy.get("/.lacquer/healthz").await.status, 200);
    assert_eq!(proxy.get("/.lacquer/stats").await.status, 401);
    let stats = proxy
        .get_with(
            "/.lacquer/stats",
            &[("authorization", &format!("Bearer {CI}"))],
        )
        .await;
    assert_eq!(stats.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert!(v["entries"].is_u64());
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn the_sweep_after_a_purge_leaves_everything_else_alone() {
    let origin = Origin::start(tagged_origin).await;
    let proxy = proxy_with_tokens(&origin).await;
    proxy.get("/campaign/s").await;
    proxy.get("/product/5").await;
    report(
        &proxy
            .purge(Some(CI), r#"{"tags":["campaign:summer"]}"#)
            .await,
    );
    proxy.sweep(); // (or the server's own sweeper: the figures are the same)
    let stats = proxy.running.proxy.stats();
    assert_eq!(
        stats["entries"], 1,
        "the purged entry was reclaimed: {stats}"
    );
    assert_eq!(stats["purge_marks"], 0);
    assert!(
        proxy.get("/product/5").await.is_hit(),
        "not covered by the purge"
    );
    assert!(!proxy.get("/campaign/s").await.is_hit());
    assert!(
        proxy.get("/campaign/s").await.is_hit(),
        "fetched again after the purge"
    );
}
