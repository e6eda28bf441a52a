//! The configuration file (src/config.rs): `ConfigFile::parse`/`load`, then
//! `Settings::from_file`.

use lacquer::config::{ConfigError, ConfigFile, Settings};
use proptest::prelude::*;

/// Where a key lives, and so its dotted path in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sec {
    Table(&'static str),
    Origin,
    Health,
    Route,
}

impl Sec {
    fn path(self, key: &str) -> String {
        match self {
            Sec::Table(t) => format!("{t}.{key}"),
            Sec::Origin => format!("origins[0].{key}"),
            Sec::Health => format!("origins[0].health_check.{key}"),
            Sec::Route => format!("routes[0].{key}"),
        }
    }
}

/// The TOML type of a key, for values of the wrong one.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Duration,
    Bytes,
    Bool,
    Int,
    Float,
    StrList,
    Enum,
    Addr,
    Normalizers,
}

impl Kind {
    fn wrong(self) -> &'static [&'static str] {
        match self {
            Kind::Str => &["5", "true", "[1]", "{ a = 1 }", "1.5"],
            Kind::Duration => &["5", "true", "[\"1s\"]", "\"forever\"", "1979-05-27"],
            Kind::Bytes => &["true", "[1]", "\"lots\"", "{}"],
            Kind::Bool => &["\"yes\"", "1", "[]"],
            Kind::Int => &["\"x\"", "true", "1.5", "-1", "[]"],
            Kind::Float => &["\"x\"", "true", "[]"],
            Kind::StrList => &["\"x\"", "5", "[1]", "[true]", "[[\"a\"]]", "{}"],
            Kind::Enum => &["5", "true", "\"nonsense\"", "[]"],
            Kind::Addr => &["5", "true", "\"nope\"", "\"127.0.0.1\""],
            Kind::Normalizers => &[
                "5",
                "\"x\"",
                "[1]",
                "[{ header = \"accept\" }]",
                "[{ header = \"accept\", kind = \"magic\" }]",
                "[{ header = \"accept\", kind = \"encoding\", extra = 1 }]",
            ],
        }
    }
}

struct Entry {
    sec: Sec,
    key: &'static str,
    value: &'static str,
    kind: Kind,
}

const fn e(sec: Sec, key: &'static str, value: &'static str, kind: Kind) -> Entry {
    Entry {
        sec,
        key,
        value,
        kind,
    }
}

const SERVER: Sec = Sec::Table("server");
const CACHE: Sec = Sec::Table("cache");
const KEY: Sec = Sec::Table("key");
const VARY: Sec = Sec::Table("vary");
const TAGS: Sec = Sec::Table("tags");
const ADMIN: Sec = Sec::Table("admin");
const LOG: Sec = Sec::Table("log");

