//! Purge benchmarks (not tests): run with `cargo bench --bench purge`.
//!
//! 1. Time to purge one tag carried by 10 vs 100,000 stored entries (it must not
//!    grow with the count: a purge writes one mark).
//! 2. Memory of tags per entry: resident memory of 100,000 entries with one shared
//!    tag plus one unique tag each, minus the same entries untagged.
//! 3. Hit latency (p50/p99) through the real proxy over HTTP, alone and while a
//!    purge storm (about 2,000 tag purges a second through the admin API) runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lacquer::config::{ConfigFile, OriginSection, Settings, TokenSection};
use lacquer::directives::Directives;
use lacquer::key::{primary_key, KeyRule, Variant};
use lacquer::purge::Purge;
use lacquer::store::{Fetched, Lookup, Store, StoredResponse};

fn entry(tags: &[Arc<str>], gen: u64) -> Fetched {
    let now = SystemTime::now();
    Fetched {
        status: StatusCode::OK,
        headers: Default::default(),
        body: Bytes::from_static(b"0123456789"),
        born: lacquer::freshness::Born::new(now, Duration::ZERO),
        lifetime: Duration::from_secs(3600),
        directives: Directives::default().into(),
        variant: Variant::default(),
        tags: tags.to_vec().into(),
        fetched_gen: gen,
    }
}

/// The cache key of `http://host/path` under the default key rule.
fn key(host: &str, path: &str) -> lacquer::key::CacheKey {
    primary_key(&KeyRule::default(), "http", host, path, &HeaderMap::new())
}

fn fill(store: &Store, n: usize, tagged: bool) {
    let shared: Arc<str> = Arc::from("campaign:big");
    for i in 0..n {
        let key = key("bench", &format!("/item/{i}"));
        let tags: Vec<Arc<str>> = if tagged {
            vec![shared.clone(), Arc::from(format!("product:{i}"))]
        } else {
            Vec::new()
        };
        store.insert(&key, entry(&tags, store.generation()));
    }
}

/// Counts live heap bytes, so memory per entry is measured exactly (resident
/// memory would hide reuse of freed pages).
struct Counting;

static LIVE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[allow(unsafe_code)]
// SAFETY: every call forwards to the system allocator with the same layout.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_bytes() -> u64 {
    LIVE.load(Ordering::Relaxed)
}

/// The header fields of the load benchmark's small objects, as stored.
fn typical_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", "text/plain".parse().unwrap());
    h.insert("cache-control", "max-age=3600".parse().unwrap());
    h.insert("surrogate-key", "campaign:all".parse().unwrap());
    h.insert("content-length", "16".parse().unwrap());
    h.insert("date", "Sun, 22 Nov 2026 14:30:00 GMT".parse().unwrap());
    h
}

/// Where the memory of an entry goes: live heap bytes for 100,000 entries like the
/// load benchmark's (5 header fields, a 16-byte body, one tag), each hit once (a
/// hit gives the entry's buffer its shared handle), split into the stored response
/// (measured alone) and the store's own structures (the rest).
fn memory_breakdown() {
    const N: usize = 100_000;
    let headers = typical_headers();
    let payload_headers: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    let tag: Arc<str> = Arc::from("campaign:all");
    let fetched = |gen| {
        let mut e = entry(std::slice::from_ref(&tag), gen);
        e.headers = lacquer::store::StoredHeaders::from_map(&headers);
        e.body = Bytes::copy_from_slice(b"0123456789abcdef");
        e
    };

    let base = live_bytes();
    let store = Store::new(16 << 30, 4);
    let mut key_bytes = 0;
    for i in 0..N {
        let key = key("127.0.0.1:18102", &format!("/m/{i}"));
        key_bytes += key.full.len();
        store.insert(&key, fetched(store.generation()));
        match store.lookup(&key, &HeaderMap::new()) {
            Lookup::Hit(r) => drop(r.body()),
            _ => unreachable!("just stored"),
        }
    }
    let total = live_bytes().saturating_sub(base) as usize / N;
    drop(store);

    let base = live_bytes();
    let alone: Vec<Arc<StoredResponse>> = (0..N)
        .map(|_| {
            let r = Arc::new(StoredResponse::pack(fetched(0)));
            drop(r.body());
            r
        })
        .collect();
    let response = live_bytes().saturating_sub(base) as usize / N - std::mem::size_of::<usize>();
    drop(alone);

    let key = key_bytes / N;
    let payload = key + payload_headers + 16;
    let arc = std::mem::size_of::<StoredResponse>() + 16;
    println!("\n## Memory per stored entry (100,000 entries: 5 header fields, 16-byte body, 1 tag, each hit once; live heap bytes)\n");
    println!("| part | bytes per entry |");
    println!("|---|---|");
    println!("| all of it | {total} |");
    println!("| key + header names and values + body (the payload) | {payload} |");
    println!(
        "| overhead beyond the payload | {} |",
        total.saturating_sub(payload)
    );
    println!("| of which `StoredResponse` (in its `Arc`) | {arc} |");
    println!(
        "| of which its buffer beyond fields and body (a NUL after each name and value, the tag, the shared handle) | {} |",
        response.saturating_sub(arc + payload_headers + 16)
    );
    println!(
        "| of which the store's structures (entry list, hash table, key allocation) | {} |",
        total.saturating_sub(response + key)
    );
}

