//! Vary matching and the request normalizers (src/vary.rs).

use http::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT_ENCODING, ACCEPT_LANGUAGE};
use lacquer::vary::{normalize, vary_value, Normalizer, VaryRules};
use proptest::prelude::*;

use crate::support::{field_lines, headers_with, ows, recase};

/// Language lists as the config accepts them (ASCII letters, digits and `-`),
/// and the index of the default.
///
/// Lists with languages that differ only in case, or longer than 64 bytes, are
/// generated and then left out: the config refuses them (with them `normalize`
/// would not be idempotent: `["EN", "en"]`, default `"en"`: `*` gives `"en"`, and
/// `"en"` then `"EN"`; a language over 64 bytes is skipped as a request member and
/// gives the default). The config's `errors_name_the_key` table checks the refusal.
fn languages() -> impl Strategy<Value = (Vec<String>, usize)> {
    (
        prop::collection::vec("[a-zA-Z]{1,3}(-[a-zA-Z0-9]{1,4})?|[a-z0-9-]{1,12}", 1..5),
        prop::option::of((any::<prop::sample::Index>(), any::<u64>())),
        prop::option::of("[a-z]{2,3}-[a-z]{62}"),
    )
        .prop_map(|(mut tags, twin, long)| {
            if let Some((i, case)) = twin {
                let t = recase(&tags[i.index(tags.len())].to_ascii_lowercase(), case);
                tags.push(t);
            }
            tags.extend(long);
            // What the config refuses (see above): case twins, over 64 bytes.
            let mut seen = Vec::<String>::new();
            tags.retain(|t| {
                let lower = t.to_ascii_lowercase();
                let keep = !seen.contains(&lower) && t.len() <= 64;
                seen.push(lower);
                keep
            });
            tags
        })
        .prop_flat_map(|tags| {
            let n = tags.len();
            (Just(tags), 0..n)
        })
}

fn language_normalizer() -> impl Strategy<Value = Normalizer> {
    languages().prop_map(|(languages, d)| Normalizer::Language {
        default: languages[d].clone(),
        languages,
    })
}

fn normalizer() -> impl Strategy<Value = Normalizer> {
    prop_oneof![Just(Normalizer::Encoding), language_normalizer()]
}

