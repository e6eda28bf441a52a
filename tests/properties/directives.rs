//! `Cache-Control` and the targeted fields (src/directives.rs).

use http::header::{HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL};
use lacquer::directives::{parse_delta, Directives, MaxStale, StoredDirectives, DELTA_MAX};
use proptest::prelude::*;

use crate::support::{decimal, digits_value, field_lines, headers_with, ows, recase};

/// The directives Lacquer knows, and a few names that only look like them.
const NAMES: &[&str] = &[
    "max-age",
    "s-maxage",
    "no-cache",
    "no-store",
    "private",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "must-understand",
    "immutable",
    "no-transform",
    "only-if-cached",
    "stale-while-revalidate",
    "stale-if-error",
    "min-fresh",
    "max-stale",
    // Unknown extensions: ignored (§5.2.3), and no prefix or suffix match.
    "x-ext",
    "maxage",
    "max-age-x",
    "no-cache2",
];

/// `delta-seconds` as RFC 9111 §1.2.2 reads it: digits only, clamped to 2^31.
fn model_delta(s: &str) -> Option<u32> {
    digits_value(s).map(|v| v.min(u128::from(DELTA_MAX)) as u32)
}

/// The documented rules of `Directives::parse`, stated independently of the order
/// of the directives: `occurrences` are (lower-case name, argument).
fn model(occurrences: &[(String, Option<String>)]) -> Directives {
    let args = |name: &str| -> Vec<Option<u32>> {
        occurrences
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, a)| a.as_deref().and_then(model_delta))
            .collect()
    };
    let present = |name: &str| occurrences.iter().any(|(n, _)| n == name);
    // max-age / s-maxage: one valid value (however often repeated), else stale (0).
    let strict = |name: &str| {
        let v = args(name);
        match v.first() {
            None => None,
            Some(first) if first.is_some() && v.iter().all(|x| x == first) => *first,
            Some(_) => Some(0),
        }
    };
    // Directives that extend reuse: malformed ignored, the smallest value wins.
    let lenient = |name: &str| args(name).into_iter().flatten().min();
    let max_stale = if occurrences
        .iter()
        .any(|(n, a)| n == "max-stale" && a.is_none())
    {
        Some(MaxStale::Any)
    } else {
        args("max-stale")
            .into_iter()
            .flatten()
            .max()
            .map(MaxStale::Seconds)
    };
    Directives {
        max_age: strict("max-age"),
        s_maxage: strict("s-maxage"),
        no_cache: present("no-cache"),
        no_store: present("no-store"),
        private: present("private"),
        public: present("public"),
        must_revalidate: present("must-revalidate"),
        proxy_revalidate: present("proxy-revalidate"),
        must_understand: present("must-understand"),
        immutable: present("immutable"),
        no_transform: present("no-transform"),
        stale_while_revalidate: lenient("stale-while-revalidate"),
        stale_if_error: lenient("stale-if-error"),
        max_stale,
        min_fresh: lenient("min-fresh"),
        only_if_cached: present("only-if-cached"),
    }
}

/// How a directive is written.
#[derive(Debug, Clone)]
enum Form {
    Bare,
    /// `name=value` (the value never holds a comma or starts with a quote).
    Token(String),
    /// `name="value"` (no quote or backslash inside; commas are allowed).
    Quoted(String),
}

#[derive(Debug, Clone)]
struct Written {
    name: &'static str,
    case: u64,
    form: Form,
    space: [&'static str; 3],
}

impl Written {
    fn render(&self) -> String {
        let [before_eq, after_eq, after] = self.space;
        let name = recase(self.name, self.case);
        match &self.form {
            Form::Bare => format!("{name}{after}"),
            Form::Token(v) => format!("{name}{before_eq}={after_eq}{v}{after}"),
            Form::Quoted(v) => format!("{name}{before_eq}={after_eq}\"{v}\"{after}"),
        }
    }

