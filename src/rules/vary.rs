//! Vary (RFC 9111 §4.1): how request fields are compared to select a stored
//! variant, and the normalizers that keep `Accept-Encoding` and `Accept-Language`
//! from exploding the cache. Pure functions.
//!
//! A normalizer rewrites the request's field *before* lookup and before the request
//! goes to the origin, so the origin sees exactly the value the variant is stored
//! under (as Varnish does for Accept-Encoding). Without that, an origin could answer
//! `br` to `br, gzip` and the entry would then be served to a `br`-only client
//! under a different reading.

use std::borrow::Cow;

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, ACCEPT, ACCEPT_CHARSET, ACCEPT_ENCODING,
    ACCEPT_LANGUAGE, AUTHORIZATION, COOKIE, USER_AGENT,
};

/// How one request field is reduced to a small set of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalizer {
    /// `Accept-Encoding` → `br`, `gzip` or `identity` (the best one accepted).
    Encoding,
    /// `Accept-Language` → the best match among `languages`, else `default`.
    Language {
        languages: Vec<String>,
        default: String,
    },
}

impl Normalizer {
    /// The normalized value of a request without the field (what [`normalize`]
    /// gives for it).
    pub fn for_absent(&self) -> Option<HeaderValue> {
        match self {
            Normalizer::Encoding => Some(HeaderValue::from_static("identity")),
            Normalizer::Language { default, .. } => HeaderValue::from_str(default).ok(),
        }
    }

    /// Is `value` one this normalizer produces (and so maps to itself)?
    pub fn is_normal(&self, value: &[u8]) -> bool {
        match self {
            Normalizer::Encoding => ENCODINGS.contains(&value),
            // A configured language maps to itself (its exact match comes first); the
            // default need not (it may match a configured primary subtag).
            Normalizer::Language { languages, .. } => {
                languages.iter().any(|l| l.as_bytes() == value)
            }
        }
    }
}

/// Vary handling for one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaryRules {
    pub normalizers: Vec<(HeaderName, Normalizer)>,
    /// Of the per-user fields (`Cookie`, `Authorization`, `User-Agent`), those a
    /// response may vary on and still be stored.
    pub allow_private: Vec<HeaderName>,
}

impl Default for VaryRules {
    fn default() -> Self {
        VaryRules {
            normalizers: vec![(ACCEPT_ENCODING, Normalizer::Encoding)],
            allow_private: Vec::new(),
        }
    }
}

/// What `Normalizer::Encoding` produces (each maps to itself).
const ENCODINGS: [&[u8]; 3] = [b"br", b"gzip", b"identity"];

/// Fields whose Vary would store one copy per user or per browser build.
pub fn is_private_vary(name: &HeaderName) -> bool {
    name == COOKIE || name == AUTHORIZATION || name == USER_AGENT
}

impl VaryRules {
    /// Rewrites the normalized fields of a request in place.
    pub fn normalize_request(&self, headers: &mut HeaderMap) {
        for (name, normalizer) in &self.normalizers {
            // One lookup of the name, whether the field is there or not.
            let only = match headers.entry(name) {
                // No such field (most requests from tools and bots): what the
                // normalizer gives for none, without a pass over nothing.
                Entry::Vacant(slot) => {
                    if let Some(v) = normalizer.for_absent() {
                        slot.insert(v);
                    }
                    continue;
                }
                Entry::Occupied(lines) => {
                    let mut lines = lines.iter();
                    match (lines.next(), lines.next()) {
                        // A value the normalizer produces maps to itself: nothing to parse.
                        (Some(only), None) if normalizer.is_normal(only.as_bytes()) => continue,
                        (Some(only), None) => Some(only.clone()),
                        _ => None,
                    }
                }
            };
            let value = normalize(normalizer, headers, name);
            if only.is_some_and(|v| v.as_bytes() == value.as_bytes()) {
                continue; // already normal: nothing to rewrite
            }
            let v = match value {
                Cow::Borrowed(fixed) => HeaderValue::from_static(fixed),
                Cow::Owned(text) => match HeaderValue::from_str(&text) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            headers.insert(name.clone(), v);
        }
    }

    /// The first per-user field in `names` that this route does not allow.
    pub fn refused<'a>(&self, names: &'a [HeaderName]) -> Option<&'a HeaderName> {
        names
            .iter()
            .find(|n| is_private_vary(n) && !self.allow_private.contains(n))
    }
}

