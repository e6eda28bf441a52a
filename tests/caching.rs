//! RFC 9111 behaviour of the whole stack: a real origin, the real proxy, real
//! HTTP. Each test states the origin's answer next to the client's expectation.

#![allow(clippy::type_complexity)] // tables of cases

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{Origin, Proxy, Reply};

#[tokio::test]
async fn miss_then_hit_costs_one_origin_request() {
    let origin = Origin::start(|_| Reply::ok("hello").header("cache-control", "max-age=60")).await;
    let proxy = Proxy::start(&origin).await;
    let first = proxy.get("/a").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "hello");
    first.assert_cache_status("lacquer; fwd=uri-miss; fwd-status=200; stored; ", 60);
    let second = proxy.get("/a").await;
    assert_eq!(second.text(), "hello");
    assert!(second.is_hit(), "{}", second.cache_status());
    // Age has one-second resolution (HTTP dates do): 0, or 1 across a second boundary.
    assert!(second.age().is_some_and(|a| a <= 1), "{:?}", second.age());
    assert_eq!(origin.hits(), 1);
    // Another URL is another entry; an empty query is the same resource.
    proxy.get("/b").await;
    proxy.get("/a?").await;
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn s_maxage_beats_max_age() {
    let origin =
        Origin::start(|_| Reply::ok("x").header("cache-control", "max-age=0, s-maxage=120")).await;
    let proxy = Proxy::start(&origin).await;
    assert!(matches!(proxy.get("/").await.ttl(), Some(119..=120)));
    assert!(proxy.get("/").await.is_hit());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn cdn_cache_control_beats_cache_control() {
    // RFC 9213: the targeted field governs our freshness; Cache-Control is left for browsers.
    let origin = Origin::start(|_| {
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=300")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let first = proxy.get("/").await;
    assert!(
        matches!(first.ttl(), Some(299..=300)),
        "{}",
        first.cache_status()
    );
    assert_eq!(
        first.header("cache-control"),
        Some("no-store"),
        "end-to-end header passes through"
    );
    assert!(proxy.get("/").await.is_hit());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn targeted_fields_are_configurable_and_can_be_stripped() {
    let origin = Origin::start(|_| {
        Reply::ok("x")
            .header("lacquer-cache-control", "max-age=50")
            .header("cache-control", "max-age=5")
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.cache.targeted_fields = vec!["Lacquer-Cache-Control".into(), "CDN-Cache-Control".into()];
        c.cache.forward_targeted_fields = false;
    })
    .await;
    let res = proxy.get("/").await;
    assert!(matches!(res.ttl(), Some(49..=50)), "{}", res.cache_status());
    assert_eq!(res.header("lacquer-cache-control"), None);
    assert_eq!(res.header("cache-control"), Some("max-age=5"));
}

/// Responses a shared cache must not share (RFC 9111 §3, §3.5).
#[tokio::test]
async fn private_and_personal_responses_are_not_shared() {
    let cases: Vec<(&str, Reply, Vec<(&str, &str)>, &str)> = vec![
        (
            "private",
            Reply::ok("mine").header("cache-control", "private, max-age=60"),
            vec![],
            "detail=private",
        ),
        (
            "no-store",
            Reply::ok("mine").header("cache-control", "no-store, max-age=60"),
            vec![],
            "detail=no-store",
        ),
        (
            "authorization",
            Reply::ok("mine").header("cache-control", "max-age=60"),
            vec![("authorization", "Bearer alice")],
            "detail=authorization",
        ),
        (
            "set-cookie",
            Reply::ok("mine")
                .header("cache-control", "max-age=60")
                .header("set-cookie", "session=alice"),
            vec![],
            "detail=set-cookie",
        ),
    ];
    for (name, reply, req_headers, detail) in cases {
        let origin = Origin::start(move |_| reply.clone()).await;
        let proxy = Proxy::start(&origin).await;
        let first = proxy.get_with("/p", &req_headers).await;
        assert!(
            first.cache_status().contains(detail),
            "{name}: {}",
            first.cache_status()
        );
        let second = proxy.get_with("/p", &req_headers).await;
        assert!(!second.is_hit(), "{name} was shared");
        assert_eq!(origin.hits(), 2, "{name}");
    }
}

#[tokio::test]
async fn authorization_is_shared_only_when_the_response_allows_it() {
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "must-revalidate, max-age=60",
    ] {
        let origin = Origin::start(move |_| Reply::ok("shared").header("cache-control", cc)).await;
        let proxy = Proxy::start(&origin).await;
        proxy.get_with("/", &[("authorization", "Bearer a")]).await;
        assert!(
            proxy
                .get_with("/", &[("authorization", "Bearer b")])
                .await
                .is_hit(),
            "{cc}"
        );
        assert_eq!(origin.hits(), 1, "{cc}");
    }
}

#[tokio::test]
async fn set_cookie_storage_is_configurable() {
    let origin = Origin::start(|_| {
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("set-cookie", "a=b")
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| c.cache.store_set_cookie = true).await;
    proxy.get("/").await;
    assert!(proxy.get("/").await.is_hit());
}

#[tokio::test]
async fn stale_entry_is_revalidated_and_304_updates_headers() {
    let version = Arc::new(AtomicUsize::new(0));
    let v = version.clone();
    let origin = Origin::start(move |req| {
        let n = v.fetch_add(1, Ordering::SeqCst);
        if req.header("if-none-match") == Some("\"v1\"") {
            // RFC 9111 §4.3.4: the 304's fields replace the stored ones.
            return Reply::status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=60")
                .header("x-rev", &n.to_string());
        }
        Reply::ok("body-v1")
            .header("etag", "\"v1\"")
            .header("cache-control", "max-age=0")
            .header("x-rev", "first")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let first = proxy.get("/r").await;
    assert_eq!(first.header("x-rev"), Some("first"));
    // max-age=0: stale at once, so the next request revalidates.
    let second = proxy.get("/r").await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.text(),
        "body-v1",
        "the stored body is served after a 304"
    );
    assert_eq!(
        second.header("x-rev"),
        Some("1"),
        "headers updated from the 304"
    );
    second.assert_cache_status("lacquer; fwd=stale; fwd-status=304; stored; ", 60);
    assert_eq!(origin.last().header("if-none-match"), Some("\"v1\""));
    // Now fresh for 60 s with the updated headers.
    let third = proxy.get("/r").await;
    assert!(third.is_hit());
    assert_eq!(third.header("x-rev"), Some("1"));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn revalidation_with_last_modified_and_a_changed_200() {
    let lm = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let lm2 = lm.clone();
    let origin = Origin::start(move |req| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        match n {
            0 => Reply::ok("old")
                .header("last-modified", &lm2)
                .header("cache-control", "no-cache"),
            1 => {
                assert_eq!(req.header("if-modified-since"), Some(lm2.as_str()));
                Reply::status(304).header("cache-control", "no-cache")
            }
            _ => Reply::ok("new").header("cache-control", "max-age=60"),
        }
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    assert_eq!(proxy.get("/").await.text(), "old");
    // no-cache: stored, but every use is validated (RFC 9111 §5.2.2.4).
    let second = proxy.get("/").await;
    assert_eq!(second.text(), "old");
    assert!(
        second.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        second.cache_status()
    );
    // A 200 to the validation replaces the entry.
    let third = proxy.get("/").await;
    assert_eq!(third.text(), "new");
    assert!(third.cache_status().contains("fwd-status=200; stored"));
    assert_eq!(proxy.get("/").await.text(), "new");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn client_conditional_requests_get_304_from_cache() {
    let lm = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
    let lm2 = lm.clone();
    let origin = Origin::start(move |_| {
        Reply::ok("payload")
            .header("etag", "\"abc\"")
            .header("last-modified", &lm2)
            .header("cache-control", "max-age=60")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    // Even on the miss, the client's own validator is answered by the proxy.
    let miss = proxy
        .get_with("/c", &[("if-none-match", "W/\"abc\"")])
        .await;
    assert_eq!(miss.status, 304);
    assert_eq!(
        origin.last().header("if-none-match"),
        None,
        "client validators are not forwarded on a miss"
    );
    let hit = proxy
        .get_with("/c", &[("if-none-match", "\"zzz\", \"abc\"")])
        .await;
    assert_eq!(hit.status, 304);
    assert!(hit.body.is_empty());
    assert_eq!(hit.header("etag"), Some("\"abc\""));
    assert!(hit.age().is_some());
    assert_eq!(
        proxy
            .get_with("/c", &[("if-none-match", "\"other\"")])
            .await
            .status,
        200
    );
    assert_eq!(
        proxy
            .get_with("/c", &[("if-modified-since", &lm)])
            .await
            .status,
        304
    );
    let earlier = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(7200));
    assert_eq!(
        proxy
            .get_with("/c", &[("if-modified-since", &earlier)])
            .await
            .status,
        200
    );
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let origin =
        Origin::start(|_| Reply::ok("0123456789").header("cache-control", "max-age=60")).await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/h").await;
    let head = proxy.request("HEAD", "/h", &[], "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("10"));
    assert!(head.is_hit());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn head_miss_fills_the_cache_for_get() {
    let origin =
        Origin::start(|_| Reply::ok("0123456789").header("cache-control", "max-age=60")).await;
    let proxy = Proxy::start(&origin).await;
    let head = proxy.request("HEAD", "/h", &[], "").await;
    assert!(head.body.is_empty());
    assert_eq!(
        origin.last().method,
        "GET",
        "a HEAD miss fetches the full object"
    );
    // The store fills in the background once the origin body is complete; the
    // fetch's flight ends only after that (a signal, not a timer).
    let mut activity = proxy.running.proxy.flights().activity();
    tokio::time::timeout(
        Duration::from_secs(10),
        activity.wait_for(|a| a.flights == 0),
    )
    .await
    .expect("the fetch finished")
    .expect("activity channel open");
    assert_eq!(proxy.store().len(), 1, "entry stored after HEAD miss");
    assert_eq!(proxy.get("/h").await.text(), "0123456789");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_uri_and_same_origin_locations() {
    let origin = Origin::start(|req| match req.method.as_str() {
        "GET" => {
            Reply::ok(format!("get {}", req.uri.path())).header("cache-control", "max-age=600")
        }
        "POST" => Reply::status(201)
            .header("location", "/items/2")
            .header("content-location", "http://other.example/items/3"),
        "PUT" => Reply::status(500),
        _ => Reply::status(204),
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    for p in ["/items", "/items/2", "/items/3"] {
        proxy.get(p).await;
        assert!(proxy.get(p).await.is_hit());
    }
    // An error response invalidates nothing.
    let put = proxy
        .request("PUT", "/items", &[("content-type", "text/plain")], "data")
        .await;
    assert_eq!(put.status, 500);
    assert!(proxy.get("/items").await.is_hit());
    // POST: the URI and the same-origin Location go; a foreign Content-Location does not.
    let post = proxy.request("POST", "/items", &[], "new item").await;
    assert_eq!(post.status, 201);
    assert!(post.cache_status().contains("fwd=method"));
    assert_eq!(
        origin.last().body,
        "new item",
        "request bodies are forwarded"
    );
    assert!(!proxy.get("/items").await.is_hit());
    assert!(!proxy.get("/items/2").await.is_hit());
    assert!(proxy.get("/items/3").await.is_hit());
    // DELETE invalidates too.
    proxy.request("DELETE", "/items/3", &[], "").await;
    assert!(!proxy.get("/items/3").await.is_hit());
}

#[tokio::test]
async fn all_methods_are_forwarded_with_their_bodies() {
    let origin = Origin::start(|req| {
        Reply::ok(format!(
            "{} {}",
            req.method,
            String::from_utf8_lossy(&req.body)
        ))
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGEX", "GET"] {
        let res = proxy.request(method, "/m", &[], "payload").await;
        assert_eq!(res.text(), format!("{method} payload"), "{method}");
    }
    assert_eq!(origin.hits(), 7);
}

#[tokio::test]
async fn age_accounts_for_upstream_age_and_residence() {
    // The origin (say, another cache) says the response is already 100 s old.
    let origin = Origin::start(|_| {
        Reply::ok("x")
            .header("cache-control", "max-age=1000")
            .header("age", "100")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let miss = proxy.get("/").await;
    assert_eq!(
        miss.age().map(|a| (100..=101).contains(&a)),
        Some(true),
        "Age on a miss is the corrected initial age (at least the origin's)"
    );
    assert!(
        matches!(miss.ttl(), Some(899..=900)),
        "{}",
        miss.cache_status()
    );
    let hit = proxy.get("/").await;
    let age = hit.age().unwrap();
    assert!(
        (100..=102).contains(&age),
        "corrected initial age, got {age}"
    );
    let ttl: i64 = hit
        .cache_status()
        .rsplit("ttl=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ttl, 1000 - age as i64);
}

#[tokio::test]
async fn age_uses_the_date_header_when_it_is_older() {
    let date = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(50));
    let origin = Origin::start(move |_| {
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("date", &date)
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/").await;
    let hit = proxy.get("/").await;
    assert!(
        (50..=52).contains(&hit.age().unwrap()),
        "apparent age from Date: {:?}",
        hit.age()
    );
}

#[tokio::test]
async fn malformed_cache_headers_are_handled_as_the_rfc_says() {
    // (Cache-Control, Expires, Age, expected stored?, expected hit on the 2nd request)
    let cases: Vec<(&str, Option<&str>, Option<&str>, bool)> = vec![
        // max-age with garbage: stale at once; no validator, so not kept.
        ("max-age=soon", None, None, false),
        // conflicting duplicates: stale.
        ("max-age=60, max-age=10", None, None, false),
        // invalid Expires: already expired (RFC 9111 §5.3).
        ("", Some("not a date"), None, false),
        ("", Some("0"), None, false),
        // garbage Age is ignored: still fresh.
        ("max-age=60", None, Some("old"), true),
        // unknown extensions and odd spacing never cause a bypass.
        ("x-foo=\"a,b\" ,  MAX-AGE=\"60\" ,, bar", None, None, true),
    ];
    for (cc, expires, age, hit) in cases {
        let origin = Origin::start(move |_| {
            let mut r = Reply::ok("x");
            if !cc.is_empty() {
                r = r.header("cache-control", cc);
            }
            if let Some(e) = expires {
                r = r.header("expires", e);
            }
            if let Some(a) = age {
                r = r.header("age", a);
            }
            r
        })
        .await;
        let proxy = Proxy::start(&origin).await;
        assert_eq!(proxy.get("/").await.status, 200);
        assert_eq!(
            proxy.get("/").await.is_hit(),
            hit,
            "cc={cc:?} expires={expires:?} age={age:?}"
        );
    }
}

#[tokio::test]
async fn expires_gives_freshness_without_max_age() {
    let origin = Origin::start(|_| {
        let now = SystemTime::now();
        Reply::ok("x")
            .header("date", &httpdate::fmt_http_date(now))
            .header(
                "expires",
                &httpdate::fmt_http_date(now + Duration::from_secs(120)),
            )
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let first = proxy.get("/").await;
    assert!(
        first.cache_status().contains("stored; ttl=1"),
        "{}",
        first.cache_status()
    );
    assert!(proxy.get("/").await.is_hit());
}

#[tokio::test]
async fn heuristic_freshness_from_last_modified() {
    let lm = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(10_000));
    let origin = Origin::start(move |_| Reply::ok("x").header("last-modified", &lm)).await;
    let proxy = Proxy::start(&origin).await;
    let first = proxy.get("/").await;
    // 10% of 10,000 s.
    assert!(
        first.cache_status().contains("ttl=1000") || first.cache_status().contains("ttl=999"),
        "{}",
        first.cache_status()
    );
    assert!(proxy.get("/").await.is_hit());
    // 404 is heuristically cacheable too; 500 is not storable at all.
    let lm = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(10_000));
    let origin = Origin::start(move |req| {
        let status = if req.uri.path() == "/404" { 404 } else { 500 };
        Reply::status(status).header("last-modified", &lm)
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/404").await;
    assert!(proxy.get("/404").await.is_hit());
    proxy.get("/500").await;
    assert!(!proxy.get("/500").await.is_hit());
}

#[tokio::test]
async fn request_directives() {
    let origin = Origin::start(|req| {
        if req.header("if-none-match") == Some("\"e\"") {
            return Reply::status(304).header("etag", "\"e\"");
        }
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("etag", "\"e\"")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    // only-if-cached with nothing stored: 504 and no origin request.
    let r = proxy
        .get_with("/", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 504);
    assert_eq!(origin.hits(), 0);
    proxy.get("/").await;
    assert!(proxy
        .get_with("/", &[("cache-control", "only-if-cached")])
        .await
        .is_hit());
    // Client no-cache / max-age=0 force a validation (the RFC default).
    let r = proxy.get_with("/", &[("cache-control", "no-cache")]).await;
    assert!(
        r.cache_status().contains("fwd=request; fwd-status=304"),
        "{}",
        r.cache_status()
    );
    let r = proxy.get_with("/", &[("cache-control", "max-age=0")]).await;
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
    // min-fresh beyond what is left: validate.
    let r = proxy
        .get_with("/", &[("cache-control", "min-fresh=3600")])
        .await;
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
    // Pragma is ignored: never a bypass.
    assert!(proxy
        .get_with("/", &[("pragma", "no-cache")])
        .await
        .is_hit());
    // no-store on the request: nothing is stored from it.
    let r = proxy
        .get_with("/fresh", &[("cache-control", "no-store")])
        .await;
    assert!(r.cache_status().contains("detail=request-no-store"));
    assert!(!proxy.get("/fresh").await.is_hit());
}

#[tokio::test]
async fn client_no_cache_can_be_ignored_by_config() {
    let origin = Origin::start(|_| Reply::ok("x").header("cache-control", "max-age=60")).await;
    let proxy = Proxy::start_with(&origin, |c| c.cache.honor_client_no_cache = false).await;
    proxy.get("/").await;
    assert!(proxy
        .get_with("/", &[("cache-control", "no-cache")])
        .await
        .is_hit());
    assert!(proxy
        .get_with("/", &[("cache-control", "max-age=0")])
        .await
        .is_hit());
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn max_stale_with_a_validator() {
    let origin = Origin::start(|req| match req.uri.path() {
        "/mr" => Reply::ok("x")
            .header("cache-control", "max-age=0, must-revalidate")
            .header("etag", "\"1\""),
        _ => Reply::ok("x")
            .header("cache-control", "max-age=0")
            .header("etag", "\"1\""),
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/ok").await;
    let r = proxy
        .get_with("/ok", &[("cache-control", "max-stale=60")])
        .await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert!(
        r.cache_status().contains("ttl=0") || r.cache_status().contains("ttl=-"),
        "{}",
        r.cache_status()
    );
    proxy.get("/mr").await;
    let r = proxy
        .get_with("/mr", &[("cache-control", "max-stale=60")])
        .await;
    assert!(!r.is_hit(), "must-revalidate forbids serving stale");
}

#[tokio::test]
async fn must_understand_overrides_no_store_for_understood_statuses() {
    let origin = Origin::start(|_| {
        Reply::ok("x").header("cache-control", "max-age=60, no-store, must-understand")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/").await;
    assert!(proxy.get("/").await.is_hit());
}

#[tokio::test]
async fn vary_selects_variants() {
    let origin = Origin::start(|req| {
        let lang = req.header("accept-language").unwrap_or("none").to_string();
        Reply::ok(lang)
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    assert_eq!(
        proxy
            .get_with("/v", &[("accept-language", "en")])
            .await
            .text(),
        "en"
    );
    let fr = proxy.get_with("/v", &[("accept-language", "fr")]).await;
    assert_eq!(fr.text(), "fr");
    assert!(
        fr.cache_status().contains("fwd=vary-miss"),
        "{}",
        fr.cache_status()
    );
    assert_eq!(
        proxy
            .get_with("/v", &[("accept-language", "en")])
            .await
            .text(),
        "en"
    );
    assert!(proxy
        .get_with("/v", &[("accept-language", "fr")])
        .await
        .is_hit());
    assert_eq!(proxy.get("/v").await.text(), "none");
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let origin = Origin::start(|_| {
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("vary", "*")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    proxy.get("/").await;
    assert!(!proxy.get("/").await.is_hit());
}

#[tokio::test]
async fn range_requests_are_answered_from_a_complete_stored_response() {
    let origin = Origin::start(|req| {
        if let Some(range) = req.header("range") {
            // On a miss the range goes to the origin as is.
            return Reply::status(206)
                .header("content-range", "bytes 0-1/10")
                .body(range.to_string());
        }
        Reply::ok("0123456789")
            .header("cache-control", "max-age=60")
            .header("etag", "\"r\"")
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let miss = proxy.get_with("/r", &[("range", "bytes=0-1")]).await;
    assert_eq!(miss.status, 206);
    assert_eq!(miss.text(), "bytes=0-1");
    assert!(miss.cache_status().contains("fwd=partial"));
    proxy.get("/r").await; // store the whole thing
    let part = proxy.get_with("/r", &[("range", "bytes=2-4")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.text(), "234");
    assert_eq!(part.header("content-range"), Some("bytes 2-4/10"));
    assert!(part.is_hit());
    let suffix = proxy.get_with("/r", &[("range", "bytes=-3")]).await;
    assert_eq!(suffix.text(), "789");
    let bad = proxy.get_with("/r", &[("range", "bytes=50-")]).await;
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range"), Some("bytes */10"));
    let stale_if_range = proxy
        .get_with("/r", &[("range", "bytes=0-0"), ("if-range", "\"old\"")])
        .await;
    assert_eq!(stale_if_range.status, 200);
    assert_eq!(stale_if_range.text(), "0123456789");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn objects_over_the_size_limit_stream_through_unstored() {
    let big = vec![b'z'; 2 * 1024 * 1024];
    let body = bytes::Bytes::from(big);
    let b = body.clone();
    let origin =
        Origin::start(move |_| Reply::ok(b.clone()).header("cache-control", "max-age=60")).await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.cache.max_object_size = bytesize::ByteSize::mib(1)
    })
    .await;
    let first = proxy.get("/big").await;
    assert_eq!(first.body.len(), body.len());
    assert!(
        first.cache_status().contains("detail=too-large"),
        "{}",
        first.cache_status()
    );
    assert!(!proxy.get("/big").await.is_hit());
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn chunked_bodies_without_length_are_stored_when_complete() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let origin = Origin::start(move |_| {
        let mut reply = Reply::ok("first-half|second-half").header("cache-control", "max-age=60");
        reply.hold_last_chunk = Some(r.clone());
        reply
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let url = proxy.url("/stream");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Full<bytes::Bytes>>(
        hyper_util::client::legacy::connect::HttpConnector::new(),
    );
    let res = client.get(url.parse().unwrap()).await.unwrap();
    use http_body_util::BodyExt;
    let mut body = res.into_body();
    // The first half arrives while the origin still holds the rest: streamed, not buffered.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first-half|");
    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second-half");
    let again = proxy.get("/stream").await;
    assert_eq!(again.text(), "first-half|second-half");
}