    fn occurrence(&self) -> (String, Option<String>) {
        let arg = match &self.form {
            Form::Bare => None,
            Form::Token(v) => Some(v.trim().to_string()),
            Form::Quoted(v) => Some(v.clone()),
        };
        (self.name.to_string(), arg)
    }
}

fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => decimal(),
        1 => Just(String::new()),
        1 => "-[0-9]{1,3}",
        1 => "[a-z0-9.]{1,4}",
        1 => "[0-9] [0-9]",
        1 => "[0-9]{1,3}e[0-9]",
    ]
}

fn written() -> impl Strategy<Value = Written> {
    let form = prop_oneof![
        2 => Just(Form::Bare),
        3 => value_text().prop_map(Form::Token),
        1 => prop_oneof![value_text(), "[a-z0-9 ,=;-]{0,8}"].prop_map(Form::Quoted),
    ];
    (
        prop::sample::select(NAMES),
        any::<u64>(),
        form,
        [ows(), ows(), ows()],
    )
        .prop_map(|(name, case, form, space)| Written {
            name,
            case,
            form,
            space,
        })
}

/// A `Cache-Control` list of known directives, and where it is cut into field lines.
fn directive_list() -> impl Strategy<Value = (Vec<Written>, Vec<bool>, Vec<&'static str>)> {
    prop::collection::vec(written(), 0..8).prop_flat_map(|list| {
        let n = list.len();
        (
            Just(list),
            prop::collection::vec(any::<bool>(), n),
            prop::collection::vec(
                prop::sample::select(&[",", ", ", " ,", ",,", " , ,"][..]),
                n,
            ),
        )
    })
}

/// The list as field lines: directives joined by separators, a new line where `cut`.
fn render_lines(list: &[Written], cut: &[bool], seps: &[&str]) -> Vec<String> {
    let mut lines = vec![String::new()];
    for (i, w) in list.iter().enumerate() {
        let line = lines.last_mut().expect("one line");
        if !line.is_empty() {
            line.push_str(seps[i]);
        }
        line.push_str(&w.render());
        if cut[i] {
            lines.push(String::new());
        }
    }
    lines
}

/// A structured-field value for a targeted field (RFC 9213 §2.1).
#[derive(Debug, Clone)]
enum Sf {
    True,
    False,
    Int(i64),
    Str(String),
    Token(String),
    Decimal,
    InnerList,
}

#[derive(Debug, Clone)]
struct Member {
    key: &'static str,
    value: Sf,
    bare_true: bool,
    params: &'static str,
}

impl Member {
    fn render(&self) -> String {
        let value = match &self.value {
            Sf::True if self.bare_true => String::new(),
            Sf::True => "=?1".into(),
            Sf::False => "=?0".into(),
            Sf::Int(n) => format!("={n}"),
            Sf::Str(s) => format!("=\"{s}\""),
            Sf::Token(t) => format!("={t}"),
            Sf::Decimal => "=1.5".into(),
            Sf::InnerList => "=(1 \"a\")".into(),
        };
        format!("{}{value}{}", self.key, self.params)
    }

    /// What the member means as a directive: RFC 9213 §2.1 ignores a directive
    /// with an invalid value; qualified `private`/`no-cache` count as unqualified.
    fn occurrence(&self) -> Option<(String, Option<String>)> {
        let name = self.key.to_string();
        match &self.value {
            Sf::True => Some((name, None)),
            Sf::False => None,
            Sf::Int(n) if *n >= 0 => Some((name, Some(n.to_string()))),
            Sf::Int(_) => None,
            _ if matches!(self.key, "private" | "no-cache") => Some((name, None)),
            _ => None,
        }
    }
}

fn member() -> impl Strategy<Value = Member> {
    const MAX_SF_INT: i64 = 999_999_999_999_999;
    let value = prop_oneof![
        3 => Just(Sf::True),
        1 => Just(Sf::False),
        4 => prop_oneof![0i64..100_000, -MAX_SF_INT..=MAX_SF_INT, -100i64..0].prop_map(Sf::Int),
        1 => "[a-z ,]{0,6}".prop_map(Sf::Str),
        1 => "[a-z][a-z0-9]{0,4}".prop_map(Sf::Token),
        1 => Just(Sf::Decimal),
        1 => Just(Sf::InnerList),
    ];
    (
        prop::sample::select(NAMES),
        value,
        any::<bool>(),
        prop::sample::select(&["", "", ";a=1", ";q", ";x=\"y\""][..]),
    )
        .prop_map(|(key, value, bare_true, params)| Member {
            key,
            value,
            bare_true,
            params,
        })
}