/// A valid configuration, one key per entry: any subset of it is valid too (the
/// origin's `url` and the route's `path_prefix` are always written).
const ENTRIES: &[Entry] = &[
    e(SERVER, "listen", "\"127.0.0.1:18080\"", Kind::Addr),
    e(SERVER, "header_read_timeout", "\"5s\"", Kind::Duration),
    e(SERVER, "max_header_bytes", "\"16KiB\"", Kind::Bytes),
    e(SERVER, "max_uri_bytes", "\"4KiB\"", Kind::Bytes),
    e(SERVER, "via", "\"lacquer-test\"", Kind::Str),
    e(SERVER, "cache_status_name", "\"lq\"", Kind::Str),
    e(SERVER, "strip_request_headers", "[\"X-Original-URL\"]", Kind::StrList),
    e(SERVER, "debug_headers", "true", Kind::Bool),
    e(SERVER, "threads", "2", Kind::Int),
    e(SERVER, "drain_timeout", "\"1s\"", Kind::Duration),
    e(CACHE, "max_size", "\"64MiB\"", Kind::Bytes),
    e(CACHE, "max_object_size", "\"1MiB\"", Kind::Bytes),
    e(CACHE, "heuristic_fraction", "0.2", Kind::Float),
    e(CACHE, "heuristic_max", "\"1h\"", Kind::Duration),
    e(CACHE, "store_set_cookie", "false", Kind::Bool),
    e(CACHE, "honor_client_no_cache", "true", Kind::Bool),
    e(CACHE, "targeted_fields", "[\"CDN-Cache-Control\", \"Fastly-Cache-Control\"]", Kind::StrList),
    e(CACHE, "forward_targeted_fields", "false", Kind::Bool),
    e(CACHE, "max_variants", "8", Kind::Int),
    e(CACHE, "surrogate_control", "true", Kind::Bool),
    e(CACHE, "stale_while_revalidate", "\"10s\"", Kind::Duration),
    e(CACHE, "stale_if_error", "\"1m\"", Kind::Duration),
    e(CACHE, "unhealthy_grace", "\"0s\"", Kind::Duration),
    e(CACHE, "coalesce_wait", "\"2s\"", Kind::Duration),
    e(CACHE, "uncacheable_ttl", "\"5s\"", Kind::Duration),
    e(CACHE, "early_refresh", "\"0s\"", Kind::Duration),
    e(KEY, "sort_query", "true", Kind::Bool),
    e(KEY, "query_mode", "\"allow\"", Kind::Enum),
    e(KEY, "query_params", "[\"page\", \"f_*\"]", Kind::StrList),
    e(KEY, "headers", "[\"X-Exp\"]", Kind::StrList),
    e(KEY, "headers_fold_case", "[]", Kind::StrList),
    e(KEY, "cookies", "[\"seg\"]", Kind::StrList),
    e(KEY, "max_value_bytes", "64", Kind::Int),
    e(
        VARY,
        "normalizers",
        "[{ header = \"Accept-Language\", kind = \"language\", languages = [\"en\", \"fr\"], default = \"en\" }, { header = \"Accept-Encoding\", kind = \"encoding\" }]",
        Kind::Normalizers,
    ),
    e(VARY, "allow_private", "[\"cookie\"]", Kind::StrList),
    e(TAGS, "headers", "[\"Surrogate-Key\"]", Kind::StrList),
    e(TAGS, "strip", "false", Kind::Bool),
    e(TAGS, "max_length", "64", Kind::Int),
    e(TAGS, "max_per_object", "16", Kind::Int),
    e(ADMIN, "listen", "\"127.0.0.1:18081\"", Kind::Addr),
    e(ADMIN, "allow_ips", "[\"10.0.0.0/8\", \"::1\"]", Kind::StrList),
    e(ADMIN, "max_batch", "50", Kind::Int),
    e(ADMIN, "request_id_window", "\"1m\"", Kind::Duration),
    e(ADMIN, "purge_method", "false", Kind::Bool),
    e(LOG, "format", "\"json\"", Kind::Enum),
    e(LOG, "access", "false", Kind::Bool),
    e(LOG, "level", "\"debug\"", Kind::Str),
    e(Sec::Origin, "url", "\"http://127.0.0.1:9000/base\"", Kind::Str),
    e(Sec::Origin, "name", "\"primary\"", Kind::Str),
    e(Sec::Origin, "connect_timeout", "\"1s\"", Kind::Duration),
    e(Sec::Origin, "first_byte_timeout", "\"2s\"", Kind::Duration),
    e(Sec::Origin, "preserve_host", "false", Kind::Bool),
    e(Sec::Origin, "max_connections", "10", Kind::Int),
    e(Sec::Health, "path", "\"/health\"", Kind::Str),
    e(Sec::Health, "interval", "\"1s\"", Kind::Duration),
    e(Sec::Health, "timeout", "\"1s\"", Kind::Duration),
    e(Sec::Health, "rise", "1", Kind::Int),
    e(Sec::Health, "fall", "2", Kind::Int),
    e(Sec::Health, "expect_status", "204", Kind::Int),
    e(Sec::Route, "path_prefix", "\"/shop\"", Kind::Str),
    e(Sec::Route, "host", "\"*.example.com\"", Kind::Str),
    e(Sec::Route, "sort_query", "false", Kind::Bool),
    e(Sec::Route, "query_mode", "\"drop\"", Kind::Enum),
    e(Sec::Route, "query_params", "[\"utm_*\"]", Kind::StrList),
    e(Sec::Route, "headers", "[\"X-Exp\"]", Kind::StrList),
    e(Sec::Route, "headers_fold_case", "[]", Kind::StrList),
    e(Sec::Route, "cookies", "[]", Kind::StrList),
    e(Sec::Route, "max_value_bytes", "32", Kind::Int),
    e(Sec::Route, "vary_allow_private", "[\"cookie\"]", Kind::StrList),
];