/// An `Accept-*` list: known and unknown members (among them `known`, in any
/// case, and their primary subtags), q-values valid and not.
fn accept_lines(known: Vec<String>) -> impl Strategy<Value = Vec<String>> {
    let mut known: Vec<String> = known
        .iter()
        .flat_map(|l| {
            [
                l.clone(),
                l.split('-').next().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    known.push("*".into());
    let known = (prop::sample::select(known), any::<u64>()).prop_map(|(t, case)| recase(&t, case));
    let token = prop_oneof![
        4 => known,
        1 => Just("br".to_string()),
        1 => Just("GZIP".to_string()),
        1 => Just("gzip".to_string()),
        1 => Just("identity".to_string()),
        1 => Just("*".to_string()),
        1 => Just("deflate".to_string()),
        2 => "[a-zA-Z]{1,3}(-[a-zA-Z0-9]{1,4})?",
        1 => "[a-z0-9-]{1,12}",
        1 => "[a-z]{65,70}",
    ];
    let q = prop_oneof![
        3 => Just(String::new()),
        2 => "0(\\.[0-9]{0,3})?|1(\\.0{0,3})?".prop_map(|q| format!(";q={q}")),
        1 => prop_oneof![Just(";q=2"), Just(";q=-1"), Just(";q=x"), Just(";Q=0"), Just(";level=1")]
            .prop_map(String::from),
    ];
    let member = (token, ows(), q).prop_map(|(t, s, q)| format!("{t}{s}{q}"));
    prop::collection::vec(
        prop::collection::vec(member, 0..5).prop_map(|m| m.join(", ")),
        0..3,
    )
}

fn name_for(n: &Normalizer) -> HeaderName {
    match n {
        Normalizer::Encoding => ACCEPT_ENCODING,
        Normalizer::Language { .. } => ACCEPT_LANGUAGE,
    }
}

/// The request as field lines: structured lists (naming `n`'s languages), or
/// arbitrary bytes.
fn request_lines(n: &Normalizer) -> impl Strategy<Value = Vec<Vec<u8>>> {
    let known = match n {
        Normalizer::Encoding => Vec::new(),
        Normalizer::Language { languages, .. } => languages.clone(),
    };
    prop_oneof![
        3 => accept_lines(known).prop_map(|l| l.into_iter().map(String::into_bytes).collect()),
        1 => field_lines(3, 40),
    ]
}

fn normalizer_and_request() -> impl Strategy<Value = (Normalizer, Vec<Vec<u8>>)> {
    normalizer().prop_flat_map(|n| {
        let lines = request_lines(&n);
        (Just(n), lines)
    })
}

fn one_line(name: &HeaderName, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        name.clone(),
        HeaderValue::from_str(value).expect("a normalizer's output is a field value"),
    );
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// What a normalizer produces is normal (one of its values), and normalizing
    /// it again gives it back.
    #[test]
    fn normalize_is_idempotent_and_normal((n, lines) in normalizer_and_request()) {
        let name = name_for(&n);
        let req = headers_with(&name, &lines);
        let out = normalize(&n, &req, &name);
        prop_assert!(n.is_normal(out.as_bytes()), "{:?} gave {:?}", req, out);
        match &n {
            Normalizer::Encoding => prop_assert!(["br", "gzip", "identity"].contains(&&*out)),
            Normalizer::Language { languages, .. } => prop_assert!(languages.iter().any(|l| *l == out)),
        }
        let again = normalize(&n, &one_line(&name, &out), &name);
        prop_assert_eq!(&again, &out, "{:?}", req);
        if req.is_empty() {
            let absent = n.for_absent();
            prop_assert_eq!(absent.as_ref().map(HeaderValue::as_bytes), Some(out.as_bytes()));
        }
    }

    /// `normalize_request` leaves each normalized field as exactly one line holding
    /// `normalize` of the request as received, touches no other field, and a
    /// second pass changes nothing.
    #[test]
    fn normalize_request_rewrites_to_normalize(
        (lang, al) in language_normalizer().prop_flat_map(|n| {
            let lines = request_lines(&n);
            (Just(n), lines)
        }),
        encoding in any::<bool>(),
        ae in request_lines(&Normalizer::Encoding),
        other in field_lines(2, 20),
    ) {
        let mut normalizers = vec![(ACCEPT_LANGUAGE, lang)];
        if encoding {
            normalizers.insert(0, (ACCEPT_ENCODING, Normalizer::Encoding));
        }
        let rules = VaryRules { normalizers, allow_private: Vec::new() };
        let mut req = headers_with(&ACCEPT_ENCODING, &ae);
        for (k, v) in headers_with(&ACCEPT_LANGUAGE, &al).iter() {
            req.append(k, v.clone());
        }
        let x = HeaderName::from_static("x-other");
        for (k, v) in headers_with(&x, &other).iter() {
            req.append(k, v.clone());
        }
        let before = req.clone();
        rules.normalize_request(&mut req);
        for (name, n) in &rules.normalizers {
            let lines: Vec<&HeaderValue> = req.get_all(name).iter().collect();
            prop_assert_eq!(lines.len(), 1, "{:?}", req);
            let want = normalize(n, &before, name);
            prop_assert_eq!(lines[0].as_bytes(), want.as_bytes());
        }
        if !encoding {
            prop_assert_eq!(
                req.get_all(ACCEPT_ENCODING).iter().collect::<Vec<_>>(),
                before.get_all(ACCEPT_ENCODING).iter().collect::<Vec<_>>()
            );
        }
        prop_assert_eq!(
            req.get_all(&x).iter().collect::<Vec<_>>(),
            before.get_all(&x).iter().collect::<Vec<_>>()
        );
        let once = req.clone();
        rules.normalize_request(&mut req);
        prop_assert_eq!(req, once);
    }

    /// Vary values: `None` exactly when the field is absent; idempotent (the value
    /// read back as one line gives itself); field lines combine as one
    /// comma-joined line; runs of whitespace fold; `Accept-*` ignores case.
    #[test]
    fn vary_value_folds(lines in field_lines(4, 32), fold in any::<bool>()) {
        let name = if fold { ACCEPT_LANGUAGE } else { HeaderName::from_static("x-flag") };
        let req = headers_with(&name, &lines);
        let v = vary_value(&req, &name);
        prop_assert_eq!(v.is_some(), req.contains_key(&name));
        let Some(v) = v else { return Ok(()) };
        let value = HeaderValue::from_bytes(&v).expect("a vary value is a field value");
        let mut again = HeaderMap::new();
        again.insert(name.clone(), value);
        prop_assert_eq!(vary_value(&again, &name), Some(v.clone()));

        let valid: Vec<&[u8]> = req.get_all(&name).iter().map(HeaderValue::as_bytes).collect();
        let joined = valid.join(&b","[..]);
        prop_assert_eq!(
            vary_value(&headers_with(&name, std::slice::from_ref(&joined)), &name),
            Some(v.clone())
        );
        let spaced: Vec<u8> = joined
            .iter()
            .flat_map(|&b| if b == b' ' { b" \t ".to_vec() } else { vec![b] })
            .collect();
        prop_assert_eq!(
            vary_value(&headers_with(&name, &[spaced]), &name),
            Some(v.clone())
        );
        if fold {
            for cased in [joined.to_ascii_uppercase(), joined.to_ascii_lowercase()] {
                prop_assert_eq!(
                    vary_value(&headers_with(&name, &[cased]), &name),
                    Some(v.clone())
                );
            }
        }
    }
}