fn cdn_cache_control() -> HeaderName {
    HeaderName::from_static("cdn-cache-control")
}

/// A `Directives` with arbitrary values, request-only directives included.
fn any_directives() -> impl Strategy<Value = Directives> {
    let max_stale = prop::option::of(prop_oneof![
        Just(MaxStale::Any),
        any::<u32>().prop_map(MaxStale::Seconds)
    ]);
    (
        [
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
        ],
        prop::array::uniform10(any::<bool>()),
        max_stale,
    )
        .prop_map(|([ma, sma, swr, sie, mf], f, max_stale)| Directives {
            max_age: ma,
            s_maxage: sma,
            no_cache: f[0],
            no_store: f[1],
            private: f[2],
            public: f[3],
            must_revalidate: f[4],
            proxy_revalidate: f[5],
            must_understand: f[6],
            immutable: f[7],
            no_transform: f[8],
            stale_while_revalidate: swr,
            stale_if_error: sie,
            max_stale,
            min_fresh: mf,
            only_if_cached: f[9],
        })
}

/// What a stored copy keeps of `d`: response directives, values clamped to 2^31.
fn stored_view(d: &Directives) -> Directives {
    let clamp = |v: Option<u32>| v.map(|n| n.min(DELTA_MAX));
    Directives {
        max_age: clamp(d.max_age),
        s_maxage: clamp(d.s_maxage),
        stale_while_revalidate: clamp(d.stale_while_revalidate),
        stale_if_error: clamp(d.stale_if_error),
        max_stale: None,
        min_fresh: None,
        only_if_cached: false,
        ..d.clone()
    }
}

