//! Client conditionals and ranges (src/conditional.rs).

use std::time::{Duration, UNIX_EPOCH};

use http::header::{
    HeaderMap, HeaderValue, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use http::StatusCode;
use lacquer::conditional::{not_modified, range, RangeAnswer};
use proptest::prelude::*;

use crate::support::{decimal, digits_value, field_bytes, headers_with, ows};

fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Seconds from 1970 to 2100.
fn date_secs() -> impl Strategy<Value = u64> {
    0u64..4_102_444_800
}

fn lengths() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        0u64..1200,
        any::<u64>(),
        Just(u64::MAX),
    ]
}

/// A position: small (near the lengths above), any decimal, or past `u64::MAX`.
fn position() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0u64..1200).prop_map(|n| n.to_string()),
        2 => decimal(),
        1 => "[0-9]{20,26}",
        1 => Just(u64::MAX.to_string()),
    ]
}

#[derive(Debug, Clone)]
enum Spec {
    Suffix(String),
    From(String),
    FromTo(String, String),
    /// Not a range-spec: the field is ignored.
    Junk(&'static str),
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        2 => position().prop_map(Spec::Suffix),
        2 => position().prop_map(Spec::From),
        4 => (position(), position()).prop_map(|(a, b)| Spec::FromTo(a, b)),
        1 => prop::sample::select(&["-", "a-b", "5", "--3", "1-2-3", "0x1-2", "+1-2", "1 2-3", "-1-", "1-+2"][..])
            .prop_map(Spec::Junk),
    ]
}

