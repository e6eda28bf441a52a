//! The testbed's origin: `/obj/<n>` is object n, tagged `tag-<n mod tags>`,
//! whose body and ETag name the version its tag is at. The testbed publishes a
//! new version of a tag by bumping it. Every request is recorded (time, whether
//! it was conditional).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::topology::OriginSpec;

/// One request the origin answered: milliseconds since the run's start, and
/// whether it was a conditional request (a revalidation).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct OriginHit {
    pub t_ms: u64,
    pub conditional: bool,
}

pub struct VersionedOrigin {
    pub addr: SocketAddr,
    versions: Arc<Vec<AtomicU32>>,
    hits: Arc<Mutex<Vec<OriginHit>>>,
    task: JoinHandle<()>,
}

impl Drop for VersionedOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which tag object `n` carries, and the version the body names.
pub fn parse_body(body: &[u8]) -> Option<(usize, u32)> {
    let line = std::str::from_utf8(body.get(..body.len().min(64))?).ok()?;
    let mut words = line.split_whitespace();
    let _ = words.next().filter(|w| *w == "obj")?;
    let n = words.next()?.parse().ok()?;
    let v = words.next()?.strip_prefix('v')?.parse().ok()?;
    Some((n, v))
}

impl VersionedOrigin {
    pub async fn start(spec: &OriginSpec, epoch: Instant) -> std::io::Result<VersionedOrigin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let versions: Arc<Vec<AtomicU32>> =
            Arc::new((0..spec.tags).map(|_| AtomicU32::new(1)).collect());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let spec = Arc::new(spec.clone());
        let (v, h) = (versions.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (v, h, spec) = (v.clone(), h.clone(), spec.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (v, h, spec) = (v.clone(), h.clone(), spec.clone());
                        async move { Ok::<_, Infallible>(answer(&req, &v, &h, &spec, epoch).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(VersionedOrigin {
            addr,
            versions,
            hits,
            task,
        })
    }

    /// The origin publishes a new version of `tag`'s objects; returns it.
    pub fn publish(&self, tag: usize) -> u32 {
        self.versions
            .get(tag)
            .map_or(0, |v| v.fetch_add(1, Ordering::SeqCst) + 1)
    }

    pub fn version(&self, tag: usize) -> u32 {
        self.versions
            .get(tag)
            .map_or(0, |v| v.load(Ordering::SeqCst))
    }

    /// Every request so far (and forgets them).
    pub fn take_hits(&self) -> Vec<OriginHit> {
        self.hits
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }
}

async fn answer(
    req: &Request<Incoming>,
    versions: &[AtomicU32],
    hits: &Mutex<Vec<OriginHit>>,
    spec: &OriginSpec,
    epoch: Instant,
) -> Response<Full<Bytes>> {
    let conditional = req.headers().contains_key(http::header::IF_NONE_MATCH);
    if let Ok(mut h) = hits.lock() {
        h.push(OriginHit {
            t_ms: u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
            conditional,
        });
    }
    if !spec.latency.is_zero() {
        tokio::time::sleep(spec.latency).await;
    }
    let n: Option<usize> = req
        .uri()
        .path()
        .strip_prefix("/obj/")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n < spec.objects);
    let Some(n) = n else {
        let mut res = Response::new(Full::new(Bytes::from_static(b"no such object\n")));
        *res.status_mut() = StatusCode::NOT_FOUND;
        return res;
    };
    let tag = n % spec.tags;
    let version = versions[tag].load(Ordering::SeqCst);
    let etag = format!("\"{n}-v{version}\"");
    let cache_control = spec
        .cache_control_by_tag
        .get(&format!("tag-{tag}"))
        .unwrap_or(&spec.cache_control);
    let mut builder = Response::builder()
        .header("cache-control", cache_control.as_str())
        .header("etag", etag.as_str())
        .header("surrogate-key", format!("tag-{tag}"));
    let matches = req
        .headers()
        .get(http::header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    if matches {
        builder = builder.status(StatusCode::NOT_MODIFIED);
        return builder
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    }
    let mut body = format!("obj {n} v{version}\n").into_bytes();
    if body.len() < spec.size {
        body.resize(spec.size, b'.');
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// A pause used by the load (rate per client).
pub fn period(clients: usize, rate: u32) -> Duration {
    Duration::from_secs_f64(clients as f64 / f64::from(rate.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_object_and_version() {
        type Case<'a> = (&'a [u8], Option<(usize, u32)>);
        let cases: &[Case] = &[
            (b"obj 12 v3\n....", Some((12, 3))),
            (b"obj 0 v1\n", Some((0, 1))),
            (b"object 1 v1\n", None),
            (b"obj x v1\n", None),
            (b"obj 1 3\n", None),
            (b"", None),
            (b"\xff\xfe", None),
        ];
        for (body, want) in cases {
            assert_eq!(parse_body(body), *want, "{body:?}");
        }
    }
}
