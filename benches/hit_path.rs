//! Micro-benchmarks of the pieces on the hit path: directive parsing, key building,
//! lookup plus the freshness decision. Run with `cargo bench --bench hit_path`.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, StatusCode};
use lacquer::directives::Directives;
use lacquer::freshness::{self, Policy};
use lacquer::key::{primary_key, Variant};
use lacquer::store::{Lookup, Store, StoredResponse};

fn bench(c: &mut Criterion) {
    c.bench_function("directives/parse typical", |b| {
        b.iter(|| {
            Directives::parse(black_box(
                "public, max-age=600, s-maxage=3600, stale-while-revalidate=30",
            ))
        })
    });

    c.bench_function("key/primary typical url", |b| {
        b.iter(|| {
            primary_key(
                black_box("http"),
                black_box("Www.Example.com:80"),
                black_box("/products/shoes?color=red&size=42"),
            )
        })
    });

    let store = Store::new(64 << 20, 32);
    let key = primary_key("http", "example.com", "/hot");
    let now = SystemTime::now();
    store.insert(
        &key,
        StoredResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; 1024]),
            request_time: now,
            response_time: now,
            corrected_initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(3600),
            directives: Directives::parse("max-age=3600"),
            variant: Variant::default(),
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
                    entry.lifetime,
                    &entry.directives,
                    &req_dirs,
                    &policy,
                ))
            }
            _ => unreachable!("the hot key is stored"),
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
