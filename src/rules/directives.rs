//! Cache directives: `Cache-Control` (RFC 9111 §5.2) and the targeted fields
//! of RFC 9213 (`CDN-Cache-Control` and friends), parsed into one plain value.
//!
//! Pure functions only: no I/O, no clock. Malformed input never panics; every
//! oddity has a defined, documented result (see the decisions below).
//!
//! Decisions (RFC 9111 §4.2.1, §1.2.2, §5.2):
//! - Directive names are case-insensitive; values may be tokens or quoted strings.
//! - A `delta-seconds` larger than we can represent is clamped to 2^31 (§1.2.2).
//! - A duplicated `max-age`/`s-maxage` with *different* values, or one whose value
//!   is not a non-negative integer, makes the response stale (value 0): §4.2.1 lets
//!   a cache "consider the response to be stale" and that is the most restrictive.
//! - A malformed `stale-while-revalidate`, `stale-if-error`, `min-fresh` or
//!   `max-stale` value is ignored (those directives only ever *extend* reuse or ask for
//!   more freshness, so ignoring them is the conservative reading).
//! - Qualified `private="…"` and `no-cache="…"` are treated as unqualified
//!   (§5.2.2.4 and §5.2.2.7 allow it; a shared cache is safest that way).
//! - Unknown extensions are ignored (§5.2.3): they never cause a bypass.

use http::header::{HeaderMap, HeaderName, CACHE_CONTROL};

/// The largest delta-seconds value a cache must be able to represent (§1.2.2).
pub const DELTA_MAX: u32 = 2_147_483_648;

/// `max-stale` may come with or without a value (§5.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    Any,
    Seconds(u32),
}

/// Every directive Lacquer acts on, from a request or a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub max_age: Option<u32>,
    pub s_maxage: Option<u32>,
    pub no_cache: bool,
    pub no_store: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub immutable: bool,
    pub no_transform: bool,
    pub stale_while_revalidate: Option<u32>,
    pub stale_if_error: Option<u32>,
    // Request-only directives (§5.2.1).
    pub max_stale: Option<MaxStale>,
    pub min_fresh: Option<u32>,
    pub only_if_cached: bool,
}

impl Directives {
    /// Parses every `Cache-Control` field line of `headers`.
    pub fn from_cache_control(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            // Non-ASCII bytes cannot be part of a valid directive; parse what is readable.
            let text = String::from_utf8_lossy(value.as_bytes());
            for (name, arg) in split_directives(&text) {
                d.apply(&name, arg.as_deref());
            }
        }
        d
    }

    /// Parses one `Cache-Control` value (test and bench convenience).
    pub fn parse(value: &str) -> Directives {
        let mut d = Directives::default();
        for (name, arg) in split_directives(value) {
            d.apply(&name, arg.as_deref());
        }
        d
    }

    /// Parses a targeted field (RFC 9213 §2.1): a structured-field dictionary.
    /// Returns `None` when the field is absent or invalid, in which case the cache
    /// must ignore it entirely and fall back to the next field.
    pub fn from_targeted(headers: &HeaderMap, field: &HeaderName) -> Option<Directives> {
        let mut lines = headers.get_all(field).iter().peekable();
        lines.peek()?;
        let mut joined = String::new();
        for (i, v) in lines.enumerate() {
            let s = v.to_str().ok()?;
            if i > 0 {
                joined.push_str(", ");
            }
            joined.push_str(s);
        }
        let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
        let mut d = Directives::default();
        for (key, entry) in &dict {
            let name = key.as_str();
            match entry {
                sfv::ListEntry::Item(item) => match &item.bare_item {
                    sfv::BareItem::Integer(i) => {
                        let n: i64 = (*i).into();
                        if n >= 0 {
                            d.apply(name, Some(&n.to_string()));
                        }
                        // RFC 9213 §2.1: a directive with an invalid value is ignored.
                    }
                    sfv::BareItem::Boolean(true) => d.apply(name, None),
                    sfv::BareItem::Boolean(false) => {}
                    // `private="x"`/`no-cache="x"`: qualified forms, taken as unqualified.
                    _ => d.apply_flag_only(name),
                },
                sfv::ListEntry::InnerList(_) => d.apply_flag_only(name),
            }
        }
        Some(d)
    }

    fn apply_flag_only(&mut self, name: &str) {
        if matches!(name, "private" | "no-cache") {
            self.apply(name, None);
        }
    }

    fn apply(&mut self, name: &str, arg: Option<&str>) {
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        match name {
            "max-age" => self.max_age = Some(merge_strict(self.max_age, arg)),
            "s-maxage" => self.s_maxage = Some(merge_strict(self.s_maxage, arg)),
            "no-cache" => self.no_cache = true,
            "no-store" => self.no_store = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "immutable" => self.immutable = true,
            "no-transform" => self.no_transform = true,
            "only-if-cached" => self.only_if_cached = true,
            "stale-while-revalidate" => {
                merge_lenient(&mut self.stale_while_revalidate, arg);
            }
            "stale-if-error" => merge_lenient(&mut self.stale_if_error, arg),
            "min-fresh" => merge_lenient(&mut self.min_fresh, arg),
            "max-stale" => match arg {
                None => self.max_stale = Some(MaxStale::Any),
                Some(a) => {
                    if let Some(n) = parse_delta(a) {
                        self.max_stale = match self.max_stale {
                            Some(MaxStale::Any) => Some(MaxStale::Any),
                            Some(MaxStale::Seconds(old)) => Some(MaxStale::Seconds(old.max(n))),
                            None => Some(MaxStale::Seconds(n)),
                        };
                    }
                }
            },
            _ => {} // §5.2.3: unknown extensions are ignored.
        }
    }
}

