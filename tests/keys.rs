//! Cache keys and Vary through the whole stack (issue 3): which requests share an
//! entry, which never do, and what an attacker's headers cannot change.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{Origin, Proxy, Reply};
use lacquer::config::{NormalizerKind, NormalizerSection, QueryMode, RouteSection};

fn cacheable(body: impl Into<bytes::Bytes>) -> Reply {
    Reply::ok(body).header("cache-control", "max-age=600")
}

#[tokio::test]
async fn reordered_queries_and_tracking_parameters_share_one_entry() {
    let origin = Origin::start(|req| cacheable(req.uri.to_string())).await;
    let proxy = Proxy::start(&origin).await;
    let first = proxy.get("/p?b=2&a=1").await;
    for same in [
        "/p?a=1&b=2",
        "/p?b=2&a=1&utm_source=newsletter&utm_medium=mail",
        "/p?gclid=xyz&a=1&fbclid=q&b=2&mc_cid=1&mc_eid=2",
        "/p?a=1&&b=2&",
        "/%70?a=1&b=2", // %70 is "p": an unreserved escape, same resource
    ] {
        let res = proxy.get(same).await;
        assert!(res.is_hit(), "{same}: {}", res.cache_status());
        assert_eq!(res.body, first.body, "{same}");
    }
    // Different values or other parameters are different entries.
    assert!(!proxy.get("/p?a=1&b=3").await.is_hit());
    assert!(!proxy.get("/p?a=1&b=2&page=2").await.is_hit());
    // %2F is not "/": escapes of reserved characters keep their meaning.
    assert!(!proxy.get("/a%2Fb").await.is_hit());
    assert!(!proxy.get("/a/b").await.is_hit());
    assert_eq!(origin.hits(), 5);
}

#[tokio::test]
async fn host_case_port_and_trailing_dot_share_one_entry() {
    let origin = Origin::start(|_| cacheable("x")).await;
    let proxy = Proxy::start(&origin).await;
    proxy.get_with("/", &[("host", "example.com")]).await;
    for host in ["EXAMPLE.com", "example.com:80", "example.com."] {
        assert!(
            proxy.get_with("/", &[("host", host)]).await.is_hit(),
            "{host}"
        );
    }
    assert!(!proxy
        .get_with("/", &[("host", "example.com:8080")])
        .await
        .is_hit());
    assert!(!proxy
        .get_with("/", &[("host", "other.example")])
        .await
        .is_hit());
}

