//! The purge request and prefixes (src/purge.rs).

use http::header::HeaderMap;
use lacquer::key::{normalize_host, primary_key, KeyRule};
use lacquer::purge::{normalize_prefix, Purge};
use proptest::prelude::*;
use serde_json::{Map, Value};

const FIELDS: &[&str] = &[
    "tags",
    "urls",
    "prefixes",
    "all",
    "soft",
    "dry_run",
    "request_id",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "\\PC{0,8}|[a-z:/.]{0,8}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(FIELDS).prop_map(String::from),
                        "[a-z_]{1,6}"
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A value of the right type for `field`.
fn field_value(field: &str) -> BoxedStrategy<Value> {
    match field {
        "tags" | "urls" | "prefixes" => {
            prop::collection::vec("\\PC{0,8}".prop_map(Value::String), 0..4)
                .prop_map(Value::Array)
                .boxed()
        }
        "request_id" => prop_oneof![Just(Value::Null), "\\PC{0,8}".prop_map(Value::String)].boxed(),
        _ => any::<bool>().prop_map(Value::Bool).boxed(),
    }
}

/// A purge body: mostly objects of known fields, each with a value of the right
/// type or (sometimes) an arbitrary one, sometimes an unknown field; or an
/// arbitrary JSON value; or the positional (array) form of the struct.
fn purge_json() -> impl Strategy<Value = Value> {
    let member = prop::sample::select(FIELDS).prop_flat_map(|f| {
        (
            Just(f.to_string()),
            prop_oneof![6 => field_value(f), 1 => json_value()],
        )
    });
    prop_oneof![
        6 => (
            prop::collection::vec(member, 0..6),
            prop::option::of(("[a-z_]{1,8}", json_leaf())),
        )
            .prop_map(|(members, unknown)| {
                let mut m: Map<String, Value> = members.into_iter().collect();
                if let Some((k, v)) = unknown {
                    m.insert(k, v);
                }
                Value::Object(m)
            }),
        1 => json_value(),
        1 => prop::collection::vec(json_value(), 0..9).prop_map(Value::Array),
    ]
}

/// Does a JSON value have the type `field` takes?
fn typed(field: &str, v: &Value) -> bool {
    match field {
        "tags" | "urls" | "prefixes" => {
            v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        }
        "request_id" => v.is_null() || v.is_string(),
        _ => v.is_boolean(),
    }
}

/// What `Purge` accepts: an object of known fields of the right types (absent ones
/// default), or the positional form (at most one element per field, in order).
fn accepted(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .all(|(k, v)| FIELDS.contains(&k.as_str()) && typed(k, v)),
        Value::Array(a) => {
            a.len() <= FIELDS.len() && a.iter().zip(FIELDS).all(|(v, f)| typed(f, v))
        }
        _ => false,
    }
}

fn item() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9:/._-]{1,12}",
        1 => Just(String::new()),
        1 => prop::sample::select(&["a b", "x\u{1}", "tab\there", "nel\u{85}", "\u{7f}"][..]).prop_map(String::from),
        1 => Just("a".repeat(2049)),
        1 => Just("é".repeat(1024)),
    ]
}

fn purge() -> impl Strategy<Value = Purge> {
    (
        prop::collection::vec(item(), 0..5),
        prop::collection::vec(item(), 0..4),
        prop::collection::vec(item(), 0..4),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop_oneof![
            4 => "[a-z0-9-]{1,16}",
            1 => Just(String::new()),
            1 => Just("r".repeat(257)),
            1 => Just("id\n".to_string()),
        ]),
    )
        .prop_map(|(tags, urls, prefixes, all, soft, request_id)| Purge {
            tags,
            urls,
            prefixes,
            all,
            soft,
            dry_run: false,
            request_id,
            wait: None,
        })
}

fn bad_item(s: &str) -> bool {
    s.is_empty() || s.len() > 2048 || s.chars().any(|c| c.is_control() || c == ' ')
}

fn host() -> impl Strategy<Value = String> {
    let name = "[a-zA-Z0-9-]{1,8}(\\.[a-zA-Z0-9-]{1,8}){0,2}\\.?";
    let port = prop_oneof![
        3 => Just(String::new()),
        1 => Just(":80".to_string()),
        1 => Just(":443".to_string()),
        1 => "[0-9]{1,5}".prop_map(|p| format!(":{p}")),
    ];
    (name, port).prop_map(|(n, p)| format!("{n}{p}"))
}

