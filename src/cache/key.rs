//! Cache keys: the primary key of a request (RFC 9111 §2: method-independent for
//! GET/HEAD, built from the target URI plus what the route's key rule adds) and
//! the Vary variant selectors (§4.1). Pure functions.
//!
//! The full key looks like `http://host/path?a=1&b=2` followed by one line per
//! keyed header (`\nh:x-experiment-id=b`) and keyed cookie (`\nc:user_segment=vip`).
//! Normalization never changes meaning: percent-escapes of unreserved characters
//! are decoded, other escapes get upper-case hex (RFC 3986 §6.2.2), invalid escapes
//! are kept as they are.

use http::header::{HeaderMap, HeaderName, COOKIE, VARY};
use xxhash_rust::xxh3::xxh3_128;

use crate::vary::VaryRules;

/// A primary cache key: the full normalized key (kept to guard against digest
/// collisions) and its 128-bit digest (what the store indexes by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub digest: u128,
    /// A `String`, not a `Box<str>`: a key is built per request, and shrinking it to
    /// a box would copy it (the store keeps its own boxed copy).
    pub full: String,
}

impl CacheKey {
    pub fn new(full: String) -> CacheKey {
        CacheKey {
            digest: digest(&full),
            full,
        }
    }
}

/// The digest of a full key (what [`CacheKey::digest`] holds).
pub fn digest(full: &str) -> u128 {
    xxh3_128(full.as_bytes())
}

/// A query parameter name pattern: exact, or a prefix ending in `*` (`utm_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    text: String,
    prefix: bool,
}

impl NamePattern {
    pub fn new(pattern: &str) -> NamePattern {
        match pattern.strip_suffix('*') {
            Some(p) => NamePattern {
                text: p.to_string(),
                prefix: true,
            },
            None => NamePattern {
                text: pattern.to_string(),
                prefix: false,
            },
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.starts_with(&self.text)
        } else {
            name == self.text
        }
    }
}

/// Which query parameters take part in the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryRule {
    /// All parameters except those matching a pattern.
    Drop(Vec<NamePattern>),
    /// Only the parameters matching a pattern.
    Allow(Vec<NamePattern>),
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Exact (normalized) host.
    Exact(String),
    /// `*.example.com`: any subdomain of it (not the apex).
    Suffix(String),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        let name = host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == host || h == name,
            HostMatch::Suffix(s) => {
                name.len() > s.len() + 1
                    && name.ends_with(s.as_str())
                    && name.as_bytes()[name.len() - s.len() - 1] == b'.'
            }
        }
    }
}

/// A request header that is part of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHeader {
    pub name: HeaderName,
    /// Values differing only in ASCII case share an entry.
    pub fold_case: bool,
}

/// How keys are built for the requests a route matches (validated config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRule {
    pub host: HostMatch,
    pub path_prefix: String,
    pub sort_query: bool,
    pub query: QueryRule,
    pub headers: Vec<KeyHeader>,
    pub cookies: Vec<String>,
    /// Keyed header and cookie values are cut to this many bytes.
    pub max_value_bytes: usize,
    /// Vary handling for responses on this route.
    pub vary: VaryRules,
}

/// The default tracking parameters dropped from keys.
pub const DEFAULT_DROPPED_PARAMS: &[&str] = &["utm_*", "gclid", "fbclid", "mc_cid", "mc_eid"];

impl Default for KeyRule {
    fn default() -> Self {
        KeyRule {
            host: HostMatch::Any,
            path_prefix: "/".into(),
            sort_query: true,
            query: QueryRule::Drop(
                DEFAULT_DROPPED_PARAMS
                    .iter()
                    .map(|p| NamePattern::new(p))
                    .collect(),
            ),
            headers: Vec::new(),
            cookies: Vec::new(),
            max_value_bytes: 256,
            vary: VaryRules::default(),
        }
    }
}