#[derive(Debug, Clone)]
struct RangeField {
    unit: &'static str,
    specs: Vec<Spec>,
    empty_members: bool,
    space: [&'static str; 4],
}

impl RangeField {
    fn render(&self) -> String {
        let [lead, inner, dash, trail] = self.space;
        let specs: Vec<String> = self
            .specs
            .iter()
            .map(|s| match s {
                Spec::Suffix(n) => format!("{inner}-{dash}{n}{inner}"),
                Spec::From(a) => format!("{inner}{a}{dash}-{inner}"),
                Spec::FromTo(a, b) => format!("{inner}{a}{dash}-{dash}{b}{inner}"),
                Spec::Junk(j) => format!("{inner}{j}{inner}"),
            })
            .collect();
        let sep = if self.empty_members { ", ," } else { "," };
        let mut list = specs.join(sep);
        if self.empty_members {
            list = format!(",{list},");
        }
        format!("{lead}{}={list}{trail}", self.unit)
    }
}

fn range_field() -> impl Strategy<Value = RangeField> {
    (
        prop_oneof![
            8 => Just("bytes"),
            1 => prop::sample::select(&["Bytes", "items", "bytes ", "byte"][..]),
        ],
        prop_oneof![
            8 => spec().prop_map(|s| vec![s]),
            1 => Just(Vec::new()),
            2 => prop::collection::vec(spec(), 2..4),
        ],
        any::<bool>(),
        [ows(), ows(), ows(), ows()],
    )
        .prop_map(|(unit, specs, empty_members, space)| RangeField {
            unit,
            specs,
            empty_members,
            space,
        })
}

/// A position as the answer reads it: numbers past `u64::MAX` saturate to it
/// (nothing stored is that long, so every such position is unsatisfiable).
fn sat(s: &str) -> u64 {
    digits_value(s).expect("digits").min(u128::from(u64::MAX)) as u64
}

/// RFC 9110 §14.1.2 and §14.2, for one range of a representation of `len` bytes;
/// several ranges and other units are answered in full (allowed).
fn range_model(field: &RangeField, len: u64) -> RangeAnswer {
    use RangeAnswer::*;
    if field.unit != "bytes" {
        return Full;
    }
    let [one] = &field.specs[..] else {
        return Full;
    };
    match one {
        Spec::Junk(_) => Full,
        Spec::Suffix(n) => match sat(n) {
            0 => Unsatisfiable,
            _ if len == 0 => Unsatisfiable,
            n => Partial {
                start: len - n.min(len),
                end: len - 1,
            },
        },
        Spec::From(a) => {
            let a = sat(a);
            if a >= len {
                Unsatisfiable
            } else {
                Partial {
                    start: a,
                    end: len - 1,
                }
            }
        }
        Spec::FromTo(a, b) => {
            let (a, b) = (sat(a), sat(b));
            if b < a {
                Full
            } else if a >= len {
                Unsatisfiable
            } else {
                Partial {
                    start: a,
                    end: b.min(len - 1),
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Validator {
    Etag { weak: bool, tag: &'static str },
    Date(u64),
    Junk(&'static str),
}

impl Validator {
    fn render(&self) -> String {
        match self {
            Validator::Etag { weak: true, tag } => format!("W/\"{tag}\""),
            Validator::Etag { weak: false, tag } => format!("\"{tag}\""),
            Validator::Date(s) => http_date(*s),
            Validator::Junk(j) => j.to_string(),
        }
    }
}

fn etag() -> impl Strategy<Value = Validator> {
    (any::<bool>(), prop::sample::select(&["v1", "v2", ""][..]))
        .prop_map(|(weak, tag)| Validator::Etag { weak, tag })
}

fn validator(date: u64) -> impl Strategy<Value = Validator> {
    prop_oneof![
        3 => etag(),
        2 => prop_oneof![Just(date), date_secs(), Just(date + 1)].prop_map(Validator::Date),
        1 => prop::sample::select(&["xyz", "", "\"unterminated", "W/x", "v1", "*"][..]).prop_map(Validator::Junk),
    ]
}

/// The stored response's `ETag` and `Last-Modified`.
#[derive(Debug, Clone)]
struct Stored {
    etag: Option<Validator>,
    last_modified: Option<Validator>,
}

impl Stored {
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(e) = &self.etag {
            h.insert(ETAG, HeaderValue::from_str(&e.render()).unwrap());
        }
        if let Some(d) = &self.last_modified {
            h.insert(LAST_MODIFIED, HeaderValue::from_str(&d.render()).unwrap());
        }
        h
    }

    fn strong_etag(&self) -> Option<&'static str> {
        match self.etag {
            Some(Validator::Etag { weak: false, tag }) => Some(tag),
            _ => None,
        }
    }

    fn any_etag(&self) -> Option<&'static str> {
        match self.etag {
            Some(Validator::Etag { tag, .. }) => Some(tag),
            _ => None,
        }
    }

    fn date(&self) -> Option<u64> {
        match self.last_modified {
            Some(Validator::Date(s)) => Some(s),
            _ => None,
        }
    }
}

fn stored() -> impl Strategy<Value = Stored> {
    date_secs().prop_flat_map(|d| {
        (
            prop::option::of(prop_oneof![3 => etag(), 1 => Just(Validator::Junk("v1"))]),
            prop::option::of(
                prop_oneof![3 => Just(Validator::Date(d)), 1 => Just(Validator::Junk("yesterday"))],
            ),
        )
            .prop_map(|(etag, last_modified)| Stored {
                etag,
                last_modified,
            })
    })
}

/// `If-Range` (RFC 9110 §13.1.5): a strong entity-tag match, or the exact date.
fn if_range_model(cond: &Validator, res: &Stored) -> bool {
    match cond {
        Validator::Etag { weak: false, tag } => res.strong_etag() == Some(tag),
        Validator::Etag { weak: true, .. } => false,
        Validator::Date(s) => res.date() == Some(*s),
        Validator::Junk(_) => false,
    }
}

fn is_answer_in_bounds(a: RangeAnswer, len: u64) -> bool {
    match a {
        RangeAnswer::Partial { start, end } => start <= end && end < len,
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// A single-range `Range` (any spelling the grammar allows, huge numbers,
    /// empty list members, zero-length representations) with or without
    /// `If-Range` is answered as RFC 9110 says; a partial answer always lies
    /// inside the representation.
    #[test]
    fn range_matches_its_model(
        field in range_field(),
        len in lengths(),
        (res, cond) in stored().prop_flat_map(|res| {
            let near = res.date().unwrap_or(0);
            (Just(res), prop::option::of(validator(near)))
        }),
    ) {
        let text = field.render();
        let mut req = HeaderMap::new();
        req.insert(RANGE, HeaderValue::from_str(&text).unwrap());
        if let Some(c) = &cond {
            req.insert(IF_RANGE, HeaderValue::from_str(&c.render()).unwrap());
        }
        let got = range(&req, &res.headers(), len);
        let want = match &cond {
            Some(c) if !if_range_model(c, &res) => RangeAnswer::Full,
            _ => range_model(&field, len),
        };
        prop_assert_eq!(got, want, "{:?} of {}", text, len);
        prop_assert!(is_answer_in_bounds(got, len));
    }

    /// Arbitrary bytes in `Range` and `If-Range`, any length: no panic, partial
    /// answers in bounds (`len = 0` never gets one), and only a `bytes=` field can
    /// make a 416.
    #[test]
    fn range_of_arbitrary_bytes(
        spec in field_bytes(32),
        cond in prop::option::of(field_bytes(24)),
        prefixed in any::<bool>(),
        len in lengths(),
    ) {
        let spec = if prefixed { [&b"bytes="[..], &spec].concat() } else { spec };
        let mut req = headers_with(&RANGE, &[spec]);
        if let Some(c) = cond {
            for (k, v) in headers_with(&IF_RANGE, &[c]).iter() {
                req.append(k, v.clone());
            }
        }
        let res = Stored { etag: Some(Validator::Etag { weak: false, tag: "v1" }), last_modified: None }.headers();
        let got = range(&req, &res, len);
        prop_assert!(is_answer_in_bounds(got, len), "{:?}", got);
        if len == 0 {
            let partial = matches!(got, RangeAnswer::Partial { .. });
            prop_assert!(!partial, "{:?}", got);
        }
        if got == RangeAnswer::Unsatisfiable {
            let v = req.get(RANGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            prop_assert!(v.trim().starts_with("bytes="), "{:?}", v);
        }
        if !req.contains_key(RANGE) {
            prop_assert_eq!(got, RangeAnswer::Full);
        }
    }
}

/// An `If-None-Match` member.
#[derive(Debug, Clone)]
enum Member {
    Star,
    Tag(Validator),
    Junk(&'static str),
}

fn inm_member() -> impl Strategy<Value = Member> {
    prop_oneof![
        1 => Just(Member::Star),
        6 => etag().prop_map(Member::Tag),
        2 => prop::sample::select(&["v1", "W/v1", "\"v1", "**", "W/ \"v1\""][..]).prop_map(Member::Junk),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// `If-None-Match` (weak comparison, `*`) decides when present, else
    /// `If-Modified-Since` against `Last-Modified`; only a 200 becomes a 304.
    #[test]
    fn not_modified_matches_its_model(
        inm in prop::option::of(prop::collection::vec(prop::collection::vec((inm_member(), ows()), 0..4), 1..3)),
        (res, ims) in stored().prop_flat_map(|res| {
            let lm = res.date().unwrap_or(0);
            let since = prop_oneof![
                2 => date_secs(),
                1 => Just(lm),
                1 => Just(lm.saturating_sub(1)),
                1 => Just(lm + 1),
            ];
            (
                Just(res),
                prop::option::of(prop_oneof![
                    3 => since.prop_map(Validator::Date),
                    1 => Just(Validator::Junk("yesterday")),
                ]),
            )
        }),
        status in prop_oneof![4 => Just(200u16), 1 => prop::sample::select(&[203u16, 206, 304, 404, 500][..])],
    ) {
        let mut req = HeaderMap::new();
        if let Some(lines) = &inm {
            for line in lines {
                let text = line
                    .iter()
                    .map(|(m, s)| {
                        let m = match m {
                            Member::Star => "*".to_string(),
                            Member::Tag(t) => t.render(),
                            Member::Junk(j) => j.to_string(),
                        };
                        format!("{s}{m}{s}")
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                req.append(IF_NONE_MATCH, HeaderValue::from_str(&text).unwrap());
            }
        }
        if let Some(d) = &ims {
            req.insert(IF_MODIFIED_SINCE, HeaderValue::from_str(&d.render()).unwrap());
        }
        let status = StatusCode::from_u16(status).unwrap();
        let want = if status != StatusCode::OK {
            false
        } else if let Some(lines) = &inm {
            lines.iter().flatten().any(|(m, _)| match m {
                Member::Star => true,
                Member::Tag(Validator::Etag { tag, .. }) => res.any_etag() == Some(tag),
                _ => false,
            })
        } else {
            match (&ims, res.date()) {
                (Some(Validator::Date(since)), Some(lm)) => lm <= *since,
                _ => false,
            }
        };
        prop_assert_eq!(not_modified(&req, status, &res.headers()), want, "{:?}", req);
    }

    /// Arbitrary bytes in every field: no panic; never a 304 for another status;
    /// a `*` line always gives one for a 200.
    #[test]
    fn not_modified_of_arbitrary_bytes(
        inm in crate::support::field_lines(3, 24),
        ims in field_bytes(32),
        etag in field_bytes(16),
        lm in field_bytes(32),
    ) {
        let mut req = headers_with(&IF_NONE_MATCH, &inm);
        for (k, v) in headers_with(&IF_MODIFIED_SINCE, &[ims]).iter() {
            req.append(k, v.clone());
        }
        let mut res = headers_with(&ETAG, &[etag]);
        for (k, v) in headers_with(&LAST_MODIFIED, &[lm]).iter() {
            res.append(k, v.clone());
        }
        prop_assert!(!not_modified(&req, StatusCode::PARTIAL_CONTENT, &res));
        prop_assert!(!not_modified(&req, StatusCode::NOT_FOUND, &res));
        req.append(IF_NONE_MATCH, HeaderValue::from_static(" * "));
        prop_assert!(not_modified(&req, StatusCode::OK, &res));
    }
}