/// The response directives of a stored response, packed: 20 bytes where
/// [`Directives`] takes 60. An absent value is `u32::MAX` (parsed values are at most
/// [`DELTA_MAX`]); the request-only directives are not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredDirectives {
    max_age: u32,
    s_maxage: u32,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    flags: u16,
}

const ABSENT: u32 = u32::MAX;

impl From<&Directives> for StoredDirectives {
    fn from(d: &Directives) -> StoredDirectives {
        let pack = |v: Option<u32>| v.map_or(ABSENT, |n| n.min(DELTA_MAX));
        let flags = [
            d.no_cache,
            d.no_store,
            d.private,
            d.public,
            d.must_revalidate,
            d.proxy_revalidate,
            d.must_understand,
            d.immutable,
            d.no_transform,
        ]
        .iter()
        .enumerate()
        .fold(0u16, |acc, (i, &set)| acc | (u16::from(set) << i));
        StoredDirectives {
            max_age: pack(d.max_age),
            s_maxage: pack(d.s_maxage),
            stale_while_revalidate: pack(d.stale_while_revalidate),
            stale_if_error: pack(d.stale_if_error),
            flags,
        }
    }
}

impl From<Directives> for StoredDirectives {
    fn from(d: Directives) -> StoredDirectives {
        StoredDirectives::from(&d)
    }
}

impl Default for StoredDirectives {
    fn default() -> StoredDirectives {
        StoredDirectives::from(&Directives::default())
    }
}

impl StoredDirectives {
    /// The directives as parsed (request-only ones absent).
    pub fn get(&self) -> Directives {
        let value = |v: u32| (v != ABSENT).then_some(v);
        let flag = |i: u32| self.flags & (1 << i) != 0;
        Directives {
            max_age: value(self.max_age),
            s_maxage: value(self.s_maxage),
            no_cache: flag(0),
            no_store: flag(1),
            private: flag(2),
            public: flag(3),
            must_revalidate: flag(4),
            proxy_revalidate: flag(5),
            must_understand: flag(6),
            immutable: flag(7),
            no_transform: flag(8),
            stale_while_revalidate: value(self.stale_while_revalidate),
            stale_if_error: value(self.stale_if_error),
            ..Directives::default()
        }
    }
}

/// For `max-age`/`s-maxage`: malformed or conflicting duplicates mean "stale" (0).
fn merge_strict(old: Option<u32>, arg: Option<&str>) -> u32 {
    match (old, arg.and_then(parse_delta)) {
        (_, None) => 0,
        (None, Some(n)) => n,
        (Some(o), Some(n)) if o == n => n,
        (Some(_), Some(_)) => 0,
    }
}