fn values_in_range(d: &Directives) -> bool {
    let max_stale = match d.max_stale {
        Some(MaxStale::Seconds(n)) => Some(n),
        _ => None,
    };
    [
        d.max_age,
        d.s_maxage,
        d.stale_while_revalidate,
        d.stale_if_error,
        d.min_fresh,
        max_stale,
    ]
    .iter()
    .flatten()
    .all(|&n| n <= DELTA_MAX)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Arbitrary field lines never panic; every value is at most 2^31; a single
    /// UTF-8 line reads as `parse` reads it; the stored form keeps all of it.
    #[test]
    fn cache_control_of_arbitrary_bytes(lines in field_lines(4, 48)) {
        let h = headers_with(&CACHE_CONTROL, &lines);
        let d = Directives::from_cache_control(&h);
        prop_assert!(values_in_range(&d), "{d:?}");
        let all: Vec<&HeaderValue> = h.get_all(CACHE_CONTROL).iter().collect();
        if let [only] = all[..] {
            if let Ok(text) = std::str::from_utf8(only.as_bytes()) {
                prop_assert_eq!(&Directives::parse(text), &d);
            }
        }
        prop_assert_eq!(StoredDirectives::from(&d).get(), stored_view(&d));
    }

    /// `parse` of any string: no panic, values in range.
    #[test]
    fn parse_of_arbitrary_strings(s in "\\PC{0,40}|[a-z=\",\\\\ -]{0,40}") {
        let d = Directives::parse(&s);
        prop_assert!(values_in_range(&d), "{d:?}");
    }

    /// A list of known directives (any case, whitespace, empty list members,
    /// tokens or quoted strings, split over field lines) yields exactly what the
    /// documented rules say.
    #[test]
    fn known_directives_parse_to_their_model((list, cut, seps) in directive_list()) {
        let occurrences: Vec<_> = list.iter().map(Written::occurrence).collect();
        let want = model(&occurrences);
        let lines = render_lines(&list, &cut, &seps);
        let joined = lines.join(", ");
        prop_assert_eq!(&Directives::parse(&joined), &want, "{:?}", joined);
        let h = crate::support::headers_of(&CACHE_CONTROL, &lines);
        prop_assert_eq!(&Directives::from_cache_control(&h), &want, "{:?}", lines);
    }

    /// Digits always parse, to their value clamped at 2^31; anything else is `None`.
    #[test]
    fn parse_delta_saturates(digits in "[0-9]{1,40}", other in "\\PC{0,12}") {
        let want = digits_value(&digits).map(|v| v.min(u128::from(DELTA_MAX)) as u32);
        prop_assert!(want.is_some());
        prop_assert_eq!(parse_delta(&digits), want);
        if digits.len() <= 9 {
            prop_assert_eq!(parse_delta(&digits), Some(digits.parse::<u32>().unwrap()));
        }
        prop_assert_eq!(parse_delta(&other), model_delta(&other), "{:?}", other);
    }

    /// The packed stored form gives back every response directive, clamped to
    /// 2^31 (what parsing gives anyway), and drops the request-only ones.
    #[test]
    fn stored_directives_round_trip(d in any_directives()) {
        let stored = StoredDirectives::from(&d);
        prop_assert_eq!(stored.get(), stored_view(&d));
        prop_assert_eq!(StoredDirectives::from(stored.get()), stored);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes in `CDN-Cache-Control` never panic; a line that is not
    /// visible ASCII makes the whole field invalid (ignored: `None`).
    #[test]
    fn targeted_field_of_arbitrary_bytes(lines in field_lines(3, 40)) {
        let name = cdn_cache_control();
        let h = headers_with(&name, &lines);
        let d = Directives::from_targeted(&h, &name);
        let values: Vec<&HeaderValue> = h.get_all(&name).iter().collect();
        if values.is_empty() || values.iter().any(|v| v.to_str().is_err()) {
            prop_assert_eq!(d, None);
        } else if let Some(d) = d {
            prop_assert!(values_in_range(&d), "{d:?}");
        }
    }

    /// A structured-field dictionary of directives (RFC 9213): the last of
    /// duplicated keys counts, integers are delta-seconds (negative: ignored),
    /// booleans are flags, other values only qualify `private`/`no-cache`. The same
    /// over several field lines. A key with a capital is invalid: the field is ignored.
    #[test]
    fn targeted_dictionary_parses_to_its_model(
        members in prop::collection::vec(member(), 0..7),
        cut in prop::collection::vec(any::<bool>(), 7),
        spaces in prop::collection::vec(prop::sample::select(&[",", ", ", " ,\t", ",  "][..]), 7),
        capital in any::<prop::sample::Index>(),
    ) {
        let name = cdn_cache_control();
        // Duplicate keys: all but the last are ignored (RFC 8941 §4.2.2).
        let mut last: Vec<&Member> = Vec::new();
        for m in &members {
            last.retain(|x| x.key != m.key);
            last.push(m);
        }
        let occurrences: Vec<_> = last.iter().filter_map(|m| m.occurrence()).collect();
        let want = model(&occurrences);
        let mut lines = vec![String::new()];
        for (i, m) in members.iter().enumerate() {
            let line = lines.last_mut().expect("one line");
            if !line.is_empty() {
                line.push_str(spaces[i]);
            }
            line.push_str(&m.render());
            if cut[i] && i + 1 < members.len() {
                lines.push(String::new());
            }
        }
        let h = crate::support::headers_of(&name, &lines);
        prop_assert_eq!(Directives::from_targeted(&h, &name), Some(want), "{:?}", lines);

        if !members.is_empty() {
            let i = capital.index(members.len());
            let key = members[i].key;
            let upper = format!("{}{}", key[..1].to_ascii_uppercase(), &key[1..]);
            let line = members
                .iter()
                .enumerate()
                .map(|(j, m)| if j == i { m.render().replacen(key, &upper, 1) } else { m.render() })
                .collect::<Vec<_>>()
                .join(", ");
            let mut h = HeaderMap::new();
            h.insert(&name, HeaderValue::from_str(&line).unwrap());
            prop_assert_eq!(Directives::from_targeted(&h, &name), None, "{:?}", line);
        }
    }
}
