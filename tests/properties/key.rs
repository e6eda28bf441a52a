//! Primary keys and their normalizations (src/key.rs).

use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE};
use lacquer::key::{
    normalize_host, normalize_percent, normalize_query, primary_key, valid_host, KeyHeader,
    KeyRule, NamePattern, QueryRule,
};
use proptest::prelude::*;

use crate::support::{field_bytes, recase};

const UNRESERVED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";

/// One character of a path or query, as it means something (RFC 3986 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// An unreserved character: written as itself or percent-encoded, it is the
    /// same character (§6.2.2.2).
    Unreserved(u8),
    /// Any other byte, percent-encoded: `%2F` is not `/`.
    Encoded(u8),
    /// A reserved character or sub-delimiter written as itself.
    Literal(u8),
}

/// How a unit is written: as itself, or as an escape with upper/lower-case hex.
#[derive(Debug, Clone, Copy)]
struct Spelling {
    unit: Unit,
    escape: bool,
    lower_hex: bool,
}

fn escape(b: u8, lower: bool) -> String {
    if lower {
        format!("%{b:02x}")
    } else {
        format!("%{b:02X}")
    }
}

impl Spelling {
    fn render(&self) -> String {
        match self.unit {
            Unit::Unreserved(b) if !self.escape => (b as char).to_string(),
            Unit::Unreserved(b) | Unit::Encoded(b) => escape(b, self.lower_hex),
            Unit::Literal(b) => (b as char).to_string(),
        }
    }

    /// The normal form (RFC 3986 §6.2.2.1-2): unreserved characters decoded,
    /// other escapes with upper-case hex.
    fn normal(&self) -> String {
        match self.unit {
            Unit::Unreserved(b) | Unit::Literal(b) => (b as char).to_string(),
            Unit::Encoded(b) => format!("%{b:02X}"),
        }
    }
}

fn unit(literals: &'static [u8]) -> impl Strategy<Value = Unit> {
    prop_oneof![
        6 => prop::sample::select(UNRESERVED).prop_map(Unit::Unreserved),
        2 => any::<u8>()
            .prop_filter("not unreserved", |b| !UNRESERVED.contains(b))
            .prop_map(Unit::Encoded),
        2 => prop::sample::select(literals).prop_map(Unit::Literal),
    ]
}

/// A path: `/` then units (`/` itself among the literals).
fn path_units() -> impl Strategy<Value = Vec<Unit>> {
    prop::collection::vec(unit(b"/:@!$&'()*+,;="), 0..24)
}

fn render(units: &[Unit], escapes: &[(bool, bool)]) -> String {
    units
        .iter()
        .zip(escapes.iter().cycle())
        .map(|(&unit, &(escape, lower_hex))| {
            Spelling {
                unit,
                escape,
                lower_hex,
            }
            .render()
        })
        .collect()
}

fn normal(units: &[Unit]) -> String {
    units
        .iter()
        .map(|&unit| {
            Spelling {
                unit,
                escape: false,
                lower_hex: false,
            }
            .normal()
        })
        .collect()
}

fn spellings() -> impl Strategy<Value = Vec<(bool, bool)>> {
    prop::collection::vec(any::<(bool, bool)>(), 1..32)
}

/// Hosts as a request's authority holds them: a reg-name (any case, trailing
/// dots), an IPv4 address or a bracketed IPv6 literal, with or without a port.
fn authority() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        4 => "[a-zA-Z0-9-]{1,8}(\\.[a-zA-Z0-9_~-]{1,8}){0,3}\\.{0,2}",
        1 => "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        1 => prop::sample::select(&["[::1]", "[2001:DB8::1]", "[fe80::a:B]"][..]).prop_map(String::from),
    ];
    let port = prop_oneof![
        3 => Just(String::new()),
        1 => Just(":".to_string()),
        1 => Just(":80".to_string()),
        1 => Just(":443".to_string()),
        2 => "[0-9]{1,5}".prop_map(|p| format!(":{p}")),
    ];
    (name, port).prop_map(|(n, p)| format!("{n}{p}"))
}

