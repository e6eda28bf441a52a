//! `lacquer origin`: a small origin for demos and tests. The request chooses the
//! response, through query parameters:
//!
//! | parameter | effect |
//! |---|---|
//! | `status` | response status (default 200) |
//! | `cc` | `Cache-Control` value |
//! | `cdn_cc` | `CDN-Cache-Control` value |
//! | `etag` | `ETag` (quoted if not already); `If-None-Match` then gets a 304 |
//! | `lm` | `Last-Modified`, as seconds before now or an HTTP date; `If-Modified-Since` gets a 304 |
//! | `expires` | `Expires`, as seconds from now or an HTTP date |
//! | `vary` | `Vary` value |
//! | `keys` | `Surrogate-Key` value |
//! | `tags` | `Cache-Tag` value |
//! | `set_cookie` | `Set-Cookie` value |
//! | `location` | `Location` value |
//! | `age` | `Age` value |
//! | `size` | body of this many bytes (default: a short text naming the request) |
//! | `delay_ms` | wait this long before answering |
//!
//! `GET /.origin/stats` returns the request counts as JSON (total and per path);
//! `POST /.origin/reset` sets them to zero; `/.origin/echo` returns the request it
//! received (method, target, headers) as JSON. None of those three is counted.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::body::{self, Body};

#[derive(Default)]
struct Stats {
    total: u64,
    paths: BTreeMap<String, u64>,
}

/// A running demo origin. Dropping it stops the listener.
pub struct DemoOrigin {
    pub addr: SocketAddr,
    stats: Arc<Mutex<Stats>>,
    task: JoinHandle<()>,
}

impl Drop for DemoOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DemoOrigin {
    /// Requests counted so far.
    pub fn requests(&self) -> u64 {
        self.stats.lock().map(|s| s.total).unwrap_or(0)
    }

    pub async fn wait(mut self) {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }
}

pub async fn start(listen: SocketAddr) -> io::Result<DemoOrigin> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let shared = stats.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let stats = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let stats = stats.clone();
                    async move { Ok::<_, Infallible>(answer(req, &stats).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(DemoOrigin { addr, stats, task })
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut res = Response::new(body::full(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

async fn answer(req: Request<Incoming>, stats: &Mutex<Stats>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/.origin/stats") => {
            let s = stats
                .lock()
                .map(|s| serde_json::json!({"requests": s.total, "paths": s.paths}))
                .unwrap_or_default();
            return json(StatusCode::OK, s);
        }
        (&Method::POST, "/.origin/reset") => {
            if let Ok(mut s) = stats.lock() {
                *s = Stats::default();
            }
            return json(StatusCode::OK, serde_json::json!({"requests": 0}));
        }
        (_, "/.origin/echo") => {
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let v = serde_json::json!({"method": req.method().as_str(), "target": req.uri().to_string(), "headers": headers});
            return json(StatusCode::OK, v);
        }
        _ => {}
    }
    let n = match stats.lock() {
        Ok(mut s) => {
            s.total += 1;
            *s.paths.entry(path.clone()).or_default() += 1;
            s.total
        }
        Err(_) => 0,
    };
    let params: BTreeMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| params.get(k).map(String::as_str);

    if let Some(ms) = get("delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    }
    let status = get("status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let now = SystemTime::now();
    let date_param = |v: &str, past: bool| -> String {
        match v.parse::<u64>() {
            Ok(secs) if past => httpdate::fmt_http_date(now - Duration::from_secs(secs)),
            Ok(secs) => httpdate::fmt_http_date(now + Duration::from_secs(secs)),
            Err(_) => v.to_string(),
        }
    };
    let mut headers: Vec<(&'static str, String)> = Vec::new();
    let etag = get("etag").map(|e| {
        if e.starts_with('"') || e.starts_with("W/") {
            e.to_string()
        } else {
            format!("\"{e}\"")
        }
    });
    let last_modified = get("lm").map(|v| date_param(v, true));
    for (param, header) in [
        ("cc", "cache-control"),
        ("cdn_cc", "cdn-cache-control"),
        ("vary", "vary"),
        ("keys", "surrogate-key"),
        ("tags", "cache-tag"),
        ("set_cookie", "set-cookie"),
        ("location", "location"),
        ("age", "age"),
    ] {
        if let Some(v) = get(param) {
            headers.push((header, v.to_string()));
        }
    }
    if let Some(e) = &etag {
        headers.push(("etag", e.clone()));
    }
    if let Some(lm) = &last_modified {
        headers.push(("last-modified", lm.clone()));
    }
    if let Some(v) = get("expires") {
        headers.push(("expires", date_param(v, false)));
    }

    let not_modified = match (req.headers().get(IF_NONE_MATCH), &etag) {
        (Some(inm), Some(e)) => inm.to_str().is_ok_and(|inm| {
            inm.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == e.trim_start_matches("W/"))
        }),
        (Some(_), None) => false,
        (None, _) => match (req.headers().get(IF_MODIFIED_SINCE), &last_modified) {
            (Some(ims), Some(lm)) => {
                let ims = ims
                    .to_str()
                    .ok()
                    .and_then(|s| httpdate::parse_http_date(s).ok());
                let lm = httpdate::parse_http_date(lm).ok();
                matches!((ims, lm), (Some(i), Some(l)) if l <= i)
            }
            _ => false,
        },
    };
    let (status, payload) = if not_modified && status == StatusCode::OK {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if let Some(size) = get("size").and_then(|s| s.parse::<usize>().ok()) {
        let size = size.min(64 * 1024 * 1024);
        (
            status,
            Bytes::from(
                (0..size)
                    .map(|i| b'a' + (i % 26) as u8)
                    .collect::<Vec<u8>>(),
            ),
        )
    } else {
        (
            status,
            Bytes::from(format!("origin response #{n} for {}\n", req.uri())),
        )
    };
    let mut res = Response::new(if req.method() == Method::HEAD {
        body::empty()
    } else {
        body::full(payload.clone())
    });
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if req.method() == Method::HEAD {
        h.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(payload.len()),
        );
    }
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(HeaderName::from_static(name), v);
        }
    }
    res
}

/// A fixed-response server: every request gets the same preallocated body (`size`
/// bytes) and `Cache-Control`. It is the fast origin of the load benchmark, and the
/// ceiling a hyper-based proxy can reach (a hyper server returning bytes from memory).
pub async fn start_fixed(
    listen: SocketAddr,
    size: usize,
    cache_control: &str,
    surrogate_key: Option<&str>,
) -> io::Result<DemoOrigin> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(
        (0..size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let cc = HeaderValue::from_str(cache_control)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let keys = surrogate_key
        .map(HeaderValue::from_str)
        .transpose()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (body, cc, keys) = (body.clone(), cc.clone(), keys.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let mut res = Response::new(http_body_util::Full::new(body.clone()));
                    res.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    res.headers_mut()
                        .insert(http::header::CACHE_CONTROL, cc.clone());
                    if let Some(keys) = &keys {
                        res.headers_mut().insert("surrogate-key", keys.clone());
                    }
                    async move { Ok::<_, Infallible>(res) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(DemoOrigin { addr, stats, task })
}