impl KeyRule {
    pub fn matches(&self, host: &str, path: &str) -> bool {
        self.host.matches(host) && path.starts_with(self.path_prefix.as_str())
    }
}

/// The routes' key rules, first match wins, and the default rule.
#[derive(Debug, Clone, Default)]
pub struct KeyRules {
    pub routes: Vec<KeyRule>,
    pub default: KeyRule,
}

impl KeyRules {
    /// The rule for a request (`host` already normalized).
    /// The key of `scheme://host_norm` + `path_and_query` for these request fields,
    /// under the rule of its route.
    pub fn key(
        &self,
        scheme: &str,
        host_norm: &str,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> CacheKey {
        let path = path_and_query.split('?').next().unwrap_or("/");
        primary_key(
            self.rule_for(host_norm, path),
            scheme,
            host_norm,
            path_and_query,
            headers,
        )
    }

    pub fn rule_for(&self, host: &str, path: &str) -> &KeyRule {
        self.routes
            .iter()
            .find(|r| r.matches(host, path))
            .unwrap_or(&self.default)
    }
}

/// Is `host` a request's host as RFC 9110 §7.2 allows it: empty, or a reg-name
/// (unreserved characters and percent-escapes, RFC 3986 §3.2.2), an IPv4 address or
/// a bracketed IPv6 literal, with an optional port of at most five digits? Anything
/// else (`/`, `?`, `@` userinfo, spaces, sub-delimiters such as `,` that no DNS name
/// holds) is refused: the key is `scheme://host/path`, and a host that carried a
/// path or query would collide with another URL's key.
pub fn valid_host(host: &str) -> bool {
    valid_host_bytes(host.as_bytes())
}

/// [`valid_host`] of a field's bytes (bytes that are not visible ASCII are in no
/// valid host).
pub fn valid_host_bytes(host: &[u8]) -> bool {
    // The common case: a name of unreserved characters with an optional port, one
    // table lookup a byte.
    let mut colon = None;
    for (i, &c) in host.iter().enumerate() {
        if !UNRESERVED[c as usize] {
            if c != b':' || colon.is_some() {
                return valid_host_slow(host);
            }
            colon = Some(i);
        }
    }
    match colon {
        None => true,
        Some(i) => i > 0 && valid_port(&host[i + 1..]),
    }
}

/// Unreserved characters (RFC 3986 §2.3), as a table.
static UNRESERVED: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = is_unreserved(c as u8);
        c += 1;
    }
    t
};

/// A port of at most five digits (empty: the default port).
fn valid_port(port: &[u8]) -> bool {
    port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// What the fast path passes over: an IPv6 literal, percent-escapes, and anything
/// that is no host at all.
fn valid_host_slow(b: &[u8]) -> bool {
    if let Some(rest) = b.strip_prefix(b"[") {
        // IP-literal: an IPv6 address in brackets (IPvFuture is not accepted).
        let Some(close) = rest.iter().position(|&c| c == b']') else {
            return false;
        };
        let ipv6 = std::str::from_utf8(&rest[..close])
            .is_ok_and(|l| l.parse::<std::net::Ipv6Addr>().is_ok());
        return ipv6
            && match &rest[close + 1..] {
                [] => true,
                [b':', port @ ..] => valid_port(port),
                _ => false,
            };
    }
    let (name, port) = match b.iter().rposition(|&c| c == b':') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    // A port needs a host before it.
    if port.is_some_and(|p| name.is_empty() || !valid_port(p)) {
        return false;
    }
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            c if is_unreserved(c) => i += 1,
            b'%' if name.len() > i + 2
                && hex_val(name[i + 1]).is_some()
                && hex_val(name[i + 2]).is_some() =>
            {
                i += 3
            }
            _ => return false,
        }
    }
    true
}

/// The request target a key was built from (its normalized path and query, what the
/// origin is sent): the text after `scheme://host` up to the first keyed line.
/// `None` for a key without a path (`OPTIONS *`).
pub fn target(full: &str) -> Option<&str> {
    let url = full.split('\n').next().unwrap_or_default();
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let path = url.get(after_scheme..)?.find('/')? + after_scheme;
    url.get(path..)
}

