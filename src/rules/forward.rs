//! Forwarding rules for a proxy (RFC 9110 §7.6): hop-by-hop fields, `Via`,
//! `X-Forwarded-*`. Pure functions over header maps.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    VIA,
};
use http::Version;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes `Connection` and every field it names (RFC 9110 §7.6.1), except `Host`:
/// a request's target is end to end, and the key was built from it. A request's
/// options go before anything reads the request (its key, its Vary variant), so
/// that the key, the variant and the origin's request see the same fields.
pub fn strip_connection_options(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        .filter(|name| name != HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(CONNECTION);
}

/// Removes the hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every field it
/// names ([`strip_connection_options`]), plus `Keep-Alive`, `Proxy-Connection`,
/// `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_connection_options(headers);
    for name in [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The request fields stripped on arrival (`server.strip_request_headers`): the
/// listed names, and any spelling of them or of the `X-Forwarded-*` fields Lacquer
/// sets with underscores for dashes (`X_Forwarded_Host`), which CGI and WSGI origins
/// read as the dashed name. `contains` is on every request's every field: a mask of
/// the names' lengths answers most fields without a comparison.
#[derive(Debug, Clone, Default)]
pub struct HeaderSet {
    names: Vec<HeaderName>,
    /// Bit `n` (63 for 63 and more): some name is `n` bytes long.
    lengths: u64,
    /// Bit `b & 127`: some name starts with byte `b` (names are lowercase).
    firsts: u128,
}

/// Fields Lacquer sets itself: their underscore spellings are stripped too.
const OWN_FIELDS: [&HeaderName; 3] = [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST];

fn length_bit(len: usize) -> u64 {
    1u64 << len.min(63)
}

fn first_bit(name: &str) -> u128 {
    name.as_bytes().first().map_or(0, |b| 1u128 << (b & 127))
}

impl HeaderSet {
    pub fn new(names: Vec<HeaderName>) -> HeaderSet {
        let all = || names.iter().chain(OWN_FIELDS);
        HeaderSet {
            lengths: all().fold(0, |m, n| m | length_bit(n.as_str().len())),
            firsts: all().fold(0, |m, n| m | first_bit(n.as_str())),
            names,
        }
    }

    /// On every field of every request: the masks answer almost all of them.
    #[inline]
    pub fn contains(&self, name: &HeaderName) -> bool {
        let s = name.as_str();
        self.lengths & length_bit(s.len()) != 0
            && self.firsts & first_bit(s) != 0
            && self.listed(name)
    }

    fn listed(&self, name: &HeaderName) -> bool {
        if self.names.contains(name) {
            return true;
        }
        // `_` for `-`: the same field to a CGI origin.
        let s = name.as_str();
        s.contains('_')
            && self.names.iter().chain(OWN_FIELDS).any(|n| {
                let n = n.as_str();
                n.len() == s.len()
                    && n.bytes()
                        .zip(s.bytes())
                        .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
            })
    }
}

/// The `Via` entry for a message received with `version` (RFC 9110 §7.6.3).
pub fn via_value(version: Version, pseudonym: &str) -> Option<HeaderValue> {
    let proto = match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    };
    HeaderValue::from_str(&format!("{proto} {pseudonym}")).ok()
}

/// Appends our `Via` entry to the existing ones.
pub fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    headers.append(VIA, via.clone());
}

/// Sets the `X-Forwarded-*` fields on a request going to the origin. `For` is
/// appended to (the standard chain); `Proto` and `Host` are overwritten with what
/// this proxy saw, because Lacquer is the edge that clients talk to.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&str>,
) {
    // Several field lines are one list (RFC 9110 §5.3): keep every one of them.
    let prev: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let xff = if prev.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", prev.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_fields_go() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("close, X-Secret , keep-alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(TRAILER, HeaderValue::from_static("x"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn connection_never_removes_host() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("host, accept-language"),
        );
        h.insert(HOST, HeaderValue::from_static("shop.example"));
        h.insert("accept-language", HeaderValue::from_static("fr"));
        strip_connection_options(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[HOST], "shop.example");
    }

    #[test]
    fn header_set_matches_listed_names_and_underscore_spellings() {
        let set = HeaderSet::new(vec![
            HeaderName::from_static("x-original-url"),
            HeaderName::from_static("x-forwarded-prefix"),
        ]);
        let cases: &[(&str, bool)] = &[
            ("x-original-url", true),
            ("x_original_url", true),
            ("x-original_url", true),
            ("x-forwarded-prefix", true),
            ("x_forwarded_prefix", true),
            // Lacquer's own fields: the dashed ones are set (or appended to) by
            // Lacquer; their underscore spellings would bypass that.
            ("x-forwarded-host", false),
            ("x_forwarded_host", true),
            ("x_forwarded_for", true),
            ("x_forwarded_proto", true),
            ("x-forwarded-for", false),
            ("x_original_urls", false),
            ("accept", false),
            ("host", false),
            ("x-original-uri", false),
        ];
        for (name, expected) in cases {
            let n = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(set.contains(&n), *expected, "{name}");
        }
    }

    #[test]
    fn malformed_connection_tokens_are_skipped() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_bytes(b"bad token\xff, ,").unwrap(),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_fields() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            "http",
            Some("example.com"),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "example.com");
        assert_eq!(via_value(Version::HTTP_2, "lacquer").unwrap(), "2 lacquer");
    }
}