/// Values of the right type that validation refuses, and the key it names.
const SEMANTIC: &[(Sec, &str, &str, &str)] = &[
    (SERVER, "header_read_timeout", "\"0s\"", ""),
    (SERVER, "max_header_bytes", "\"512B\"", ""),
    (SERVER, "max_header_bytes", "\"2MiB\"", ""),
    (SERVER, "max_uri_bytes", "\"32B\"", ""),
    (SERVER, "via", "\"a b\"", ""),
    (SERVER, "cache_status_name", "\"1abc\"", ""),
    (SERVER, "strip_request_headers", "[\"ok\", \"bad header\"]", "[1]"),
    (CACHE, "heuristic_fraction", "1.5", ""),
    (CACHE, "heuristic_fraction", "-0.5", ""),
    (CACHE, "heuristic_fraction", "nan", ""),
    (CACHE, "max_size", "\"1KiB\"", ""),
    (CACHE, "max_object_size", "\"0B\"", ""),
    (CACHE, "max_object_size", "\"3GiB\"", ""),
    (CACHE, "coalesce_wait", "\"0s\"", ""),
    (CACHE, "max_variants", "0", ""),
    (CACHE, "max_variants", "2000", ""),
    (CACHE, "targeted_fields", "[\"Cache-Control\"]", "[0]"),
    (CACHE, "targeted_fields", "[\"bad header\"]", "[0]"),
    (KEY, "max_value_bytes", "0", ""),
    (KEY, "max_value_bytes", "5000", ""),
    (KEY, "query_params", "[\"a=b\"]", "[0]"),
    (KEY, "query_params", "[\"*\"]", "[0]"),
    (KEY, "cookies", "[\"a b\"]", "[0]"),
    (KEY, "headers", "[\"bad header\"]", "[0]"),
    (KEY, "headers_fold_case", "[\"x-nope\"]", "[0]"),
    (TAGS, "max_length", "0", ""),
    (TAGS, "max_per_object", "0", ""),
    (TAGS, "headers", "[\"bad header\"]", "[0]"),
    (ADMIN, "max_batch", "0", ""),
    (ADMIN, "allow_ips", "[\"nope\"]", "[0]"),
    (VARY, "allow_private", "[\"accept\"]", "[0]"),
    (
        VARY,
        "normalizers",
        "[{ header = \"accept-language\", kind = \"language\" }]",
        "[0].languages",
    ),
    (
        VARY,
        "normalizers",
        "[{ header = \"accept-language\", kind = \"language\", languages = [\"en\"], default = \"fr\" }]",
        "[0].default",
    ),
    (
        VARY,
        "normalizers",
        "[{ header = \"accept\", kind = \"encoding\" }]",
        "[0].kind",
    ),
    (Sec::Origin, "url", "\"ftp://x\"", ""),
    (Sec::Origin, "url", "\"http://a/?q=1\"", ""),
    (Sec::Origin, "url", "\"not a url\"", ""),
    (Sec::Origin, "name", "\"\"", ""),
    (Sec::Origin, "connect_timeout", "\"0s\"", ""),
    (Sec::Origin, "first_byte_timeout", "\"0s\"", ""),
    (Sec::Health, "rise", "0", ""),
    (Sec::Health, "fall", "0", ""),
    (Sec::Health, "expect_status", "700", ""),
    (Sec::Health, "path", "\"nope\"", ""),
    (Sec::Health, "interval", "\"0s\"", ""),
    (Sec::Health, "timeout", "\"0s\"", ""),
    (Sec::Route, "path_prefix", "\"shop\"", ""),
    (Sec::Route, "host", "\"**.bad\"", ""),
    (Sec::Route, "max_value_bytes", "0", ""),
    (Sec::Route, "query_params", "[\"a b\"]", "[0]"),
    (Sec::Route, "vary_allow_private", "[\"accept\"]", "[0]"),
];

