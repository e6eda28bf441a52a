//! Strategies and small models shared by the property modules.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

/// Bytes a field value may hold (`HeaderValue::from_bytes` accepts them): visible
/// ASCII, tab and obs-text. Weighted towards the separators parsers split on, so
/// that arbitrary input still exercises the interesting paths. A few bytes outside
/// that set are mixed in too: callers skip the values `from_bytes` refuses.
pub fn field_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(&b",;= \t\"\\-*/:.%"[..]),
        3 => prop::sample::select(&b"0123456789"[..]),
        3 => 0x20u8..0x7f,
        1 => 0x80u8..=0xff,
        1 => any::<u8>(),
    ]
}

pub fn field_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(field_byte(), 0..max)
}

/// Several field lines of arbitrary bytes.
pub fn field_lines(lines: usize, max: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(field_bytes(max), 0..lines)
}

/// A header map with `name` appended once per line that is a valid field value
/// (the others are skipped, as `HeaderValue::from_bytes` refuses them).
pub fn headers_with(name: &HeaderName, lines: &[Vec<u8>]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            h.append(name.clone(), v);
        }
    }
    h
}

/// A header map with one line per string (each must be a valid field value).
pub fn headers_of(name: &HeaderName, lines: &[String]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines {
        h.append(
            name.clone(),
            HeaderValue::from_str(line).expect("valid field value"),
        );
    }
    h
}

/// `s` with the ASCII letters whose bit is set in `mask` upper-cased.
pub fn recase(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Optional whitespace (spaces and tabs) around list separators.
pub fn ows() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["", "", " ", "  ", "\t", " \t "][..])
}

/// A decimal string and the value it denotes, saturated at `u128::MAX` (the
/// strings are at most 30 digits, so nothing saturates in practice).
pub fn decimal() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0u64..100_000).prop_map(|n| n.to_string()),
        2 => any::<u32>().prop_map(|n| n.to_string()),
        1 => "0{0,3}[0-9]{1,12}",
        1 => "[0-9]{11,30}",
    ]
}

/// The value of an all-digit string, saturating.
pub fn digits_value(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u128, |n, b| {
        n.saturating_mul(10).saturating_add(u128::from(b - b'0'))
    }))
}