fn scheme() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["http", "https"][..])
}

/// Strings with many of the characters `normalize_percent` looks at.
fn percent_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => Just('%'),
            4 => prop::sample::select(&b"0123456789abcdefABCDEFgz"[..]).prop_map(char::from),
            2 => prop::sample::select(UNRESERVED).prop_map(char::from),
            1 => prop::sample::select(&b"/?&=+"[..]).prop_map(char::from),
            1 => any::<char>(),
        ],
        0..24,
    )
    .prop_map(|c| c.into_iter().collect())
}

/// Is every `%` in `s` the start of a valid escape (`%` and two hex digits)?
fn escapes_are_valid(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit())
    })
}

fn percent(s: &str) -> String {
    let mut out = String::new();
    normalize_percent(s, &mut out);
    out
}

fn key(rule: &KeyRule, scheme: &str, host: &str, pq: &str, headers: &HeaderMap) -> String {
    primary_key(rule, scheme, host, pq, headers).full
}

/// A query parameter: name and value, as units.
#[derive(Debug, Clone)]
struct Param {
    name: Vec<Unit>,
    value: Option<Vec<Unit>>,
}

impl Param {
    fn render(&self, escapes: &[(bool, bool)]) -> String {
        match &self.value {
            Some(v) => format!("{}={}", render(&self.name, escapes), render(v, escapes)),
            None => render(&self.name, escapes),
        }
    }

    fn normal(&self) -> String {
        match &self.value {
            Some(v) => format!("{}={}", normal(&self.name), normal(v)),
            None => normal(&self.name),
        }
    }

    /// The decoded name (what the rule's patterns and the sort compare).
    fn decoded_name(&self) -> Vec<u8> {
        self.name
            .iter()
            .map(|u| match *u {
                Unit::Unreserved(b) | Unit::Encoded(b) | Unit::Literal(b) => b,
            })
            .collect()
    }
}

fn param() -> impl Strategy<Value = Param> {
    // Names of unreserved characters only (`+` and escapes of others would decode
    // to names that compare differently from their spelling, which is by design).
    let name = prop::collection::vec(
        prop::sample::select(UNRESERVED).prop_map(Unit::Unreserved),
        1..6,
    );
    let value = prop::option::of(prop::collection::vec(unit(b"/:@!$'()*+,;=?"), 0..8));
    (name, value).prop_map(|(name, value)| Param { name, value })
}

fn query(params: &[Param], escapes: &[(bool, bool)]) -> String {
    params
        .iter()
        .map(|p| p.render(escapes))
        .collect::<Vec<_>>()
        .join("&")
}

fn is_dropped_by_default(name: &[u8]) -> bool {
    name.starts_with(b"utm_") || [&b"gclid"[..], b"fbclid", b"mc_cid", b"mc_eid"].contains(&name)
}

