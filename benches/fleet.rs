//! The fleet's purge confirmation time: 10 nodes of the bench-profile binary (2
//! shields, 8 edges, each edge behind a shield) and one `redis-server` on
//! loopback; 1,000 tag purges, one every 10 ms, each with `wait`, sent to the
//! edges in turn and timed from the first byte sent until the answer says every
//! node applied it. Reports p50, p99 and max. Run with `cargo bench --bench fleet`
//! (it needs `redis-server` on PATH: `apt-get install redis-server`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BIN: &str = env!("CARGO_BIN_EXE_lacquer");
const TOKEN: &str = "fleet-bench-secret-0123456789";
const PURGES: usize = 1_000;
const EVERY: Duration = Duration::from_millis(10);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts a process and returns it with the first line it prints that contains
/// `marker`.
fn start(mut cmd: Command, marker: &str) -> (Killed, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start process");
    let stdout = child.stdout.take().expect("stdout");
    let child = Killed(child);
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("process ended before printing {marker:?}");
        }
        if line.contains(marker) {
            break;
        }
    }
    // Keep draining its output.
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, line)
}

fn node(
    dir: &std::path::Path,
    redis: u16,
    origin: &str,
    name: &str,
    tier: &str,
) -> (Killed, SocketAddr) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n\
             [log]\naccess = false\nlevel = \"error\"\n\
             [[admin.tokens]]\nname = \"bench\"\nenv = \"LACQUER_BENCH_TOKEN\"\noperations = [\"tag\"]\n\
             [fleet]\nredis = \"redis://127.0.0.1:{redis}\"\nnode = \"{name}\"\ntier = \"{tier}\"\n\
             [[origins]]\nurl = \"{origin}\"\n"
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("LACQUER_BENCH_TOKEN", TOKEN);
    let (child, line) = start(cmd, "listening on");
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("listening address");
    (child, addr)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(
    client: &HttpClient,
    method: &str,
    url: String,
    body: String,
) -> (u16, serde_json::Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let res = client.request(req).await.expect("node answers");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

fn main() {
    let dir = std::env::temp_dir().join(format!("lacquer-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let redis_port = free_port();
    let mut redis = Command::new("redis-server");
    redis
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--port")
        .arg(redis_port.to_string())
        .arg("--dir")
        .arg(&dir);
    let (_redis, _) = start(redis, "Ready to accept connections");
    let origin_port = free_port();
    let mut origin = Command::new(BIN);
    origin.args(["origin", "--listen", &format!("127.0.0.1:{origin_port}")]);
    let (_origin, _) = start(origin, "listening on");

    let mut nodes = Vec::new();
    let mut shields = Vec::new();
    for i in 1..=2 {
        let (child, addr) = node(
            &dir,
            redis_port,
            &format!("http://127.0.0.1:{origin_port}"),
            &format!("shield-{i}"),
            "shield",
        );
        shields.push(addr);
        nodes.push(child);
    }
    let mut edges = Vec::new();
    for i in 1..=8 {
        let shield = shields[i % 2];
        let (child, addr) = node(
            &dir,
            redis_port,
            &format!("http://{shield}"),
            &format!("edge-{i}"),
            "edge",
        );
        edges.push(addr);
        nodes.push(child);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        // Every node's record is in Redis before the first purge.
        loop {
            let (_, status) = call(&client, "GET", format!("http://{}/.lacquer/fleet", edges[0]), String::new()).await;
            if status["nodes"].as_object().map_or(0, |n| n.len()) == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut tick = tokio::time::interval(EVERY);
        let mut tasks = Vec::with_capacity(PURGES);
        for i in 0..PURGES {
            tick.tick().await;
            let client = client.clone();
            let url = format!("http://{}/.lacquer/purge", edges[i % edges.len()]);
            let body = serde_json::json!({"tags": [format!("campaign:{i}")], "wait": "5s"}).to_string();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let (status, answer) = call(&client, "POST", url, body).await;
                let took = started.elapsed();
                (status == 200 && answer["fleet"]["complete"] == true, took)
            }));
        }
        let mut times = Vec::with_capacity(PURGES);
        let mut incomplete = 0;
        for t in tasks {
            let (complete, took) = t.await.expect("purge task");
            if !complete {
                incomplete += 1;
            }
            times.push(took);
        }
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!(
            "fleet: 10 nodes (2 shields, 8 edges), {PURGES} tag purges every {} ms with wait: \
             confirmed by every node in p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {incomplete} not complete",
            EVERY.as_millis(),
            at(0.50).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
        );
    });
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