/// For directives that extend reuse: malformed values are ignored, duplicates take
/// the smallest (most restrictive) value.
fn merge_lenient(slot: &mut Option<u32>, arg: Option<&str>) {
    if let Some(n) = arg.and_then(parse_delta) {
        *slot = Some(slot.map_or(n, |o| o.min(n)));
    }
}

/// `delta-seconds = 1*DIGIT` (§1.2.2), clamped to [`DELTA_MAX`] on overflow.
pub fn parse_delta(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        n = n * 10 + u64::from(b - b'0');
        if n > u64::from(DELTA_MAX) {
            return Some(DELTA_MAX);
        }
    }
    Some(n as u32)
}

/// Splits a `Cache-Control` value into `(name, Option<argument>)` pairs:
/// `#( token [ "=" ( token / quoted-string ) ] )`, tolerant of stray whitespace
/// and empty list elements. Commas inside quoted strings do not split.
fn split_directives(value: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Skip separators and whitespace.
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b',' {
            i += 1;
        }
        let name = value[start..i].trim().to_string();
        let mut arg = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut s = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    // Push whole UTF-8 characters.
                    let ch_len = utf8_len(bytes[i]);
                    let end = (i + ch_len).min(bytes.len());
                    s.push_str(value.get(i..end).unwrap_or(""));
                    i = end;
                }
                i += 1; // closing quote (or past the end)
                arg = Some(s);
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1; // junk after a quoted string is ignored
                }
            } else {
                let vstart = i;
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
                arg = Some(value[vstart..i].trim().to_string());
            }
        }
        if !name.is_empty() {
            out.push((name, arg));
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // tables of cases
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn table_of_cache_control_values() {
        // (input, expected max_age, s_maxage, no_cache, no_store, private, public)
        let cases: &[(&str, Option<u32>, Option<u32>, bool, bool, bool, bool)] = &[
            ("max-age=60", Some(60), None, false, false, false, false),
            ("MAX-AGE=60", Some(60), None, false, false, false, false),
            ("max-age=\"60\"", Some(60), None, false, false, false, false),
            ("max-age = 60", Some(60), None, false, false, false, false),
            (
                "max-age=60, s-maxage=120",
                Some(60),
                Some(120),
                false,
                false,
                false,
                false,
            ),
            ("max-age=abc", Some(0), None, false, false, false, false),
            ("max-age=-1", Some(0), None, false, false, false, false),
            ("max-age=", Some(0), None, false, false, false, false),
            ("max-age", Some(0), None, false, false, false, false),
            (
                "max-age=60, max-age=60",
                Some(60),
                None,
                false,
                false,
                false,
                false,
            ),
            (
                "max-age=60, max-age=30",
                Some(0),
                None,
                false,
                false,
                false,
                false,
            ),
            (
                "max-age=99999999999999",
                Some(DELTA_MAX),
                None,
                false,
                false,
                false,
                false,
            ),
            ("no-cache", None, None, true, false, false, false),
            (
                "no-cache=\"set-cookie, x\"",
                None,
                None,
                true,
                false,
                false,
                false,
            ),
            (
                "private=\"x\", max-age=5",
                Some(5),
                None,
                false,
                false,
                true,
                false,
            ),
            ("public, no-store", None, None, false, true, false, true),
            (",,, ,public,,", None, None, false, false, false, true),
            ("foo=\"a,b\", public", None, None, false, false, false, true),
            (
                "x-unknown-ext=1, max-age=3",
                Some(3),
                None,
                false,
                false,
                false,
                false,
            ),
            ("", None, None, false, false, false, false),
            ("\"unterminated", None, None, false, false, false, false),
            (
                "max-age=\"unterminated",
                Some(0),
                None,
                false,
                false,
                false,
                false,
            ),
        ];
        for (input, ma, sma, nc, ns, pr, pu) in cases {
            let d = Directives::parse(input);
            assert_eq!(d.max_age, *ma, "max_age of {input:?}");
            assert_eq!(d.s_maxage, *sma, "s_maxage of {input:?}");
            assert_eq!(d.no_cache, *nc, "no_cache of {input:?}");
            assert_eq!(d.no_store, *ns, "no_store of {input:?}");
            assert_eq!(d.private, *pr, "private of {input:?}");
            assert_eq!(d.public, *pu, "public of {input:?}");
        }
    }

    #[test]
    fn request_directives() {
        let d = Directives::parse("max-stale, min-fresh=10, only-if-cached");
        assert_eq!(d.max_stale, Some(MaxStale::Any));
        assert_eq!(d.min_fresh, Some(10));
        assert!(d.only_if_cached);
        let d = Directives::parse("max-stale=30, max-stale=nope");
        assert_eq!(d.max_stale, Some(MaxStale::Seconds(30)));
        let d = Directives::parse("stale-while-revalidate=30, stale-if-error=x");
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, None);
    }

    #[test]
    fn multiple_field_lines_are_combined() {
        let mut h = HeaderMap::new();
        h.append(CACHE_CONTROL, HeaderValue::from_static("public"));
        h.append(CACHE_CONTROL, HeaderValue::from_static("max-age=10"));
        let d = Directives::from_cache_control(&h);
        assert!(d.public);
        assert_eq!(d.max_age, Some(10));
    }

    #[test]
    fn non_utf8_bytes_do_not_panic() {
        let mut h = HeaderMap::new();
        h.append(
            CACHE_CONTROL,
            HeaderValue::from_bytes(b"max-age=\xff\xfe, public").unwrap(),
        );
        h.append(CACHE_CONTROL, HeaderValue::from_bytes(b"\"\xc3").unwrap());
        let d = Directives::from_cache_control(&h);
        assert!(d.public);
        assert_eq!(d.max_age, Some(0));
    }

    #[test]
    fn targeted_field_is_a_structured_dictionary() {
        let name = HeaderName::from_static("cdn-cache-control");
        let mut h = HeaderMap::new();
        h.insert(
            &name,
            HeaderValue::from_static("max-age=600, stale-if-error=30"),
        );
        let d = Directives::from_targeted(&h, &name).unwrap();
        assert_eq!(d.max_age, Some(600));
        assert_eq!(d.stale_if_error, Some(30));

        h.insert(&name, HeaderValue::from_static("no-store, private=\"x\""));
        let d = Directives::from_targeted(&h, &name).unwrap();
        assert!(d.no_store && d.private);

        // Invalid structured field (RFC 9213 §2.1): ignored as a whole.
        h.insert(&name, HeaderValue::from_static("max-age=\"60\"=, ;;"));
        assert!(Directives::from_targeted(&h, &name).is_none());
        // Negative integer: that directive is ignored, the field is not.
        h.insert(&name, HeaderValue::from_static("max-age=-5, public"));
        let d = Directives::from_targeted(&h, &name).unwrap();
        assert_eq!(d.max_age, None);
        assert!(d.public);
        // Absent field.
        assert!(Directives::from_targeted(&HeaderMap::new(), &name).is_none());
    }

    #[test]
    fn parse_delta_rules() {
        assert_eq!(parse_delta("0"), Some(0));
        assert_eq!(parse_delta("007"), Some(7));
        assert_eq!(parse_delta("2147483649"), Some(DELTA_MAX));
        assert_eq!(parse_delta("1e3"), None);
        assert_eq!(parse_delta(" 1"), None);
        assert_eq!(parse_delta(""), None);
    }

    #[test]
    fn stored_directives_keep_every_response_directive() {
        for text in [
            "",
            "max-age=60, s-maxage=0, public",
            "no-cache, no-store, private, must-revalidate, proxy-revalidate",
            "must-understand, immutable, no-transform, stale-while-revalidate=30",
            "stale-if-error=86400, max-age=99999999999",
        ] {
            let d = Directives::parse(text);
            assert_eq!(StoredDirectives::from(&d).get(), d, "{text:?}");
        }
        assert_eq!(std::mem::size_of::<StoredDirectives>(), 20);
    }
}
