//! Scenario benchmark (not a test): 200 simultaneous clients on a cold object
//! behind a 200 ms origin, then the same right after the hot object is purged.
//! Reports origin requests and the time until every client was served.
//!
//! Run: `cargo bench --bench cold_burst`. Everything runs on loopback in this
//! process: the built-in demo origin and the real proxy.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lacquer::config::{ConfigFile, OriginSection, Settings};

const CLIENTS: usize = 200;
const PATH: &str = "/burst?cc=max-age%3D300&delay_ms=200&size=1024";

async fn burst(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> (Duration, usize) {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let client = client.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let res = client
                .get(url.parse().expect("url"))
                .await
                .expect("request");
            let ok = res.status() == 200;
            let body = res.into_body().collect().await.expect("body").to_bytes();
            ok && body.len() == 1024
        }));
    }
    let mut served = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            served += 1;
        }
    }
    (start.elapsed(), served)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let origin = lacquer::demo_origin::start("127.0.0.1:0".parse().unwrap()).await.expect("origin");
        let mut file = ConfigFile::default();
        file.server.listen = "127.0.0.1:0".parse().unwrap();
        file.origins.push(OriginSection { url: format!("http://{}", origin.addr), ..OriginSection::default() });
        let running = lacquer::server::start(Settings::from_file(file).expect("settings")).await.expect("proxy");
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(CLIENTS)
            .build(HttpConnector::new());
        let url = format!("http://{}{}", running.addr, PATH);

        // Warm the client's connections on another URL so the burst measures the cache.
        let warm = format!("http://{}/warm?cc=max-age%3D300", running.addr);
        burst(&client, &warm).await;
        let base = origin.requests();

        let (cold, served) = burst(&client, &url).await;
        let cold_origin = origin.requests() - base;

        // "Purge" the hot object (hard invalidation of its key), then burst again.
        let rule = lacquer::key::KeyRule::default();
        let host = lacquer::key::normalize_host(&running.addr.to_string(), "http").into_owned();
        let mut headers = http::HeaderMap::new();
        running.proxy.settings().key_rules.default.vary.normalize_request(&mut headers);
        let key = lacquer::key::primary_key(&rule, "http", &host, PATH, &headers);
        let before = origin.requests();
        running.proxy.store().invalidate(&key);
        let (after_purge, served2) = burst(&client, &url).await;
        let purge_origin = origin.requests() - before;

        let before_hot = origin.requests();
        let (hot, served3) = burst(&client, &url).await;
        let hot_origin = origin.requests() - before_hot;

        println!("| scenario ({CLIENTS} clients, origin 200 ms) | origin requests | clients served | time to serve all |");
        println!("|---|---|---|---|");
        println!("| cold object | {cold_origin} | {served} | {:.1} ms |", cold.as_secs_f64() * 1000.0);
        println!("| right after a purge of the hot object | {purge_origin} | {served2} | {:.1} ms |", after_purge.as_secs_f64() * 1000.0);
        println!("| hot object (all hits) | {hot_origin} | {served3} | {:.1} ms |", hot.as_secs_f64() * 1000.0);
    });
}