#[tokio::test]
async fn allowlist_route_keeps_only_listed_parameters() {
    let origin = Origin::start(|req| cacheable(req.uri.to_string())).await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.routes.push(RouteSection {
            path_prefix: Some("/search".into()),
            query_mode: Some(QueryMode::Allow),
            query_params: Some(vec!["q".into(), "page".into()]),
            ..RouteSection::default()
        });
    })
    .await;
    proxy.get("/search?q=shoes&session=1&ref=home").await;
    assert!(proxy.get("/search?ref=ad&q=shoes&session=2").await.is_hit());
    assert!(!proxy.get("/search?q=boots").await.is_hit());
    // Outside the route the default (drop list) applies: session is part of the key.
    proxy.get("/other?q=1&session=1").await;
    assert!(!proxy.get("/other?q=1&session=2").await.is_hit());
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn keyed_header_and_cookie_make_separate_entries() {
    let origin = Origin::start(|req| {
        let exp = req.header("x-experiment-id").unwrap_or("-").to_string();
        let cookie = req.header("cookie").unwrap_or("-").to_string();
        cacheable(format!("{exp}|{cookie}"))
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.key.headers = vec!["X-Experiment-Id".into()];
        c.key.headers_fold_case = vec!["X-Experiment-Id".into()];
        c.key.cookies = vec!["user_segment".into()];
    })
    .await;
    let a = proxy
        .get_with(
            "/",
            &[
                ("x-experiment-id", "A"),
                ("cookie", "user_segment=vip; sid=1"),
            ],
        )
        .await;
    assert_eq!(a.text(), "A|user_segment=vip; sid=1");
    // Same keyed values (case folded, other cookies ignored): shared.
    let a2 = proxy
        .get_with(
            "/",
            &[
                ("x-experiment-id", " a "),
                ("cookie", "sid=2; user_segment=vip"),
            ],
        )
        .await;
    assert!(a2.is_hit());
    assert_eq!(a2.body, a.body);
    // Another experiment or segment: its own entry.
    assert!(!proxy
        .get_with(
            "/",
            &[("x-experiment-id", "B"), ("cookie", "user_segment=vip")]
        )
        .await
        .is_hit());
    assert!(!proxy
        .get_with(
            "/",
            &[("x-experiment-id", "A"), ("cookie", "user_segment=basic")]
        )
        .await
        .is_hit());
    assert!(!proxy.get("/").await.is_hit());
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn accept_encoding_is_normalized_for_the_key_and_the_origin() {
    let origin = Origin::start(|req| {
        let ae = req.header("accept-encoding").unwrap_or("none").to_string();
        cacheable(ae).header("vary", "Accept-Encoding")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let br = proxy
        .get_with("/", &[("accept-encoding", "gzip, deflate, br")])
        .await;
    assert_eq!(br.text(), "br", "the origin sees the normalized value");
    assert!(proxy
        .get_with("/", &[("accept-encoding", "br")])
        .await
        .is_hit());
    assert!(proxy
        .get_with("/", &[("accept-encoding", "BR;q=1.0, gzip;q=0.5")])
        .await
        .is_hit());
    let gzip = proxy
        .get_with("/", &[("accept-encoding", "gzip, deflate")])
        .await;
    assert_eq!(gzip.text(), "gzip");
    assert!(proxy
        .get_with("/", &[("accept-encoding", "x-gzip, gzip;q=0.8")])
        .await
        .is_hit());
    let none = proxy.get("/").await;
    assert_eq!(none.text(), "identity");
    assert!(proxy
        .get_with("/", &[("accept-encoding", "deflate")])
        .await
        .is_hit());
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn accept_language_is_normalized_to_the_configured_list() {
    let origin = Origin::start(|req| {
        cacheable(req.header("accept-language").unwrap_or("none").to_string())
            .header("vary", "Accept-Language")
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.vary.normalizers.push(NormalizerSection {
            header: "Accept-Language".into(),
            kind: NormalizerKind::Language,
            languages: vec!["en".into(), "fr".into()],
            default: Some("en".into()),
        });
    })
    .await;
    assert_eq!(
        proxy
            .get_with("/", &[("accept-language", "fr-CA, fr;q=0.9")])
            .await
            .text(),
        "fr"
    );
    assert!(proxy
        .get_with("/", &[("accept-language", "fr")])
        .await
        .is_hit());
    assert_eq!(
        proxy
            .get_with("/", &[("accept-language", "ja, en;q=0.5")])
            .await
            .text(),
        "en"
    );
    assert!(
        proxy
            .get_with("/", &[("accept-language", "de")])
            .await
            .is_hit(),
        "unlisted language → default"
    );
    assert!(proxy.get("/").await.is_hit());
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn vary_values_compare_after_normalization() {
    let origin = Origin::start(|_| cacheable("x").header("vary", "Accept, X-Flags")).await;
    let proxy = Proxy::start(&origin).await;
    proxy
        .get_with(
            "/",
            &[
                ("accept", "text/html,  application/json"),
                ("x-flags", "a, b"),
            ],
        )
        .await;
    // Field lines combined, whitespace folded, Accept compared without case.
    let mut req = http::Request::get(proxy.url("/"));
    req = req
        .header("accept", "TEXT/HTML")
        .header("accept", "application/json")
        .header("x-flags", "a ,b");
    let res = proxy
        .send(req.body(http_body_util::Full::default()).unwrap())
        .await;
    assert!(res.is_hit(), "{}", res.cache_status());
    // X-Flags is case-sensitive.
    assert!(!proxy
        .get_with(
            "/",
            &[
                ("accept", "text/html, application/json"),
                ("x-flags", "A, B")
            ]
        )
        .await
        .is_hit());
}

#[tokio::test]
async fn vary_star_never_matches() {
    let origin = Origin::start(|_| cacheable("x").header("vary", "Accept-Encoding, *")).await;
    let proxy = Proxy::start(&origin).await;
    assert!(proxy
        .get("/")
        .await
        .cache_status()
        .contains("detail=vary-star"));
    assert!(!proxy.get("/").await.is_hit());
}

#[tokio::test]
async fn a_changed_vary_list_replaces_the_old_rule() {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let origin = Origin::start(move |req| {
        let v = req.header("x-v").unwrap_or("-").to_string();
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            cacheable(format!("old {v}")).header("vary", "X-V")
        } else {
            // The origin stops varying: one response for everybody.
            cacheable("new".to_string())
        }
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get_with("/", &[("x-v", "1")]).await;
    proxy.get_with("/", &[("x-v", "2")]).await;
    assert!(proxy.get_with("/", &[("x-v", "1")]).await.is_hit());
    // A request matching no variant fetches; the new response has no Vary.
    assert_eq!(proxy.get_with("/", &[("x-v", "3")]).await.text(), "new");
    let res = proxy.get_with("/", &[("x-v", "1")]).await;
    assert!(res.is_hit());
    assert_eq!(res.text(), "new", "old variants are gone with the old rule");
}

#[tokio::test]
async fn the_variant_cap_evicts_the_least_recently_used() {
    let origin = Origin::start(|req| {
        cacheable(req.header("x-v").unwrap_or("-").to_string()).header("vary", "X-V")
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| c.cache.max_variants = 2).await;
    proxy.get_with("/", &[("x-v", "a")]).await;
    proxy.get_with("/", &[("x-v", "b")]).await;
    assert!(proxy.get_with("/", &[("x-v", "a")]).await.is_hit()); // a is now more recent than b
    proxy.get_with("/", &[("x-v", "c")]).await; // over the cap: b goes
    assert!(proxy.get_with("/", &[("x-v", "a")]).await.is_hit());
    assert!(proxy.get_with("/", &[("x-v", "c")]).await.is_hit());
    assert!(!proxy.get_with("/", &[("x-v", "b")]).await.is_hit());
    assert_eq!(origin.hits(), 4);
}

#[tokio::test]
async fn vary_on_cookie_is_stored_only_when_allowed_and_never_shared() {
    let origin = Origin::start(|req| {
        cacheable(format!(
            "page for {}",
            req.header("cookie").unwrap_or("anonymous")
        ))
        .header("vary", "Cookie")
    })
    .await;
    // Default: not stored at all.
    let proxy = Proxy::start(&origin).await;
    let res = proxy.get_with("/", &[("cookie", "user=alice")]).await;
    assert!(
        res.cache_status().contains("detail=vary-private"),
        "{}",
        res.cache_status()
    );
    assert!(!proxy
        .get_with("/", &[("cookie", "user=alice")])
        .await
        .is_hit());
    // Allowed: each cookie value gets its own variant.
    let proxy = Proxy::start_with(&origin, |c| c.vary.allow_private = vec!["cookie".into()]).await;
    proxy.get_with("/", &[("cookie", "user=alice")]).await;
    let alice = proxy.get_with("/", &[("cookie", "user=alice")]).await;
    assert!(alice.is_hit());
    assert_eq!(alice.text(), "page for user=alice");
    let bob = proxy.get_with("/", &[("cookie", "user=bob")]).await;
    assert!(!bob.is_hit());
    assert_eq!(bob.text(), "page for user=bob");
    let anon = proxy.get("/").await;
    assert_eq!(anon.text(), "page for anonymous");
}

/// An origin that trusts the classic poisoning headers: it would build links from
/// X-Forwarded-Host, route by X-Original-URL, redirect on X-Forwarded-Scheme.
fn gullible_origin(req: &common::Seen) -> Reply {
    let host = req.header("x-forwarded-host").unwrap_or("?");
    let path = req.header("x-original-url").unwrap_or(req.uri.path());
    let scheme = req.header("x-forwarded-scheme").unwrap_or("https");
    cacheable(format!("<a href=\"{scheme}://{host}{path}\">"))
        .header("x-seen-random", req.header("x-random").unwrap_or("-"))
}

#[tokio::test]
async fn poisoning_headers_cannot_change_what_others_are_served() {
    let origin = Origin::start(gullible_origin).await;
    let proxy = Proxy::start(&origin).await;
    let host = [("host", "shop.example")];
    // The attacker goes first, on a cold cache.
    let attack = proxy
        .get_with(
            "/home",
            &[
                ("host", "shop.example"),
                ("x-forwarded-host", "evil.example"),
                ("x-original-url", "/admin"),
                ("x-forwarded-scheme", "http"),
                ("x-random", "payload"),
            ],
        )
        .await;
    let seen = origin.last();
    // X-Forwarded-Host is overwritten with the real Host; the URL and scheme
    // overrides are stripped; the random header is forwarded unchanged.
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example"));
    assert_eq!(seen.header("x-original-url"), None);
    assert_eq!(seen.header("x-forwarded-scheme"), None);
    assert_eq!(seen.header("x-random"), Some("payload"));
    assert_eq!(attack.text(), "<a href=\"https://shop.example/home\">");
    // The victim gets the clean page, from the same entry (nothing was keyed on those).
    let victim = proxy.get_with("/home", &host).await;
    assert!(victim.is_hit());
    assert_eq!(victim.text(), "<a href=\"https://shop.example/home\">");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn forwarded_unkeyed_headers_need_the_origins_vary_to_matter() {
    // With the strip list emptied, X-Original-URL reaches the origin unchanged and is
    // not part of the key. An origin that uses it must say so with Vary, and then
    // each value gets its own variant.
    let origin = Origin::start(|req| gullible_origin(req).header("vary", "X-Original-URL")).await;
    let proxy = Proxy::start_with(&origin, |c| c.server.strip_request_headers.clear()).await;
    let attack = proxy
        .get_with(
            "/home",
            &[("host", "shop.example"), ("x-original-url", "/admin")],
        )
        .await;
    assert!(attack.text().contains("/admin"));
    assert_eq!(origin.last().header("x-original-url"), Some("/admin"));
    let victim = proxy.get_with("/home", &[("host", "shop.example")]).await;
    assert!(!victim.is_hit(), "a different variant");
    assert_eq!(
        victim.text(),
        "<a href=\"https://?/home\">".replace('?', "shop.example")
    );
}

#[tokio::test]
async fn debug_headers_show_the_key_and_the_variant() {
    let origin = Origin::start(|_| cacheable("x").header("vary", "Accept-Encoding")).await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.server.debug_headers = true;
        c.key.cookies = vec!["seg".into()];
    })
    .await;
    let miss = proxy
        .get_with(
            "/d?b=1&a=2&utm_x=1",
            &[
                ("host", "Example.com"),
                ("accept-encoding", "gzip"),
                ("cookie", "seg=v"),
            ],
        )
        .await;
    assert_eq!(
        miss.header("x-lacquer-key"),
        Some("http://example.com/d?a=2&b=1 | c:seg=v")
    );
    assert_eq!(
        miss.header("x-lacquer-variant"),
        Some("accept-encoding=gzip")
    );
    let hit = proxy
        .get_with(
            "/d?a=2&b=1",
            &[
                ("host", "example.com"),
                ("accept-encoding", "gzip"),
                ("cookie", "seg=v"),
            ],
        )
        .await;
    assert!(hit.is_hit());
    assert_eq!(
        hit.header("x-lacquer-variant"),
        Some("accept-encoding=gzip")
    );
    // Off by default.
    let proxy = Proxy::start(&origin).await;
    assert_eq!(proxy.get("/").await.header("x-lacquer-key"), None);
}
