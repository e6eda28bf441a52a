//! Cache keys: the primary key of a request (RFC 9111 §2: method-independent for
//! GET/HEAD, built from the target URI) and the Vary variant selectors (§4.1).
//! Pure functions.

use http::header::{HeaderMap, HeaderName, VARY};
use xxhash_rust::xxh3::xxh3_128;

/// A primary cache key: the full normalized key (kept to guard against digest
/// collisions) and its 128-bit digest (what the store indexes by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub digest: u128,
    pub full: Box<str>,
}

impl CacheKey {
    pub fn new(full: String) -> CacheKey {
        CacheKey {
            digest: xxh3_128(full.as_bytes()),
            full: full.into_boxed_str(),
        }
    }
}

/// Normalizes a host: lowercase, trailing dot removed, default port removed.
pub fn normalize_host(host: &str, scheme: &str) -> String {
    let host = host.trim();
    let (name, port) = match host.rfind(':') {
        // An IPv6 literal without port ends with ']'.
        Some(i) if !host.ends_with(']') => (&host[..i], Some(&host[i + 1..])),
        _ => (host, None),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let default_port = match scheme {
        "https" => "443",
        _ => "80",
    };
    match port {
        Some(p) if !p.is_empty() && p != default_port => format!("{name}:{p}"),
        _ => name,
    }
}

/// The primary key for a request: `scheme://host/path?query`. An empty query
/// and a lone `?` are the same resource for the cache.
pub fn primary_key(scheme: &str, host: &str, path_and_query: &str) -> CacheKey {
    let host = normalize_host(host, scheme);
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    let path = if path.is_empty() { "/" } else { path };
    let mut full = String::with_capacity(scheme.len() + host.len() + path_and_query.len() + 8);
    full.push_str(scheme);
    full.push_str("://");
    full.push_str(&host);
    full.push_str(path);
    if !query.is_empty() {
        full.push('?');
        full.push_str(query);
    }
    CacheKey::new(full)
}

/// The header names a response varies on (lowercased by `HeaderName`, deduplicated,
/// in order). `None` for `Vary: *`, which matches no request (§4.1).
pub fn vary_names(res: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in res.get_all(VARY) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part == b"*" {
                return None;
            }
            if let Ok(name) = HeaderName::from_bytes(part) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    Some(names)
}

/// The normalized value of one request field for Vary matching: field lines
/// combined with ", ", whitespace runs folded to one space (§4.1 allows both).
pub fn vary_value(req: &HeaderMap, name: &HeaderName) -> Option<Box<[u8]>> {
    let mut lines = req.get_all(name).iter().peekable();
    lines.peek()?;
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        let mut last_space = false;
        for &b in line.as_bytes().trim_ascii() {
            let space = b == b' ' || b == b'\t';
            if space {
                if !last_space {
                    out.push(b' ');
                }
            } else {
                // Fold "a , b" and "a,b" into "a, b".
                if b == b',' && last_space {
                    out.pop();
                }
                out.push(b);
            }
            last_space = space || b == b',';
            if b == b',' {
                out.push(b' ');
            }
        }
    }
    Some(out.into_boxed_slice())
}

/// The request side of a stored variant: the varied fields and their values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Variant {
    pub fields: Vec<(HeaderName, Option<Box<[u8]>>)>,
}

impl Variant {
    pub fn of(req: &HeaderMap, names: &[HeaderName]) -> Variant {
        Variant {
            fields: names
                .iter()
                .map(|n| (n.clone(), vary_value(req, n)))
                .collect(),
        }
    }

    /// Does `req` select this variant?
    pub fn matches(&self, req: &HeaderMap) -> bool {
        self.fields
            .iter()
            .all(|(name, value)| vary_value(req, name).as_deref() == value.as_deref())
    }

    pub fn same_names(&self, other: &Variant) -> bool {
        self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .zip(&other.fields)
                .all(|(a, b)| a.0 == b.0)
    }

    pub fn weight(&self) -> usize {
        self.fields
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, |v| v.len()) + 16)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Example.COM.", "http"), "example.com");
        assert_eq!(normalize_host("example.com:80", "http"), "example.com");
        assert_eq!(normalize_host("example.com:443", "https"), "example.com");
        assert_eq!(
            normalize_host("example.com:8080", "http"),
            "example.com:8080"
        );
        assert_eq!(normalize_host("[::1]", "http"), "[::1]");
        assert_eq!(normalize_host("[::1]:80", "http"), "[::1]");
        assert_eq!(normalize_host("", "http"), "");
    }

    #[test]
    fn empty_query_is_no_query() {
        assert_eq!(
            primary_key("http", "a", "/x?"),
            primary_key("http", "a", "/x")
        );
        assert_ne!(
            primary_key("http", "a", "/x?a=1"),
            primary_key("http", "a", "/x")
        );
        assert_eq!(
            primary_key("http", "A:80", ""),
            primary_key("http", "a", "/")
        );
    }

    #[test]
    fn vary_values_are_folded() {
        let mut a = HeaderMap::new();
        a.append("accept-language", HeaderValue::from_static("en ,  fr"));
        let mut b = HeaderMap::new();
        b.append("accept-language", HeaderValue::from_static("en"));
        b.append("accept-language", HeaderValue::from_static("fr"));
        let name = HeaderName::from_static("accept-language");
        assert_eq!(vary_value(&a, &name), vary_value(&b, &name));
        assert_eq!(vary_value(&a, &name).as_deref(), Some(&b"en, fr"[..]));
        let v = Variant::of(&a, std::slice::from_ref(&name));
        assert!(v.matches(&b));
        assert!(!v.matches(&HeaderMap::new()));
    }

    #[test]
    fn vary_star_and_names() {
        let mut h = HeaderMap::new();
        h.append(
            VARY,
            HeaderValue::from_static("Accept-Encoding, accept-encoding , Origin"),
        );
        assert_eq!(vary_names(&h).unwrap().len(), 2);
        h.append(VARY, HeaderValue::from_static("*"));
        assert!(vary_names(&h).is_none());
    }
}