/// What `push_key_value` makes of a keyed value: trimmed, runs of blanks cut to
/// their first, case folded if asked, escaped (`%XX` for `%`, controls and
/// non-ASCII), cut once `max` bytes are written.
fn keyed_value_model(raw: &[u8], fold: bool, max: usize) -> String {
    let mut out = String::new();
    let mut last_space = false;
    for &b in raw.trim_ascii() {
        if out.len() >= max {
            break;
        }
        let space = b == b' ' || b == b'\t';
        if space && last_space {
            continue;
        }
        last_space = space;
        let b = if fold { b.to_ascii_lowercase() } else { b };
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Host normalization: idempotent, case-insensitive, the scheme's default port
    /// is the same as none, and arbitrary strings never panic.
    #[test]
    fn normalize_host_is_idempotent(host in authority(), scheme in scheme(), junk in "\\PC{0,16}|[a-zA-Z.:\\[\\]0-9]{0,16}") {
        let once = normalize_host(&host, scheme).into_owned();
        prop_assert_eq!(normalize_host(&once, scheme), once.as_str(), "{}", host);
        let upper = host.to_ascii_uppercase();
        prop_assert_eq!(normalize_host(&upper, scheme), once.as_str());
        prop_assert!(!once.bytes().any(|b| b.is_ascii_uppercase()));
        prop_assert!(!once.ends_with(':') && !once.ends_with('.'), "{}", once);
        if !host.contains("]:") && host.rfind(':').is_none_or(|i| host[..i].contains('[')) {
            let default = if scheme == "https" { ":443" } else { ":80" };
            let with_port = format!("{host}{default}");
            prop_assert_eq!(normalize_host(&with_port, scheme), once.as_str());
        }
        // Arbitrary text (a Host field is any visible ASCII): no panic. Idempotence
        // is not claimed there: `a.:b.:80` gives `a.:b`, which gives `a:b` (such
        // hosts are not authorities; reported).
        let _ = normalize_host(&junk, scheme);
    }

    /// `normalize_percent` of a path spelled in any mix of escapes and plain
    /// characters is its normal form: the same for every spelling, and different
    /// for different paths.
    #[test]
    fn percent_normal_form(units in path_units(), a in spellings(), b in spellings()) {
        let want = normal(&units);
        let (one, two) = (render(&units, &a), render(&units, &b));
        prop_assert_eq!(percent(&one), want.as_str(), "{}", one);
        prop_assert_eq!(percent(&two), want.as_str(), "{}", two);
        prop_assert_eq!(percent(&want), want.as_str());
    }

    /// `normalize_percent` is idempotent on any text, and its output has only
    /// valid escapes: a `%` that starts no escape becomes `%25` (kept as it was,
    /// `%%341` gave `%41`, an escape the request never had).
    #[test]
    fn normalize_percent_is_idempotent(s in percent_text()) {
        let once = percent(&s);
        prop_assert_eq!(percent(&once), once.as_str(), "{:?}", s);
        prop_assert!(escapes_are_valid(&once), "{:?} gave {:?}", s, once);
    }

    /// Keys of paths: equal for two spellings of one path, different when one
    /// unreserved character differs, and a key is its own normal form.
    #[test]
    fn path_keys(
        units in path_units(),
        a in spellings(),
        b in spellings(),
        at in any::<prop::sample::Index>(),
        other in prop::sample::select(UNRESERVED),
        host in authority(),
        scheme in scheme(),
    ) {
        let rule = KeyRule::default();
        let none = HeaderMap::new();
        let host = normalize_host(&host, scheme).into_owned();
        let p1 = format!("/{}", render(&units, &a));
        let p2 = format!("/{}", render(&units, &b));
        let k1 = key(&rule, scheme, &host, &p1, &none);
        prop_assert_eq!(&k1, &format!("{scheme}://{host}/{}", normal(&units)));
        prop_assert_eq!(&k1, &key(&rule, scheme, &host, &p2, &none));
        // The key's own path gives the same key.
        let own = &k1[scheme.len() + 3 + host.len()..];
        prop_assert_eq!(&key(&rule, scheme, &host, own, &none), &k1);

        let unreserved: Vec<usize> = units
            .iter()
            .enumerate()
            .filter(|(_, u)| matches!(u, Unit::Unreserved(_)))
            .map(|(i, _)| i)
            .collect();
        if !unreserved.is_empty() {
            let i = unreserved[at.index(unreserved.len())];
            if units[i] != Unit::Unreserved(other) {
                let mut changed = units.clone();
                changed[i] = Unit::Unreserved(other);
                let p3 = format!("/{}", render(&changed, &b));
                prop_assert_ne!(&key(&rule, scheme, &host, &p3, &none), &k1, "{} vs {}", p1, p3);
            }
        }
    }

    /// Queries under a sorting rule: the order of parameters does not matter,
    /// spelling unreserved characters as escapes does not matter, the default
    /// tracking parameters are dropped wherever they are, and the key's own query
    /// gives the same key.
    ///
    /// Parameters of one name sort by their normal form (sorted as received,
    /// `?a=%7e&a=b` and `?a=~&a=b` got two keys).
    #[test]
    fn sorted_query_keys(
        params in prop::collection::vec(param(), 0..6),
        a in spellings(),
        b in spellings(),
        shuffle in any::<u64>(),
        tracking in prop::collection::vec(
            (prop::sample::select(&["utm_source", "utm_x", "gclid", "fbclid", "mc_cid", "mc_eid", "utm%5Fid"][..]), any::<prop::sample::Index>()),
            0..3,
        ),
    ) {
        let rule = KeyRule::default();
        let none = HeaderMap::new();
        let kept: Vec<&Param> = {
            let mut k: Vec<&Param> = params.iter().filter(|p| !is_dropped_by_default(&p.decoded_name())).collect();
            k.sort_by_key(|p| (p.decoded_name(), p.normal()));
            k
        };
        let want_query = kept.iter().map(|p| p.normal()).collect::<Vec<_>>().join("&");
        let want = if want_query.is_empty() {
            "http://h/p".to_string()
        } else {
            format!("http://h/p?{want_query}")
        };
        let k1 = key(&rule, "http", "h", &format!("/p?{}", query(&params, &a)), &none);
        prop_assert_eq!(&k1, &want);

        // Another order, another spelling, tracking parameters anywhere.
        let mut shuffled: Vec<String> = params.iter().map(|p| p.render(&b)).collect();
        let n = shuffled.len();
        if n > 1 {
            for i in 0..n {
                shuffled.swap(i, (shuffle >> (i % 32)) as usize % n);
            }
        }
        for (t, at) in &tracking {
            let i = at.index(shuffled.len() + 1);
            shuffled.insert(i, format!("{t}=x"));
        }
        let q2 = shuffled.join("&");
        prop_assert_eq!(&key(&rule, "http", "h", &format!("/p?{q2}"), &none), &want, "{}", q2);
        prop_assert_eq!(&key(&rule, "http", "h", &want["http://h".len()..], &none), &want);

        let mut out = String::new();
        normalize_query(&query(&params, &a), &rule, &mut out);
        prop_assert_eq!(out.as_str(), &want["http://h/p".len()..]);
    }

    /// Without sorting, the order of the parameters is kept; with an allow list,
    /// only the listed parameters are.
    #[test]
    fn unsorted_and_allowed_queries(
        params in prop::collection::vec(param(), 0..6),
        a in spellings(),
        allowed in prop::collection::vec("[a-z]{1,2}", 0..3),
        prefix in any::<bool>(),
    ) {
        let none = HeaderMap::new();
        let q = query(&params, &a);
        let unsorted = KeyRule { sort_query: false, query: QueryRule::Drop(Vec::new()), ..KeyRule::default() };
        let want = params.iter().map(|p| p.normal()).collect::<Vec<_>>().join("&");
        let k = key(&unsorted, "http", "h", &format!("/?{q}"), &none);
        prop_assert_eq!(k.strip_prefix("http://h/").unwrap().trim_start_matches('?'), want.as_str());

        let patterns: Vec<NamePattern> = allowed
            .iter()
            .map(|n| NamePattern::new(&if prefix { format!("{n}*") } else { n.clone() }))
            .collect();
        let allow = KeyRule { sort_query: false, query: QueryRule::Allow(patterns.clone()), ..KeyRule::default() };
        let want: Vec<String> = params
            .iter()
            .filter(|p| {
                let name = String::from_utf8(p.decoded_name()).unwrap();
                patterns.iter().any(|pat| pat.matches(&name))
            })
            .map(|p| p.normal())
            .collect();
        let k = key(&allow, "http", "h", &format!("/?{q}"), &none);
        prop_assert_eq!(k.strip_prefix("http://h/").unwrap().trim_start_matches('?'), want.join("&"));
    }

    /// Hosts the proxy accepts (`valid_host`) hold no path, query or fragment, and
    /// different ones give different keys, whatever the paths.
    ///
    /// (`primary_key` itself cannot tell a host holding `/` from a path: `a/b` with
    /// `/c` and `a` with `/b/c` both key `http://a/b/c`; the proxy refuses such hosts
    /// with 400 before keying, which is what this checks.)
    #[test]
    fn different_hosts_different_keys(
        h1 in prop_oneof![3 => authority(), 1 => "[ -~]{0,12}"],
        h2 in prop_oneof![3 => authority(), 1 => "[ -~]{0,12}"],
        p1 in path_units(),
        p2 in path_units(),
        a in spellings(),
        scheme in scheme(),
    ) {
        for h in [&h1, &h2] {
            if valid_host(h) {
                prop_assert!(!h.contains(['/', '?', '#', '@', ' ']), "{:?}", h);
            }
        }
        if !(valid_host(&h1) && valid_host(&h2)) {
            return Ok(());
        }
        let (n1, n2) = (normalize_host(&h1, scheme), normalize_host(&h2, scheme));
        let none = HeaderMap::new();
        let rule = KeyRule::default();
        let k1 = key(&rule, scheme, &n1, &format!("/{}", render(&p1, &a)), &none);
        let k2 = key(&rule, scheme, &n2, &format!("/{}", render(&p2, &a)), &none);
        if n1 != n2 {
            prop_assert_ne!(k1, k2);
        } else {
            prop_assert_eq!(k1 == k2, normal(&p1) == normal(&p2));
        }
    }

    /// Keyed headers and cookies: the key holds the value trimmed, blanks folded,
    /// case folded if asked, escaped and cut at `max_value_bytes`; so two requests
    /// share a key exactly when those forms agree, and an absent value differs
    /// from an empty one.
    #[test]
    fn keyed_values(
        v1 in prop::option::of(field_bytes(24)),
        v2 in prop::option::of(field_bytes(24)),
        c1 in prop::option::of("[ -:<-~]{0,12}"),
        fold in any::<bool>(),
        max in 1usize..16,
        case in any::<u64>(),
    ) {
        let name = HeaderName::from_static("x-exp");
        let rule = KeyRule {
            headers: vec![KeyHeader { name: name.clone(), fold_case: fold }],
            cookies: vec!["seg".into()],
            max_value_bytes: max,
            ..KeyRule::default()
        };
        let request = |v: &Option<Vec<u8>>| -> (HeaderMap, Option<String>) {
            let mut h = HeaderMap::new();
            let v = v.as_ref().and_then(|v| HeaderValue::from_bytes(v).ok());
            let model = v.as_ref().map(|v| keyed_value_model(v.as_bytes(), fold, max));
            if let Some(v) = v {
                h.insert(name.clone(), v);
            }
            if let Some(c) = &c1 {
                let line = format!("other=1; seg={c}; seg=second");
                h.insert(COOKIE, HeaderValue::from_str(&line).unwrap());
            }
            (h, model)
        };
        let (h1, m1) = request(&v1);
        let (h2, m2) = request(&v2);
        let k1 = key(&rule, "http", "h", "/", &h1);
        let k2 = key(&rule, "http", "h", "/", &h2);
        let header_line = |m: &Option<String>| match m {
            Some(m) => format!("\nh:x-exp={m}"),
            None => "\nh:x-exp".to_string(),
        };
        let cookie_line = match &c1 {
            Some(c) => {
                let c = c.trim_matches([' ', '\t']);
                let c = c.strip_prefix('"').and_then(|c| c.strip_suffix('"')).unwrap_or(c);
                format!("\nc:seg={}", keyed_value_model(c.as_bytes(), false, max))
            }
            None => "\nc:seg".to_string(),
        };
        prop_assert_eq!(&k1, &format!("http://h/{}{cookie_line}", header_line(&m1)));
        prop_assert_eq!(k1 == k2, m1 == m2);
        if fold {
            if let Some(v) = v1.as_ref().and_then(|v| std::str::from_utf8(v).ok()) {
                let (h3, _) = request(&Some(recase(v, case).into_bytes()));
                prop_assert_eq!(key(&rule, "http", "h", "/", &h3), k1);
            }
        }
    }
}