/// Normalizes a host: lowercase, trailing dot removed, default port removed.
pub fn normalize_host<'a>(host: &'a str, scheme: &str) -> std::borrow::Cow<'a, str> {
    let host = host.trim_ascii();
    // Fast path (the common case): already lowercase, no trailing dot, no default
    // port. No allocation and no substring search.
    let b = host.as_bytes();
    let dot_before_port = match b.iter().rposition(|&c| c == b':') {
        Some(i) => i > 0 && b[i - 1] == b'.',
        None => false,
    };
    let default_port = match b {
        [.., b':', b'8', b'0'] => scheme != "https",
        [.., b':', b'4', b'4', b'3'] => scheme == "https",
        _ => false,
    };
    let odd_end = matches!(b.last(), Some(b'.' | b':'));
    if !dot_before_port && !default_port && !odd_end && !b.iter().any(u8::is_ascii_uppercase) {
        return std::borrow::Cow::Borrowed(host);
    }
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
    std::borrow::Cow::Owned(match port {
        Some(p) if !p.is_empty() && p != default_port => format!("{name}:{p}"),
        _ => name,
    })
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encoding normalization (RFC 3986 §6.2.2.1-2): `%7e` → `~`, `%2f` → `%2F`.
/// A `%` that starts no valid escape (`%zz`, a trailing `%4`) becomes `%25`, so the
/// result is its own normal form: kept as it is, `%%341` would give `%41` (an
/// escape the request never had, read by the origin as `A`).
pub fn normalize_percent(input: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = input.as_bytes();
    if !b.contains(&b'%') {
        out.push_str(input); // nothing to decode (the common case): one copy
        return;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                let v = h * 16 + l;
                if is_unreserved(v) {
                    out.push(v as char);
                } else {
                    out.push('%');
                    out.push(HEX[h as usize] as char);
                    out.push(HEX[l as usize] as char);
                }
                i += 3;
                continue;
            }
        }
        if b[i] == b'%' {
            out.push_str("%25");
            i += 1;
            continue;
        }
        // Copy one whole character.
        let len = match b[i] {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            _ => 4,
        };
        let end = (i + len).min(b.len());
        out.push_str(input.get(i..end).unwrap_or("\u{fffd}"));
        i = end;
    }
}

/// Decoded parameter name, for matching against patterns (`utm%5Fsource` is `utm_source`).
fn param_name(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains('%') && !raw.contains('+') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut s = String::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    bytes.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => bytes.push(b'%'),
            },
            b'+' => bytes.push(b' '),
            c => bytes.push(c),
        }
        i += 1;
    }
    s.push_str(&String::from_utf8_lossy(&bytes));
    std::borrow::Cow::Owned(s)
}

/// The normalized query: empty pairs dropped, parameters filtered by the rule,
/// sorted by name then value when the rule says so (stable otherwise).
pub fn normalize_query(query: &str, rule: &KeyRule, out: &mut String) {
    // Each pair in its normal form before sorting: two spellings of one pair sort
    // alike (sorted as received, `?a=%7e&a=b` and `?a=~&a=b` would get two keys).
    let mut params: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> = Vec::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let raw_name = pair.split_once('=').map_or(pair, |(n, _)| n);
        let name = param_name(raw_name);
        let keep = match &rule.query {
            QueryRule::Drop(patterns) => !patterns.iter().any(|p| p.matches(&name)),
            QueryRule::Allow(patterns) => patterns.iter().any(|p| p.matches(&name)),
        };
        if keep {
            let normal = if pair.contains('%') {
                let mut p = String::with_capacity(pair.len());
                normalize_percent(pair, &mut p);
                std::borrow::Cow::Owned(p)
            } else {
                std::borrow::Cow::Borrowed(pair)
            };
            params.push((name, normal));
        }
    }
    if rule.sort_query {
        params.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    }
    for (i, (_, pair)) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(pair);
    }
}

