//! Micro-benchmarks of the pieces on the hit path: directive parsing, key building,
//! lookup plus the freshness decision. Run with `cargo bench --bench hit_path`.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use lacquer::directives::Directives;
use lacquer::freshness::{self, Policy};
use lacquer::key::{primary_key, KeyHeader, KeyRule, Variant};
use lacquer::store::{Fetched, Lookup, Store};

fn bench(c: &mut Criterion) {
    c.bench_function("directives/parse typical", |b| {
        b.iter(|| {
            Directives::parse(black_box(
                "public, max-age=600, s-maxage=3600, stale-while-revalidate=30",
            ))
        })
    });

    let rule = KeyRule::default();
    let plain = HeaderMap::new();
    c.bench_function("key/primary typical url", |b| {
        b.iter(|| {
            primary_key(
                &rule,
                black_box("http"),
                black_box("www.example.com"),
                black_box("/products/shoes?size=42&color=red&utm_source=news"),
                &plain,
            )
        })
    });
    let keyed = KeyRule {
        headers: vec![KeyHeader {
            name: HeaderName::from_static("x-experiment-id"),
            fold_case: true,
        }],
        cookies: vec!["user_segment".into()],
        ..KeyRule::default()
    };
    let mut with_cookie = HeaderMap::new();
    with_cookie.insert("x-experiment-id", HeaderValue::from_static("B"));
    with_cookie.insert(
        "cookie",
        HeaderValue::from_static("session=abc123; user_segment=vip; theme=dark"),
    );
    c.bench_function("key/primary with keyed header and cookie", |b| {
        b.iter(|| {
            primary_key(
                &keyed,
                black_box("http"),
                black_box("www.example.com"),
                black_box("/products/shoes?color=red"),
                &with_cookie,
            )
        })
    });

    let store = Store::new(64 << 20, 32);
    let key = primary_key(&rule, "http", "example.com", "/hot", &plain);
    let now = SystemTime::now();
    store.insert(
        &key,
        Fetched {
            status: StatusCode::OK,
            headers: Default::default(),
            body: Bytes::from(vec![b'x'; 1024]),
            born: lacquer::freshness::Born::new(now, Duration::ZERO),
            lifetime: Duration::from_secs(3600),
            directives: Directives::parse("max-age=3600").into(),
            variant: Variant::default(),
            tags: Vec::new().into(),
            fetched_gen: 0,
        },
    );
    let policy = Policy::default();
    let mut req = HeaderMap::new();
    req.insert("accept", HeaderValue::from_static("*/*"));
    let req_dirs = Directives::default();
    c.bench_function("store/lookup + freshness decision", |b| {
        b.iter(|| match store.lookup(black_box(&key), &req) {
            Lookup::Hit(entry) => {
                let age = entry.age(now);
                black_box(freshness::reuse(
                    age,
                    entry.lifetime(),
                    &entry.directives.get(),
                    &req_dirs,
                    &policy,
                ))
            }
            _ => unreachable!("the hot key is stored"),
        })
    });
}

fn variants(c: &mut Criterion) {
    let store = Store::new(64 << 20, 32);
    let rule = KeyRule::default();
    let key = primary_key(&rule, "http", "example.com", "/v", &HeaderMap::new());
    let names = [
        HeaderName::from_static("accept-encoding"),
        HeaderName::from_static("accept-language"),
    ];
    let now = SystemTime::now();
    for enc in ["br", "gzip", "identity"] {
        for lang in ["en", "fr", "de", "es"] {
            let mut req = HeaderMap::new();
            req.insert("accept-encoding", HeaderValue::from_static(enc));
            req.insert("accept-language", HeaderValue::from_static(lang));
            store.insert(
                &key,
                Fetched {
                    status: StatusCode::OK,
                    headers: Default::default(),
                    body: Bytes::from_static(b"x"),
                    born: lacquer::freshness::Born::new(now, Duration::ZERO),
                    lifetime: Duration::from_secs(3600),
                    directives: Directives::default().into(),
                    variant: Variant::of(&req, &names),
                    tags: Vec::new().into(),
                    fetched_gen: 0,
                },
            );
        }
    }
    let mut req = HeaderMap::new();
    req.insert("accept-encoding", HeaderValue::from_static("identity"));
    req.insert("accept-language", HeaderValue::from_static("es"));
    c.bench_function("store/variant selection among 12", |b| {
        b.iter(|| match store.lookup(black_box(&key), &req) {
            Lookup::Hit(e) => black_box(e),
            _ => unreachable!("the variant is stored"),
        })
    });
}

criterion_group!(benches, bench, variants);
criterion_main!(benches);
