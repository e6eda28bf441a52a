//! The limits scenario shared by `tests/limits.rs` (bounded, asserted) and
//! `benches/limits.rs` (larger, reported): the real binary with `cache.max_size`
//! of `budget_mib`, `idle` connections that send nothing, `keys` distinct 4 KiB
//! objects fetched over 8 keep-alive connections, and `slow` readers of 64 MiB
//! chunked bodies (too large to store) that read a head and then nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIG: usize = 64 * 1024 * 1024;

pub struct Load {
    pub budget_mib: u64,
    pub idle: usize,
    pub keys: usize,
    pub slow: usize,
}

pub struct Report {
    /// Resident memory of the proxy right after it started.
    pub start_rss_mib: u64,
    /// With every connection open, every key fetched and the slow readers stuck.
    pub rss_mib: u64,
    /// Distinct keys fetched per second.
    pub keys_per_sec: f64,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An origin with 4 KiB objects under `/o/…` and, under `/big/…`, 64 MiB chunked
/// bodies made as they are read.
async fn origin() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let big = req.uri().path().starts_with("/big/");
                    let body = if big {
                        let chunk = Bytes::from(vec![b'b'; 64 * 1024]);
                        let stream =
                            futures_util::stream::iter((0..BIG / chunk.len()).map(move |_| {
                                Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                                    chunk.clone(),
                                ))
                            }));
                        lacquer::body::boxed(http_body_util::StreamBody::new(stream))
                    } else {
                        lacquer::body::full(Bytes::from(vec![b'o'; 4096]))
                    };
                    let mut res = http::Response::new(body);
                    res.headers_mut().insert(
                        "cache-control",
                        http::HeaderValue::from_static("max-age=600"),
                    );
                    Ok::<_, std::convert::Infallible>(res)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Runs `load` against the real binary at `bin`; panics if anything fails to
/// answer.
pub async fn run(bin: &str, load: &Load) -> Report {
    raise_open_files();
    let origin = origin().await;
    let dir = std::env::temp_dir().join(format!("lacquer-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("limits.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 2\nheader_read_timeout = \"300s\"\n\
             [cache]\nmax_size = \"{} MiB\"\nmax_object_size = \"1 MiB\"\n\
             [log]\naccess = false\nlevel = \"warn\"\n\
             [[origins]]\nurl = \"http://{origin}\"\n",
            load.budget_mib
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lacquer");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let child = Killed(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .expect("listening line");
    let addr: std::net::SocketAddr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("listening address");
    let start_rss_mib = rss_mib(pid);

    let mut idle = Vec::with_capacity(load.idle);
    for _ in 0..load.idle {
        idle.push(TcpStream::connect(addr).await.expect("idle connection"));
    }

    let mut slow = Vec::new();
    for i in 0..load.slow {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /big/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        slow.push(s);
    }

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let next = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let keys = load.keys;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return;
                    }
                    let req = http::Request::get(format!("http://{addr}/o/{i}"))
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    let res = client.request(req).await.expect("request");
                    assert_eq!(res.status(), 200);
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body.len(), 4096);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let keys_per_sec = keys as f64 / started.elapsed().as_secs_f64();
    let rss_mib = rss_mib(pid);

    // Everything still answers: an idle connection.
    let mut first = idle.swap_remove(0);
    first
        .write_all(b"GET /o/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    first.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(idle);
    drop(slow);
    drop(child);
    Report {
        start_rss_mib,
        rss_mib,
        keys_per_sec,
    }
}

/// Each idle connection is a descriptor here and one in the proxy (which inherits
/// this limit): raise the soft limit to the hard one.
#[allow(unsafe_code)]
fn raise_open_files() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