/// Visits one field's list members across all its lines: each token (trimmed, not
/// yet lowercased) with its q-value. At most 64 members, for bounded work on huge
/// fields; no allocation.
fn each_member(headers: &HeaderMap, name: &HeaderName, mut visit: impl FnMut(&[u8], f32)) {
    let mut seen = 0;
    for line in headers.get_all(name) {
        for member in line.as_bytes().split(|&b| b == b',') {
            let mut parts = member.split(|&b| b == b';');
            let token = parts.next().unwrap_or_default().trim_ascii();
            if token.is_empty() || token.len() > 64 {
                continue;
            }
            let mut q = 1.0f32;
            for p in parts {
                let Some(eq) = p.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if p[..eq].trim_ascii().eq_ignore_ascii_case(b"q") {
                    // RFC 9110 §12.4.2: qvalue 0..1; anything else is invalid → 0.
                    q = std::str::from_utf8(p[eq + 1..].trim_ascii())
                        .ok()
                        .and_then(|v| v.parse::<f32>().ok())
                        .filter(|q| (0.0..=1.0).contains(q))
                        .unwrap_or(0.0);
                }
            }
            visit(token, q);
            seen += 1;
            if seen >= 64 {
                return;
            }
        }
    }
}

/// One field's list members with q-values, tokens lowercased.
fn members(headers: &HeaderMap, name: &HeaderName) -> Vec<(String, f32)> {
    let mut out = Vec::new();
    each_member(headers, name, |token, q| {
        out.push((String::from_utf8_lossy(token).to_ascii_lowercase(), q));
    });
    out
}

/// The normalized value of a field per `normalizer`.
pub fn normalize(
    normalizer: &Normalizer,
    headers: &HeaderMap,
    name: &HeaderName,
) -> Cow<'static, str> {
    match normalizer {
        Normalizer::Encoding => {
            // The first member naming each coding counts; `*` stands in for one
            // not named. Compared without allocating (browsers send this field on
            // every request).
            let (mut br, mut gzip, mut star) = (None, None, None);
            each_member(headers, name, |token, q| {
                let slot = if token.eq_ignore_ascii_case(b"br") {
                    &mut br
                } else if token.eq_ignore_ascii_case(b"gzip") {
                    &mut gzip
                } else if token == b"*" {
                    &mut star
                } else {
                    return;
                };
                slot.get_or_insert(q);
            });
            let q_of = |q: Option<f32>| q.or(star).unwrap_or(0.0);
            let (br, gzip) = (q_of(br), q_of(gzip));
            Cow::Borrowed(if br > 0.0 && br >= gzip {
                "br"
            } else if gzip > 0.0 {
                "gzip"
            } else {
                "identity"
            })
        }
        Normalizer::Language { languages, default } => {
            let list = members(headers, name);
            let mut ranked: Vec<&(String, f32)> = list.iter().filter(|(_, q)| *q > 0.0).collect();
            ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
            for (tag, _) in ranked {
                if tag == "*" {
                    return Cow::Owned(default.clone());
                }
                // Exact match first, then the request's primary subtag ("en-gb" → "en"),
                // then a configured regional tag for a bare request tag ("en" → "en-us").
                if let Some(l) = languages.iter().find(|l| l.eq_ignore_ascii_case(tag)) {
                    return Cow::Owned(l.clone());
                }
                let primary = tag.split('-').next().unwrap_or(tag);
                if let Some(l) = languages.iter().find(|l| l.eq_ignore_ascii_case(primary)) {
                    return Cow::Owned(l.clone());
                }
                if let Some(l) = languages.iter().find(|l| {
                    l.split('-')
                        .next()
                        .is_some_and(|p| p.eq_ignore_ascii_case(primary))
                }) {
                    return Cow::Owned(l.clone());
                }
            }
            Cow::Owned(default.clone())
        }
    }
}