/// One config: which entries are written, and at most one change.
#[derive(Debug, Clone)]
struct Config {
    include: Vec<bool>,
    health: bool,
    route: bool,
    change: Change,
}

#[derive(Debug, Clone)]
enum Change {
    None,
    /// Entry `i` gets the `j`th wrong-typed value of its kind.
    WrongType(usize, usize),
    /// An unknown key in the section of entry `i`.
    Unknown(usize, &'static str),
    /// `SEMANTIC[i]`.
    Invalid(usize),
    /// A whole section given as a scalar.
    Scalar(&'static str, &'static str),
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop::collection::vec(any::<bool>(), ENTRIES.len()),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            1 => Just(Change::None),
            4 => (0..ENTRIES.len(), any::<prop::sample::Index>())
                .prop_map(|(i, j)| Change::WrongType(i, j.index(ENTRIES[i].kind.wrong().len()))),
            1 => (0..ENTRIES.len(), prop::sample::select(&["bogus", "lisen", "max_age", "url2"][..]))
                .prop_map(|(i, k)| Change::Unknown(i, k)),
            3 => (0..SEMANTIC.len()).prop_map(Change::Invalid),
            1 => (
                prop::sample::select(&["server", "cache", "key", "vary", "tags", "admin", "log", "origins", "routes"][..]),
                prop::sample::select(&["5", "\"x\"", "true"][..]),
            )
                .prop_map(|(s, v)| Change::Scalar(s, v)),
        ],
    )
        .prop_map(|(include, health, route, change)| Config {
            include,
            health,
            route,
            change,
        })
}

impl Config {
    /// The TOML text, and the key an error must name (`None`: it is valid) with
    /// whether the error may name something inside it (a wrong-typed value is
    /// named down to the list element or table field that is wrong).
    fn render(&self) -> (String, Option<(String, bool)>) {
        let mut lines: Vec<(Sec, String)> = Vec::new();
        let mut expected = None;
        let (mut health, mut route) = (self.health, self.route);
        for (i, entry) in ENTRIES.iter().enumerate() {
            let always = matches!(
                (entry.sec, entry.key),
                (Sec::Origin, "url") | (Sec::Route, "path_prefix")
            );
            let changed = match &self.change {
                Change::WrongType(c, j) if *c == i => Some(entry.kind.wrong()[*j].to_string()),
                _ => None,
            };
            if changed.is_some() {
                expected = Some((entry.sec.path(entry.key), true));
            }
            if !(self.include[i] || always || changed.is_some()) {
                continue;
            }
            health |= changed.is_some() && entry.sec == Sec::Health;
            route |= changed.is_some() && entry.sec == Sec::Route;
            let value = changed.unwrap_or_else(|| entry.value.to_string());
            lines.push((entry.sec, format!("{} = {value}", entry.key)));
        }
        match &self.change {
            Change::Unknown(i, key) => {
                let sec = ENTRIES[*i].sec;
                health |= sec == Sec::Health;
                route |= sec == Sec::Route;
                lines.push((sec, format!("{key} = 1")));
                expected = Some((sec.path(key), false));
            }
            Change::Invalid(i) => {
                let (sec, key, value, suffix) = SEMANTIC[*i];
                health |= sec == Sec::Health;
                route |= sec == Sec::Route;
                lines.retain(|(s, l)| !(*s == sec && l.starts_with(&format!("{key} = "))));
                lines.push((sec, format!("{key} = {value}")));
                expected = Some((format!("{}{suffix}", sec.path(key)), false));
            }
            Change::Scalar(section, _) => expected = Some((section.to_string(), false)),
            _ => {}
        }
        let scalar = match &self.change {
            Change::Scalar(s, v) => Some((*s, *v)),
            _ => None,
        };
        let skip = |name: &str| scalar.is_some_and(|(s, _)| s == name);
        let mut text = String::new();
        if let Some((s, v)) = scalar {
            text.push_str(&format!("{s} = {v}\n"));
        }
        for table in ["server", "cache", "key", "vary", "tags", "admin", "log"] {
            let mine: Vec<&String> = lines
                .iter()
                .filter(|(s, _)| *s == Sec::Table(table))
                .map(|(_, l)| l)
                .collect();
            if !mine.is_empty() && !skip(table) {
                text.push_str(&format!("[{table}]\n"));
                for l in mine {
                    text.push_str(l);
                    text.push('\n');
                }
            }
        }
        let section = |text: &mut String, header: &str, sec: Sec| {
            text.push_str(header);
            text.push('\n');
            for (_, l) in lines.iter().filter(|(s, _)| *s == sec) {
                text.push_str(l);
                text.push('\n');
            }
        };
        if !skip("origins") {
            section(&mut text, "[[origins]]", Sec::Origin);
            if health {
                section(&mut text, "[origins.health_check]", Sec::Health);
            }
        }
        if route && !skip("routes") {
            section(&mut text, "[[routes]]", Sec::Route);
        }
        (text, expected)
    }
}