fn purge_time(n: usize) -> Duration {
    let store = Store::new(4 << 30, 4);
    fill(&store, n, true);
    store.len();
    let purge = Purge {
        tags: vec!["campaign:big".into()],
        ..Purge::default()
    };
    let start = Instant::now();
    let report = store.purge(&purge, &[]);
    let took = start.elapsed();
    assert_eq!(report.tags["campaign:big"], n);
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

async fn hit_latencies(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    n: usize,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let res = client.get(url.parse().unwrap()).await.expect("hit");
        let _ = res.into_body().collect().await;
        out.push(start.elapsed());
    }
    out.sort();
    out
}

fn main() {
    println!("## Purge cost against the number of entries a tag covers\n");
    println!("| entries carrying the tag | purge time |");
    println!("|---|---|");
    for n in [10, 100_000, 1_000_000] {
        let t = purge_time(n);
        println!("| {n} | {:.1} µs |", t.as_secs_f64() * 1e6);
    }

    println!("\n## Memory of tags per entry (100,000 entries, 2 tags each: one shared, one unique; live heap bytes)\n");
    let base = live_bytes();
    let plain = Store::new(4 << 30, 4);
    fill(&plain, 100_000, false);
    plain.len();
    let untagged = live_bytes().saturating_sub(base);
    drop(plain);
    let base = live_bytes();
    let tagged = Store::new(4 << 30, 4);
    fill(&tagged, 100_000, true);
    tagged.len();
    let with_tags = live_bytes().saturating_sub(base);
    println!("| untagged entries | tagged entries | tags + tag index per entry |");
    println!("|---|---|---|");
    println!(
        "| {:.1} MiB | {:.1} MiB | {} bytes |",
        untagged as f64 / 1048576.0,
        with_tags as f64 / 1048576.0,
        with_tags.saturating_sub(untagged) / 100_000
    );
    drop(tagged);

    memory_breakdown();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let origin = lacquer::demo_origin::start("127.0.0.1:0".parse().unwrap()).await.expect("origin");
        let secret_path = std::env::temp_dir().join(format!("lacquer-bench-token-{}", std::process::id()));
        std::fs::write(&secret_path, "bench-secret-0123456789").expect("token file");
        let mut file = ConfigFile::default();
        file.server.listen = "127.0.0.1:0".parse().unwrap();
        file.origins.push(OriginSection { url: format!("http://{}", origin.addr), ..OriginSection::default() });
        file.admin.tokens.push(TokenSection {
            name: "bench".into(),
            file: Some(secret_path.display().to_string()),
            operations: vec![lacquer::config::Operation::Tag],
            ..TokenSection::default()
        });
        let running = lacquer::server::start(Settings::from_file(file).expect("settings")).await.expect("proxy");
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let url = format!("http://{}/hot?cc=max-age%3D3600&keys=page:hot&size=1024", running.addr);
        hit_latencies(&client, &url, 100).await; // warm up and store
        let quiet = hit_latencies(&client, &url, 20_000).await;

        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let admin = format!("http://{}/.lacquer/purge", running.addr);
        let purger = tokio::spawn(async move {
            let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_micros(500));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                // Other tags: the hot object must stay a hit while marks pile up.
                let body = format!(r#"{{"tags":["campaign:{sent}"]}}"#);
                let req = Request::post(&admin)
                    .header("authorization", "Bearer bench-secret-0123456789")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                if let Ok(res) = client.request(req).await {
                    let _ = res.into_body().collect().await;
                    sent += 1;
                }
            }
            sent
        });
        let start = Instant::now();
        let busy = hit_latencies(&client, &url, 20_000).await;
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let purges = purger.await.unwrap_or(0);

        println!("\n## Hit latency through the proxy (1 KiB, keep-alive, one client), with and without a purge storm\n");
        println!("| run | hits | p50 | p99 | purges/s during the run |");
        println!("|---|---|---|---|---|");
        println!("| no purges | {} | {:.0} µs | {:.0} µs | 0 |", quiet.len(), percentile(&quiet, 0.5).as_secs_f64() * 1e6, percentile(&quiet, 0.99).as_secs_f64() * 1e6);
        println!(
            "| purge storm | {} | {:.0} µs | {:.0} µs | {:.0} |",
            busy.len(),
            percentile(&busy, 0.5).as_secs_f64() * 1e6,
            percentile(&busy, 0.99).as_secs_f64() * 1e6,
            purges as f64 / elapsed.as_secs_f64()
        );
        println!(
            "\np99 ratio storm/quiet: {:.2}",
            percentile(&busy, 0.99).as_secs_f64() / percentile(&quiet, 0.99).as_secs_f64()
        );
    });
}