/// Fields whose values compare case-insensitively (tokens, media types, language tags).
fn case_insensitive(name: &HeaderName) -> bool {
    name == ACCEPT || name == ACCEPT_ENCODING || name == ACCEPT_LANGUAGE || name == ACCEPT_CHARSET
}

/// The normalized value of one request field for Vary matching: field lines
/// combined with ", ", whitespace around commas folded, runs of spaces folded,
/// lowercased where the field is case-insensitive (§4.1 allows all three).
pub fn vary_value(req: &HeaderMap, name: &HeaderName) -> Option<Box<[u8]>> {
    let mut lines = req.get_all(name).iter().peekable();
    lines.peek()?;
    let fold = case_insensitive(name);
    let mut out = Vec::new();
    for line in lines {
        for member in line.as_bytes().split(|b| *b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            let mut last_space = false;
            for &b in member {
                let space = b == b' ' || b == b'\t';
                if !(space && last_space) {
                    out.push(if space {
                        b' '
                    } else if fold {
                        b.to_ascii_lowercase()
                    } else {
                        b
                    });
                }
                last_space = space;
            }
        }
    }
    Some(out.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, values: &[&'static [u8]]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(name, HeaderValue::from_bytes(v).unwrap());
        }
        m
    }

    #[test]
    fn accept_encoding_normalizer() {
        let cases: &[(&[&[u8]], &str)] = &[
            (&[b"gzip, deflate, br"], "br"),
            (&[b"gzip, deflate"], "gzip"),
            (&[b"GZIP"], "gzip"),
            (&[b"br;q=0.5, gzip;q=0.9"], "gzip"),
            (&[b"br;q=0, gzip;q=0"], "identity"),
            (&[b"*"], "br"),
            (&[b"*;q=0, gzip"], "gzip"),
            (&[b"deflate"], "identity"),
            (&[b"gzip;q=banana"], "identity"),
            (&[b"gzip;q=7"], "identity"),
            (&[b"\xff\xfe, gzip"], "gzip"),
            (&[b"identity"], "identity"),
            (&[], "identity"),
            (&[b"gzip", b"br"], "br"),
        ];
        for (values, want) in cases {
            let m = h("accept-encoding", values);
            assert_eq!(
                normalize(&Normalizer::Encoding, &m, &ACCEPT_ENCODING),
                *want,
                "{values:?}"
            );
        }
    }

    #[test]
    fn accept_language_normalizer() {
        let n = Normalizer::Language {
            languages: vec!["en".into(), "fr".into(), "de-CH".into()],
            default: "en".into(),
        };
        let cases: &[(&[u8], &str)] = &[
            (b"fr-CA, fr;q=0.9, en;q=0.8", "fr"),
            (b"de-ch", "de-CH"),
            (b"de", "de-CH"),
            (b"ja, fr;q=0.1", "fr"),
            (b"ja", "en"),
            (b"en;q=0.2, fr;q=0.8", "fr"),
            (b"fr;q=0, en", "en"),
            (b"*", "en"),
            (b"", "en"),
            (b";;;,,,q=", "en"),
        ];
        for (value, want) in cases {
            let m = h("accept-language", &[value]);
            assert_eq!(
                normalize(&n, &m, &ACCEPT_LANGUAGE),
                *want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let huge = format!("{}fr", "xx, ".repeat(10_000));
        let mut m = HeaderMap::new();
        m.insert(ACCEPT_LANGUAGE, HeaderValue::from_str(&huge).unwrap());
        assert_eq!(
            normalize(&n, &m, &ACCEPT_LANGUAGE),
            "en",
            "bounded: only the first 64 members count"
        );
    }

    #[test]
    fn what_a_normalizer_produces_is_normal() {
        let lang = Normalizer::Language {
            languages: vec!["en".into(), "fr-CA".into()],
            default: "en".into(),
        };
        for (n, inputs) in [
            (
                Normalizer::Encoding,
                vec!["gzip, br", "gzip", "", "*", "deflate"],
            ),
            (lang, vec!["fr-ca, en;q=0.5", "en-GB", "de", "*", ""]),
        ] {
            for input in inputs {
                let one = |v: &str| {
                    let mut m = HeaderMap::new();
                    m.insert(ACCEPT, HeaderValue::from_str(v).unwrap());
                    m
                };
                let out = normalize(&n, &one(input), &ACCEPT);
                assert!(n.is_normal(out.as_bytes()), "{input:?} → {out:?}");
                let again = normalize(&n, &one(&out), &ACCEPT);
                assert_eq!(again, out, "a normal value maps to itself");
            }
        }
    }

    #[test]
    fn an_absent_field_normalizes_as_normalize_reads_it() {
        let none = HeaderMap::new();
        let language = Normalizer::Language {
            languages: vec!["en-us".into(), "fr".into()],
            default: "de".into(),
        };
        for n in [Normalizer::Encoding, language] {
            let name = match n {
                Normalizer::Encoding => ACCEPT_ENCODING,
                Normalizer::Language { .. } => ACCEPT_LANGUAGE,
            };
            let expected = normalize(&n, &none, &name);
            assert_eq!(
                n.for_absent().as_ref().map(|v| v.as_bytes()),
                Some(expected.as_bytes())
            );
            let rules = VaryRules {
                normalizers: vec![(name.clone(), n)],
                allow_private: Vec::new(),
            };
            let mut m = HeaderMap::new();
            rules.normalize_request(&mut m);
            assert_eq!(m[&name].as_bytes(), expected.as_bytes());
        }
    }

    #[test]
    fn normalize_request_rewrites_the_field() {
        let rules = VaryRules::default();
        let mut m = h("accept-encoding", &[b"gzip, br"]);
        rules.normalize_request(&mut m);
        assert_eq!(m[ACCEPT_ENCODING], "br");
        let mut m = HeaderMap::new();
        rules.normalize_request(&mut m);
        assert_eq!(m[ACCEPT_ENCODING], "identity");
    }

    #[test]
    fn vary_values_fold_whitespace_lines_and_case() {
        let a = h("accept-language", &[b"EN ,  Fr"]);
        let b = h("accept-language", &[b"en", b"fr"]);
        assert_eq!(
            vary_value(&a, &ACCEPT_LANGUAGE),
            vary_value(&b, &ACCEPT_LANGUAGE)
        );
        assert_eq!(
            vary_value(&a, &ACCEPT_LANGUAGE).as_deref(),
            Some(&b"en, fr"[..])
        );
        // Case matters for other fields.
        let x = HeaderName::from_static("x-flag");
        assert_ne!(
            vary_value(&h("x-flag", &[b"A"]), &x),
            vary_value(&h("x-flag", &[b"a"]), &x)
        );
        // Absent differs from empty.
        assert_eq!(vary_value(&HeaderMap::new(), &x), None);
        assert_eq!(
            vary_value(&h("x-flag", &[b""]), &x).as_deref(),
            Some(&b""[..])
        );
        // Non-UTF-8 is compared as bytes.
        assert!(vary_value(&h("x-flag", &[b"\xff"]), &x).is_some());
    }

    #[test]
    fn private_vary_needs_permission() {
        let rules = VaryRules::default();
        let names = [ACCEPT_ENCODING, COOKIE];
        assert_eq!(rules.refused(&names), Some(&COOKIE));
        let rules = VaryRules {
            allow_private: vec![COOKIE],
            ..VaryRules::default()
        };
        assert_eq!(rules.refused(&names), None);
        assert_eq!(rules.refused(&[USER_AGENT]), Some(&USER_AGENT));
    }
}