fn check(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_file(ConfigFile::parse(text)?)
}

/// Section and key names, for random TOML.
const NAMES: &[&str] = &[
    "server",
    "cache",
    "key",
    "vary",
    "tags",
    "admin",
    "log",
    "origins",
    "routes",
    "listen",
    "url",
    "max_size",
    "normalizers",
    "headers",
    "tokens",
    "health_check",
    "tls",
    "languages",
    "kind",
    "default",
    "max_batch",
    "x",
];

fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(
            &[
                "1.5",
                "-0.0",
                "inf",
                "nan",
                "1e400",
                "1979-05-27T07:32:00Z",
                "07:32:00"
            ][..]
        )
        .prop_map(String::from),
        "[a-zA-Z0-9:/. *-]{0,12}".prop_map(|s| format!("{s:?}")),
        prop::sample::select(
            &[
                "\"http://a\"",
                "\"127.0.0.1:1\"",
                "\"1s\"",
                "\"1KiB\"",
                "\"language\"",
                "\"encoding\"",
                "\"\""
            ][..]
        )
        .prop_map(String::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((prop::sample::select(NAMES), inner), 0..3).prop_map(|kv| {
                let mut seen = Vec::new();
                let members: Vec<String> = kv
                    .into_iter()
                    .filter(|(k, _)| {
                        let fresh = !seen.contains(k);
                        seen.push(*k);
                        fresh
                    })
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                format!("{{ {} }}", members.join(", "))
            }),
        ]
    })
}

/// TOML made of the config's own names: tables, arrays of tables, keys and values
/// of every type. Mostly well-formed, so that deserialization and validation run.
fn toml_text() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        prop::sample::select(NAMES).prop_map(|n| format!("[{n}]")),
        prop::sample::select(NAMES).prop_map(|n| format!("[[{n}]]")),
        (prop::sample::select(NAMES), prop::sample::select(NAMES))
            .prop_map(|(a, b)| format!("[{a}.{b}]")),
    ];
    let line = (prop::sample::select(NAMES), toml_value()).prop_map(|(k, v)| format!("{k} = {v}"));
    prop::collection::vec((header, prop::collection::vec(line, 0..4)), 0..5).prop_map(|sections| {
        let mut text = String::new();
        for (h, lines) in sections {
            text.push_str(&h);
            text.push('\n');
            for l in lines {
                text.push_str(&l);
                text.push('\n');
            }
        }
        text
    })
}

