//! Answering a client's own conditional and range requests from a response we
//! hold (RFC 9110 §13 and §14). Pure functions.

use http::header::{
    HeaderMap, HeaderName, CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE, VARY,
};
use http::StatusCode;

use crate::freshness::header_date;

/// Entity-tag comparison (RFC 9110 §8.8.3.2).
fn opaque_tag(tag: &[u8]) -> Option<(&[u8], bool)> {
    let tag = tag.trim_ascii();
    let (weak, rest) = match tag.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, tag),
    };
    if rest.len() >= 2 && rest[0] == b'"' && rest[rest.len() - 1] == b'"' {
        Some((&rest[1..rest.len() - 1], weak))
    } else {
        None
    }
}

/// Splits an `If-None-Match`-style list of entity tags. Commas inside tags are not
/// valid etagc characters, so a plain split is correct.
fn tags(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Can this request field change how a stored response is answered (a 304, a
/// range)? Requests without any are answered with the stored response as is.
pub fn shapes_answer(name: &http::HeaderName) -> bool {
    name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE || name == RANGE || name == IF_RANGE
}

/// Does the client's `If-None-Match`/`If-Modified-Since` make this a 304?
/// (RFC 9110 §13.1.2, §13.1.3, evaluated in the order of §13.2.2.)
/// Only a 200 response is ever turned into a 304.
pub fn not_modified(req: &HeaderMap, status: StatusCode, res: &HeaderMap) -> bool {
    if status != StatusCode::OK {
        return false;
    }
    let inm: Vec<&[u8]> = req
        .get_all(IF_NONE_MATCH)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !inm.is_empty() {
        let current = res.get(ETAG).and_then(|e| opaque_tag(e.as_bytes()));
        for list in inm {
            for tag in tags(list) {
                if tag == b"*" {
                    return true;
                }
                // Weak comparison: W/ prefixes are ignored.
                if let (Some((a, _)), Some((b, _))) = (opaque_tag(tag), current) {
                    if a == b {
                        return true;
                    }
                }
            }
        }
        return false;
    }
    if let Some(ims) = header_date(req, &IF_MODIFIED_SINCE) {
        if let Some(lm) = header_date(res, &LAST_MODIFIED) {
            return lm <= ims;
        }
    }
    false
}

/// The fields a 304 carries from the full response (RFC 9110 §15.4.5).
pub fn not_modified_headers(res: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        &CACHE_CONTROL,
        &CONTENT_LOCATION,
        &DATE,
        &ETAG,
        &EXPIRES,
        &VARY,
        &LAST_MODIFIED,
    ] {
        for v in res.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    for name in [HeaderName::from_static("cdn-cache-control")] {
        for v in res.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// The answer to a `Range` request against a complete representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) Range: send the whole representation with 200.
    Full,
    /// 206 with `Content-Range: bytes start-end/len` (inclusive end).
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Evaluates `Range` and `If-Range` (RFC 9110 §14.2, §13.1.5) for a stored 200.
/// Decisions: only the `bytes` unit; a request for several ranges is answered with
/// the full representation (allowed by §14.2); invalid syntax is ignored.
pub fn range(req: &HeaderMap, res: &HeaderMap, len: u64) -> RangeAnswer {
    let Some(spec) = req.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Full;
    };
    if let Some(cond) = req.get(IF_RANGE) {
        if !if_range_matches(cond.as_bytes(), res) {
            return RangeAnswer::Full;
        }
    }
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    let mut parts = set.split(',').map(str::trim).filter(|p| !p.is_empty());
    let (Some(one), None) = (parts.next(), parts.next()) else {
        return RangeAnswer::Full;
    };
    let Some((first, last)) = one.split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok().or(Some(u64::MAX))
        }
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeAnswer::Full,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial {
                start: len - n.min(len),
                end: len - 1,
            },
        },
        (a, b) => {
            let Some(start) = num(a) else {
                return RangeAnswer::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match num(b) {
                    Some(e) if e >= start => e,
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= len {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
    }
}

/// `If-Range` (RFC 9110 §13.1.5): a strong entity-tag match or an exact date match.
fn if_range_matches(cond: &[u8], res: &HeaderMap) -> bool {
    if cond.trim_ascii().first() == Some(&b'"') || cond.trim_ascii().starts_with(b"W/") {
        let Some((want, false)) = opaque_tag(cond) else {
            return false;
        };
        return matches!(res.get(ETAG).and_then(|e| opaque_tag(e.as_bytes())), Some((have, false)) if have == want);
    }
    let Ok(s) = std::str::from_utf8(cond) else {
        return false;
    };
    match (
        httpdate::parse_http_date(s.trim()).ok(),
        header_date(res, &LAST_MODIFIED),
    ) {
        (Some(d), Some(lm)) => d == lm,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let res = h(&[("etag", "W/\"v1\"")]);
        assert!(not_modified(
            &h(&[("if-none-match", "\"v1\"")]),
            StatusCode::OK,
            &res
        ));
        assert!(not_modified(
            &h(&[("if-none-match", "\"x\", W/\"v1\"")]),
            StatusCode::OK,
            &res
        ));
        assert!(not_modified(
            &h(&[("if-none-match", "*")]),
            StatusCode::OK,
            &res
        ));
        assert!(!not_modified(
            &h(&[("if-none-match", "\"v2\"")]),
            StatusCode::OK,
            &res
        ));
        assert!(!not_modified(
            &h(&[("if-none-match", "v1")]),
            StatusCode::OK,
            &res
        ));
        assert!(!not_modified(
            &h(&[("if-none-match", "\"v1\"")]),
            StatusCode::NOT_FOUND,
            &res
        ));
    }

    #[test]
    fn if_modified_since_is_ignored_when_if_none_match_is_present() {
        let res = h(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let req = h(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&req, StatusCode::OK, &res));
        let req = h(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(&req, StatusCode::OK, &res));
        let req = h(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]);
        assert!(!not_modified(&req, StatusCode::OK, &res));
        let req = h(&[("if-modified-since", "yesterday")]);
        assert!(!not_modified(&req, StatusCode::OK, &res));
    }

    #[test]
    fn range_table() {
        use RangeAnswer::*;
        let res = h(&[("etag", "\"v1\"")]);
        let cases: &[(&str, u64, RangeAnswer)] = &[
            ("bytes=0-9", 100, Partial { start: 0, end: 9 }),
            ("bytes=90-", 100, Partial { start: 90, end: 99 }),
            ("bytes=-10", 100, Partial { start: 90, end: 99 }),
            ("bytes=-1000", 100, Partial { start: 0, end: 99 }),
            ("bytes=50-5000", 100, Partial { start: 50, end: 99 }),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=0-0", 0, Unsatisfiable),
            ("bytes=9-1", 100, Full),
            ("bytes=0-1,5-6", 100, Full),
            ("items=0-1", 100, Full),
            ("bytes=a-b", 100, Full),
            ("bytes=99999999999999999999999-", 100, Unsatisfiable),
        ];
        for (spec, len, want) in cases {
            let mut req = HeaderMap::new();
            req.insert(RANGE, HeaderValue::from_str(spec).unwrap());
            assert_eq!(range(&req, &res, *len), *want, "{spec} of {len}");
        }
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let res = h(&[("etag", "\"v1\"")]);
        let req = h(&[("range", "bytes=0-1"), ("if-range", "\"v1\"")]);
        assert_eq!(
            range(&req, &res, 10),
            RangeAnswer::Partial { start: 0, end: 1 }
        );
        let req = h(&[("range", "bytes=0-1"), ("if-range", "\"v0\"")]);
        assert_eq!(range(&req, &res, 10), RangeAnswer::Full);
        let req = h(&[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")]);
        assert_eq!(range(&req, &res, 10), RangeAnswer::Full);
    }
}