/// A keyed value: trimmed, whitespace folded, case folded if asked, cut to `max` bytes.
fn push_key_value(out: &mut String, raw: &[u8], fold_case: bool, max: usize) {
    let start = out.len();
    let mut last_space = false;
    for &b in raw.trim_ascii() {
        if out.len() - start >= max {
            break;
        }
        let space = b == b' ' || b == b'\t';
        if space && last_space {
            continue;
        }
        last_space = space;
        let b = if fold_case { b.to_ascii_lowercase() } else { b };
        // Keep the key text printable: escape control and non-ASCII bytes.
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` field lines.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for line in headers.get_all(COOKIE) {
        for pair in line.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if let Some(eq) = pair.iter().position(|b| *b == b'=') {
                if &pair[..eq] == name.as_bytes() {
                    let v = pair[eq + 1..].trim_ascii();
                    let v = v
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v);
                    return Some(v);
                }
            }
        }
    }
    None
}

/// The primary key for a request: `scheme://host/path?query` normalized, plus the
/// rule's keyed headers and cookies. An empty query and a lone `?` are the same.
pub fn primary_key(
    rule: &KeyRule,
    scheme: &str,
    host: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> CacheKey {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    let path = if path.is_empty() { "/" } else { path };
    let mut full = String::with_capacity(scheme.len() + host.len() + path_and_query.len() + 16);
    full.push_str(scheme);
    full.push_str("://");
    full.push_str(host);
    normalize_percent(path, &mut full);
    if !query.is_empty() {
        normalize_query(query, rule, &mut full);
    }
    for h in &rule.headers {
        full.push_str("\nh:");
        full.push_str(h.name.as_str());
        let mut lines = headers.get_all(&h.name).iter().peekable();
        if lines.peek().is_some() {
            full.push('=');
            for (i, v) in lines.enumerate() {
                if i > 0 {
                    full.push(',');
                }
                push_key_value(&mut full, v.as_bytes(), h.fold_case, rule.max_value_bytes);
            }
        }
    }
    for c in &rule.cookies {
        full.push_str("\nc:");
        full.push_str(c);
        if let Some(v) = cookie_value(headers, c) {
            full.push('=');
            push_key_value(&mut full, v, false, rule.max_value_bytes);
        }
    }
    CacheKey::new(full)
}

/// An absolute http(s) URL as keys take it: its scheme, normalized host, and path
/// and query. `None` for anything else.
pub fn absolute_url(url: &str) -> Option<(&'static str, String, String)> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = match uri.scheme_str()? {
        "http" => "http",
        "https" => "https",
        _ => return None,
    };
    let host = normalize_host(uri.authority()?.as_str(), scheme).into_owned();
    let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Some((scheme, host, pq))
}

/// The key of an absolute http(s) URL, as a plain request for it would have (no
/// keyed header or cookie values): what a purge by URL invalidates.
pub fn url_key(rules: &KeyRules, url: &str) -> Option<CacheKey> {
    let (scheme, host, pq) = absolute_url(url)?;
    Some(rules.key(scheme, &host, &pq, &HeaderMap::new()))
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

/// A varied field's name and its normalized value in the request (`None`: absent).
pub type VariedField = (HeaderName, Option<Box<[u8]>>);

/// The request side of a stored variant: the varied fields and their normalized
/// values (see [`crate::vary::vary_value`]). One pointer wide, and no allocation for
/// a response without `Vary` (most of them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Variant {
    /// `None` when nothing is varied (never `Some` of an empty list).
    varied: Option<Box<VariedFields>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct VariedFields(Box<[VariedField]>);

impl Variant {
    pub fn of(req: &HeaderMap, names: &[HeaderName]) -> Variant {
        let fields: Box<[VariedField]> = names
            .iter()
            .map(|n| (n.clone(), crate::vary::vary_value(req, n)))
            .collect();
        Variant {
            varied: (!fields.is_empty()).then(|| Box::new(VariedFields(fields))),
        }
    }

    /// The varied fields, in the order of the response's `Vary`.
    pub fn fields(&self) -> &[VariedField] {
        self.varied.as_deref().map_or(&[], |f| &f.0)
    }

    /// Does `req` select this variant?
    pub fn matches(&self, req: &HeaderMap) -> bool {
        self.fields()
            .iter()
            .all(|(name, value)| crate::vary::vary_value(req, name).as_deref() == value.as_deref())
    }

    pub fn same_names(&self, other: &Variant) -> bool {
        self.fields().len() == other.fields().len()
            && self
                .fields()
                .iter()
                .zip(other.fields())
                .all(|(a, b)| a.0 == b.0)
    }

    pub fn weight(&self) -> usize {
        self.fields()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, |v| v.len()) + 16)
            .sum()
    }

    /// `accept-language=en; accept-encoding=gzip` (for debug headers).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, (n, v)) in self.fields().iter().enumerate() {
            if i > 0 {
                s.push_str("; ");
            }
            s.push_str(n.as_str());
            s.push('=');
            match v {
                Some(v) => s.push_str(&String::from_utf8_lossy(v)),
                None => s.push_str("(absent)"),
            }
        }
        if s.is_empty() {
            s.push_str("(no vary)");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(rule: &KeyRule, pq: &str) -> String {
        primary_key(rule, "http", "a", pq, &HeaderMap::new())
            .full
            .to_string()
    }

    #[test]
    fn hosts_that_are_not_a_reg_name_or_ip_are_refused() {
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("shop.example", true),
            ("SHOP.example.", true),
            ("shop.example:8080", true),
            ("shop.example:", true),
            ("127.0.0.1:80", true),
            ("[::1]", true),
            ("[::1]:8443", true),
            ("my_host-1.example", true),
            ("caf%C3%A9.example", true),
            // A path or query in the host would collide with another URL's key.
            ("shop.example/a", false),
            ("shop.example?a=1", false),
            ("shop.example#x", false),
            ("user@shop.example", false),
            ("shop.example:80:80", false),
            ("shop.example:123456", false),
            ("shop.example:8o", false),
            (":80", false),
            ("[::1", false),
            ("[zz::1]", false),
            ("[::1]x", false),
            ("a b", false),
            ("a,b", false),
            ("a\\b", false),
            ("%zz.example", false),
            ("%4", false),
            ("é.example", false),
        ];
        for (host, ok) in cases {
            assert_eq!(valid_host(host), *ok, "{host:?}");
        }
    }

    #[test]
    fn absolute_urls_as_keys_take_them() {
        type Parts<'a> = Option<(&'a str, &'a str, &'a str)>;
        let cases: &[(&str, Parts)] = &[
            (
                "http://Shop.Example:80/a?b=1",
                Some(("http", "shop.example", "/a?b=1")),
            ),
            (
                "https://shop.example:443",
                Some(("https", "shop.example", "/")),
            ),
            (
                "https://shop.example:80/x",
                Some(("https", "shop.example:80", "/x")),
            ),
            ("ftp://shop.example/x", None),
            ("/relative", None),
            ("not a url", None),
        ];
        for (url, want) in cases {
            let got = absolute_url(url);
            let got = got.as_ref().map(|(s, h, p)| (*s, h.as_str(), p.as_str()));
            assert_eq!(got, *want, "{url}");
        }
    }

    #[test]
    fn a_keys_target_is_its_normalized_path_and_query() {
        let rule = KeyRule {
            query: QueryRule::Drop(vec![NamePattern::new("utm_*")]),
            ..KeyRule::default()
        };
        let cases: &[(&str, Option<&str>)] = &[
            ("/landing?utm_source=x&short=1", Some("/landing?short=1")),
            (
                "/a?callback=cb&utm_content=x;callback=evil",
                Some("/a?callback=cb"),
            ),
            ("/%7euser/%2f", Some("/~user/%2F")),
            ("", Some("/")),
            ("/p?", Some("/p")),
        ];
        for (pq, target_) in cases {
            let k = primary_key(&rule, "https", "shop.example:8443", pq, &HeaderMap::new());
            assert_eq!(target(&k.full), *target_, "{pq}");
        }
        let keyed = KeyRule {
            cookies: vec!["seg".into()],
            ..KeyRule::default()
        };
        let k = primary_key(&keyed, "http", "a", "/x?b=1", &HeaderMap::new());
        assert_eq!(target(&k.full), Some("/x?b=1"));
        assert_eq!(target("http://a*"), None);
    }

    #[test]
    fn capitals_are_found_at_any_position_and_only_capitals() {
        for len in 1..20 {
            for at in 0..len {
                for (c, capital) in [('A', true), ('Z', true), ('M', true)]
                    .into_iter()
                    .chain(['@', '[', 'a', 'z', '0', 'é'].map(|c| (c, false)))
                {
                    let host: String = (0..len).map(|i| if i == at { c } else { 'x' }).collect();
                    let normal = normalize_host(&host, "http");
                    assert_eq!(normal, host.to_ascii_lowercase(), "{host}");
                    assert_eq!(
                        matches!(normal, std::borrow::Cow::Owned(_)),
                        capital,
                        "{host}"
                    );
                }
            }
        }
    }

    #[test]
    fn host_normalization() {
        let cases = [
            ("Example.COM.", "http", "example.com"),
            ("example.com:80", "http", "example.com"),
            ("example.com:443", "https", "example.com"),
            ("example.com:8080", "http", "example.com:8080"),
            ("[::1]", "http", "[::1]"),
            ("[::1]:80", "http", "[::1]"),
            ("", "http", ""),
            // A trailing dot before a port, an empty port, a default port only for
            // its own scheme.
            ("example.com.:8080", "http", "example.com:8080"),
            ("example.com.:80", "http", "example.com"),
            ("example.com:", "http", "example.com"),
            ("Ex.com:443", "https", "ex.com"),
            ("ex.com:443", "http", "ex.com:443"),
            ("ex.com:80", "https", "ex.com:80"),
            ("EXAMPLE.COM:8080", "http", "example.com:8080"),
        ];
        for (host, scheme, normal) in cases {
            assert_eq!(normalize_host(host, scheme), normal, "{host} ({scheme})");
        }
        // Hosts already normal take the fast path (no copy).
        assert!(matches!(
            normalize_host("cdn.example.com:8443", "https"),
            std::borrow::Cow::Borrowed("cdn.example.com:8443")
        ));
        assert!(matches!(
            normalize_host("127.0.0.1:18301", "http"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn path_percent_normalization() {
        let cases = [
            ("/a%7eb", "/a~b"),
            ("/a%7Eb", "/a~b"),
            ("/%41%42", "/AB"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb", "/a%2Fb"),
            // A `%` that starts no escape is escaped itself, so the result is its
            // own normal form (never a new escape).
            ("/%zz", "/%25zz"),
            ("/%4", "/%254"),
            ("/%", "/%25"),
            ("/%%341", "/%2541"),
            ("/%%414", "/%25A4"),
            ("/%25zz", "/%25zz"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/ümlaut", "/ümlaut"),
        ];
        for (input, want) in cases {
            let mut out = String::new();
            normalize_percent(input, &mut out);
            assert_eq!(out, want, "{input}");
        }
    }

    #[test]
    fn query_parameters_sort_by_their_normal_form() {
        let rule = KeyRule::default();
        assert_eq!(key(&rule, "/p?a=%7e&a=b"), key(&rule, "/p?a=~&a=b"));
        assert_eq!(key(&rule, "/p?a=b&a=%7E"), "http://a/p?a=b&a=~");
    }

    #[test]
    fn query_normalization() {
        let rule = KeyRule::default();
        assert_eq!(key(&rule, "/x?b=2&a=1"), "http://a/x?a=1&b=2");
        assert_eq!(
            key(
                &rule,
                "/x?a=1&b=2&utm_source=n&gclid=z&fbclid=q&mc_cid=1&mc_eid=2"
            ),
            "http://a/x?a=1&b=2"
        );
        assert_eq!(key(&rule, "/x?utm%5Fsource=n&a=1"), "http://a/x?a=1");
        assert_eq!(key(&rule, "/x?"), "http://a/x");
        assert_eq!(key(&rule, "/x?&&"), "http://a/x");
        assert_eq!(key(&rule, "/x?a=%7e"), "http://a/x?a=~");
        assert_eq!(key(&rule, "/x?a=2&a=1"), "http://a/x?a=1&a=2");
        let unsorted = KeyRule {
            sort_query: false,
            ..KeyRule::default()
        };
        assert_eq!(key(&unsorted, "/x?b=2&a=1"), "http://a/x?b=2&a=1");
        let allow = KeyRule {
            query: QueryRule::Allow(vec![NamePattern::new("page"), NamePattern::new("f_*")]),
            ..KeyRule::default()
        };
        assert_eq!(
            key(&allow, "/x?z=1&page=2&f_color=red&session=9"),
            "http://a/x?f_color=red&page=2"
        );
        assert_eq!(key(&allow, "/x?z=1"), "http://a/x");
    }

    #[test]
    fn keyed_headers_and_cookies() {
        let rule = KeyRule {
            headers: vec![KeyHeader {
                name: HeaderName::from_static("x-experiment-id"),
                fold_case: true,
            }],
            cookies: vec!["user_segment".into()],
            max_value_bytes: 8,
            ..KeyRule::default()
        };
        let mut h = HeaderMap::new();
        h.insert(
            "x-experiment-id",
            HeaderValue::from_static("  Blue   Team "),
        );
        h.insert(
            "cookie",
            HeaderValue::from_static("session=abc; user_segment=\"vip\"; other=1"),
        );
        let k = primary_key(&rule, "http", "a", "/", &h);
        assert_eq!(
            &*k.full,
            "http://a/\nh:x-experiment-id=blue tea\nc:user_segment=vip"
        );
        // Absent values are distinct from empty ones, and control bytes are escaped.
        let k = primary_key(&rule, "http", "a", "/", &HeaderMap::new());
        assert_eq!(&*k.full, "http://a/\nh:x-experiment-id\nc:user_segment");
        let mut h = HeaderMap::new();
        h.insert(
            "x-experiment-id",
            HeaderValue::from_bytes(b"a\xffb%").unwrap(),
        );
        let k = primary_key(&rule, "http", "a", "/", &h);
        assert!(k.full.contains("=a%FFb%25"), "{}", k.full);
    }

    #[test]
    fn huge_values_are_bounded() {
        let rule = KeyRule {
            cookies: vec!["c".into()],
            ..KeyRule::default()
        };
        let mut h = HeaderMap::new();
        let big = format!("c={}", "x".repeat(100_000));
        h.insert("cookie", HeaderValue::from_str(&big).unwrap());
        let k = primary_key(&rule, "http", "a", "/", &h);
        assert!(k.full.len() < 400);
    }

    #[test]
    fn route_matching() {
        let shop = KeyRule {
            host: HostMatch::Suffix("example.com".into()),
            path_prefix: "/shop".into(),
            ..KeyRule::default()
        };
        assert!(shop.matches("www.example.com", "/shop/x"));
        assert!(shop.matches("www.example.com:8080", "/shop"));
        assert!(!shop.matches("example.com", "/shop"));
        assert!(!shop.matches("badexample.com", "/shop"));
        assert!(!shop.matches("www.example.com", "/blog"));
        let exact = KeyRule {
            host: HostMatch::Exact("a.test".into()),
            ..KeyRule::default()
        };
        assert!(exact.matches("a.test", "/"));
        assert!(!exact.matches("b.test", "/"));
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