/// Keys validation requires (absent from the text, they are still what an error names).
const REQUIRED: &[&str] = &["origins", "url", "languages", "name", "env", "operations"];

/// The names in a dotted error path (`origins[0].health_check.rise` gives
/// `origins`, `health_check`, `rise`).
fn path_names(key: &str) -> Vec<&str> {
    key.split(['.', '[', ']'])
        .filter(|s| !s.is_empty() && !s.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A valid configuration (any subset of the valid keys) validates, and so do
    /// its effective settings written back as TOML. One key changed to a value of
    /// the wrong type, an unknown key, a section given as a scalar, or a value of
    /// the right type out of range: refused, and the error names that key (its
    /// dotted path is the error's key and appears in its text).
    #[test]
    fn config_errors_name_the_key(c in config()) {
        let (text, expected) = c.render();
        let got = check(&text);
        match expected {
            None => {
                let s = got.map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                let again = check(&s.file.to_toml());
                prop_assert!(again.is_ok(), "{:?}\n{}", again.err(), s.file.to_toml());
            }
            Some((key, inside)) => {
                let e = match got {
                    Ok(_) => return Err(TestCaseError::fail(format!("accepted:\n{text}"))),
                    Err(e) => e,
                };
                let named = e.key == key
                    || inside
                        && (e.key.starts_with(&format!("{key}[")) || e.key.starts_with(&format!("{key}.")));
                prop_assert!(named, "error key {:?}, expected {:?}: {}\n{}", e.key, key, e, text);
                prop_assert!(e.to_string().contains(&e.key), "{}", e);
                prop_assert!(!e.reason.is_empty());
            }
        }
    }

    /// Random TOML over the config's names: no panic in parsing or validation;
    /// an error's key is made of names the text holds (its last may be a key
    /// validation requires) and appears in the message.
    #[test]
    fn arbitrary_toml_never_panics(text in toml_text()) {
        match check(&text) {
            Ok(s) => prop_assert!(!s.origins.is_empty()),
            Err(e) => {
                prop_assert!(e.to_string().contains(&e.key), "{}", e);
                let names = path_names(&e.key);
                for (i, name) in names.iter().enumerate() {
                    let required = i + 1 == names.len() && REQUIRED.contains(name);
                    prop_assert!(text.contains(name) || required, "{} not in\n{}", e.key, text);
                }
            }
        }
    }

    /// Arbitrary text: no panic; a syntax error has no key.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,64}|[\\[\\]a-z_=\"{}., 0-9\\n]{0,64}") {
        if let Err(e) = check(&text) {
            prop_assert!(e.to_string().starts_with("invalid config"), "{}", e);
        }
    }

    /// `--origin URL` with any text: a valid http(s) origin, or an error naming
    /// `origins[0].url`.
    #[test]
    fn for_origin_of_any_url(url in "\\PC{0,24}|(https?|ftp)://[a-z0-9.:@/?%-]{0,16}") {
        match Settings::for_origin(&url) {
            Ok(s) => {
                let o = &s.origins[0];
                prop_assert!(o.scheme == http::uri::Scheme::HTTP || o.scheme == http::uri::Scheme::HTTPS);
                prop_assert!(!o.authority.as_str().is_empty());
                prop_assert!(!o.base_path.ends_with('/'));
            }
            Err(e) => prop_assert_eq!(e.key, "origins[0].url"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// `ConfigFile::load` of a file reads as `ConfigFile::parse` of its text.
    #[test]
    fn load_reads_like_parse(c in config(), n in any::<u64>()) {
        let (text, _) = c.render();
        let path = std::env::temp_dir().join(format!("lacquer-props-{}-{n:016x}.toml", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let loaded = ConfigFile::load(&path);
        std::fs::remove_file(&path).unwrap();
        match (loaded, ConfigFile::parse(&text)) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a.to_toml(), b.to_toml()),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "load {:?} but parse {:?}", a.is_ok(), b.is_ok()),
        }
    }
}
