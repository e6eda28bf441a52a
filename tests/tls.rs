//! TLS: termination with rustls (ALPN h2 and http/1.1) and HTTPS origins trusted
//! through a custom CA. Certificates are generated at test time (rcgen).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::{Origin, Proxy, Reply};
use http::Version;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lacquer::config::{OriginSection, Settings, TlsSection};

struct Pem {
    cert: PathBuf,
    key: PathBuf,
    der: rustls_pki_types::CertificateDer<'static>,
}

fn self_signed() -> Pem {
    static N: AtomicUsize = AtomicUsize::new(0);
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let dir = std::env::temp_dir().join(format!(
        "lacquer-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    Pem {
        cert,
        key,
        der: certified.cert.der().clone(),
    }
}

fn client_trusting(
    pem: &Pem,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        builder.enable_http1().enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

#[tokio::test]
async fn tls_termination_negotiates_h2_and_http11() {
    let pem = self_signed();
    let origin = Origin::start(|req| {
        Reply::ok(format!(
            "proto={}",
            req.header("x-forwarded-proto").unwrap_or("-")
        ))
        .header("cache-control", "max-age=60")
    })
    .await;
    let proxy = Proxy::start_with(&origin, |c| {
        c.server.tls = Some(TlsSection {
            cert: pem.cert.display().to_string(),
            key: pem.key.display().to_string(),
        });
    })
    .await;
    let url = format!("https://localhost:{}/secure", proxy.addr.port());
    for (h2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let client = client_trusting(&pem, h2);
        let res = client.get(url.parse().unwrap()).await.expect("TLS request");
        assert_eq!(res.version(), version, "ALPN");
        assert_eq!(res.status(), 200);
        let cs = res.headers()["cache-status"].to_str().unwrap().to_string();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body, "proto=https",
            "the origin learns the client used https"
        );
        if !h2 {
            assert!(cs.contains("hit"), "the second request is a hit: {cs}");
        }
    }
    assert_eq!(origin.hits(), 1);
    // Plain HTTP on the TLS listener is not served.
    let plain = common::raw(
        proxy.addr,
        b"GET /secure HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(!plain.contains("200 OK"), "{plain}");
}

/// A minimal HTTPS origin (rustls + hyper) for the tests below.
async fn https_origin(pem: &Pem) -> std::net::SocketAddr {
    let certs = vec![pem.der.clone()];
    let key = <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_file(
        &pem.key,
    )
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    let mut res =
                        http::Response::new(Full::new(Bytes::from_static(b"from https origin")));
                    res.headers_mut().insert(
                        "cache-control",
                        http::HeaderValue::from_static("max-age=60"),
                    );
                    Ok::<_, std::convert::Infallible>(res)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_origins_are_trusted_through_a_custom_ca_and_refused_otherwise() {
    let pem = self_signed();
    let addr = https_origin(&pem).await;
    let url = format!("https://localhost:{}", addr.port());
    let trusted = Proxy::start_url(&url, |c| {
        c.origins[0].ca = Some(pem.cert.display().to_string())
    })
    .await;
    let res = trusted.get("/x").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "from https origin");
    // Without the CA, the self-signed origin is not trusted: 502, never its content.
    let untrusted = Proxy::start_url(&url, |_| {}).await;
    let res = untrusted.get("/x").await;
    assert_eq!(res.status, 502);
    assert!(
        res.cache_status().contains("origin-unreachable"),
        "{}",
        res.cache_status()
    );
}

#[test]
fn bad_tls_files_are_config_errors_naming_the_key() {
    let mut file = lacquer::config::ConfigFile::default();
    file.origins.push(OriginSection {
        url: "http://127.0.0.1:1".into(),
        ..OriginSection::default()
    });
    file.server.tls = Some(TlsSection {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
    });
    let e = Settings::from_file(file.clone()).unwrap_err();
    assert_eq!(e.key, "server.tls.cert");
    let pem = self_signed();
    let other = self_signed();
    file.server.tls = Some(TlsSection {
        cert: pem.cert.display().to_string(),
        key: other.key.display().to_string(),
    });
    let e = Settings::from_file(file.clone()).unwrap_err();
    assert_eq!(e.key, "server.tls.key", "{e}");
    file.server.tls = None;
    file.origins[0] = OriginSection {
        url: "https://localhost:1".into(),
        ca: Some("/nonexistent/ca.pem".into()),
        ..OriginSection::default()
    };
    assert_eq!(Settings::from_file(file).unwrap_err().key, "origins[0].ca");
}