/// A path as written in a prefix: plain and percent-encoded characters mixed,
/// sometimes an embedded URL (`/go/http://other/`).
fn prefix_path() -> impl Strategy<Value = (String, String)> {
    let piece = prop_oneof![
        6 => prop::sample::select(&b"abcXYZ019-._~"[..]).prop_map(|c| ((c as char).to_string(), (c as char).to_string())),
        2 => prop::sample::select(&b"abz~"[..]).prop_map(|c| (format!("%{c:02x}"), (c as char).to_string())),
        2 => prop::sample::select(&b"/:?&= "[..]).prop_map(|c| (format!("%{c:02x}"), format!("%{c:02X}"))),
        2 => prop::sample::select(&["/", ":", "@", "://", "/http://x.example/"][..]).prop_map(|s| (s.to_string(), s.to_string())),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| {
        let written: String = pieces.iter().map(|(w, _)| w.as_str()).collect();
        let normal: String = pieces.iter().map(|(_, n)| n.as_str()).collect();
        (format!("/{written}"), format!("/{normal}"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// A purge body deserializes exactly when it has the documented shape
    /// (unknown fields and wrong types refused); what deserializes serializes back
    /// to the same purge.
    #[test]
    fn purge_json_shape(v in purge_json()) {
        let text = v.to_string();
        let got = serde_json::from_str::<Purge>(&text);
        prop_assert_eq!(got.is_ok(), accepted(&v), "{} gave {:?}", text, got);
        if let Ok(p) = got {
            let again: Purge = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            prop_assert_eq!(again, p);
        }
    }

    /// Arbitrary text as a purge body: no panic (an error or a purge).
    #[test]
    fn purge_json_of_arbitrary_text(text in "\\PC{0,48}|[\\[\\]{}\":,a-z0-9 ]{0,48}") {
        if let Ok(p) = serde_json::from_str::<Purge>(&text) {
            let again: Purge = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
            prop_assert_eq!(again, p);
        }
    }

    /// `validate`: an empty purge and one over `max_items` are refused and say so;
    /// otherwise the first bad item is named by field and index; a good purge is
    /// accepted.
    #[test]
    fn validate_names_the_problem(p in purge(), max in 1usize..12) {
        let items = p.tags.len() + p.urls.len() + p.prefixes.len() + usize::from(p.all);
        prop_assert_eq!(p.items(), items);
        let got = p.validate(max);
        let first_bad = [("tags", &p.tags), ("urls", &p.urls), ("prefixes", &p.prefixes)]
            .into_iter()
            .find_map(|(f, list)| list.iter().position(|s| bad_item(s)).map(|i| format!("{f}[{i}]")));
        let bad_id = p
            .request_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > 256 || id.chars().any(char::is_control));
        match got {
            Ok(()) => prop_assert!(items >= 1 && items <= max && first_bad.is_none() && !bad_id),
            Err(e) if items == 0 => prop_assert!(e.contains("empty"), "{}", e),
            Err(e) if items > max => {
                prop_assert!(e.contains(&format!("{items} items exceed the limit of {max}")), "{}", e)
            }
            Err(e) => match first_bad {
                Some(field) => prop_assert!(e.contains(&field), "{} should name {}", e, field),
                None => prop_assert!(bad_id && e.contains("request_id"), "{}", e),
            },
        }
    }

    /// A prefix names what the keys hold after `scheme://`: its host normalized as
    /// keys normalize it for that scheme, its path percent-normalized, so a prefix
    /// purge covers every key under it whichever way it was spelled; for
    /// scheme-less (`http`) prefixes `normalize_prefix` is idempotent.
    ///
    /// (For an https prefix idempotence does not hold and is not expected: the
    /// result drops the scheme, so `https://a:80/` gives `a:80/`, which read again
    /// as http is `a/`.)
    #[test]
    fn prefixes_cover_their_keys(
        host in host(),
        (path, normal_path) in prefix_path(),
        rest in "[a-z0-9/]{0,6}",
        scheme in prop::sample::select(&["http", "https"][..]),
        with_scheme in any::<bool>(),
        scheme_case in any::<u64>(),
        junk in "\\PC{0,24}",
    ) {
        // Schemes are case-insensitive (RFC 3986 §3.1).
        let written = if with_scheme || scheme == "https" {
            format!("{}://{host}{path}", crate::support::recase(scheme, scheme_case))
        } else {
            format!("{host}{path}")
        };
        let host_norm = normalize_host(&host, scheme).into_owned();
        let prefix = normalize_prefix(&written);
        prop_assert_eq!(&prefix, &format!("{host_norm}{normal_path}"), "{}", written);
        // The key of a request under the prefix starts with it.
        let pq = format!("{path}{rest}");
        let key = primary_key(&KeyRule::default(), scheme, &host_norm, &pq, &HeaderMap::new());
        let after_scheme = key.full.split_once("://").map_or(&*key.full, |(_, r)| r);
        prop_assert!(after_scheme.starts_with(&prefix), "{} does not cover {}", prefix, key.full);
        if scheme == "http" {
            prop_assert_eq!(normalize_prefix(&prefix), prefix.clone());
        }
        // Without a path, the prefix is the whole host.
        prop_assert_eq!(normalize_prefix(&format!("{scheme}://{host}")), format!("{host_norm}/"));
        let _ = normalize_prefix(&junk);
    }
}
