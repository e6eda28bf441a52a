//! TLS with rustls: the server side (certificate and key from PEM files, ALPN h2 and
//! http/1.1) and the client side for HTTPS origins (webpki roots plus an optional
//! custom CA). Built once at config load, so a bad file is a config error naming its key.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS file that cannot be used: which setting (`cert`, `key`, `ca`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub field: &'static str,
    pub reason: String,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for TlsError {}

fn tls_error(field: &'static str) -> impl Fn(String) -> TlsError {
    move |reason| TlsError { field, reason }
}

fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from `{path}`: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM in `{path}`: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate in `{path}`"));
    }
    Ok(certs)
}

/// The TLS server configuration: `cert` (chain) and `key` PEM files; ALPN h2, http/1.1.
pub fn server_config(cert: &str, key: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert).map_err(tls_error("cert"))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from `{key}`: {e}"))
        .map_err(tls_error("key"))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("cert")(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("key")(format!("certificate and key do not match: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS client configuration for HTTPS origins: the webpki roots, plus `ca` (PEM)
/// when given (an internal CA or a self-signed origin).
pub fn client_config(ca: Option<&str>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        for cert in load_certs(path).map_err(tls_error("ca"))? {
            roots.add(cert).map_err(|e| {
                tls_error("ca")(format!("unusable CA certificate in `{path}`: {e}"))
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("ca")(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
