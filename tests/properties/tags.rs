//! Surrogate keys (src/tags.rs).

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use lacquer::tags::{extract, pack, Packed, TagRules};
use proptest::prelude::*;

use crate::support::{field_lines, headers_with, ows};

fn surrogate_key() -> HeaderName {
    HeaderName::from_static("surrogate-key")
}

fn cache_tag() -> HeaderName {
    HeaderName::from_static("cache-tag")
}

fn x_tags() -> HeaderName {
    HeaderName::from_static("x-tags")
}

/// Which fields carry tags (a subset, in any order) and the limits.
fn rules() -> impl Strategy<Value = TagRules> {
    (
        prop::sample::subsequence(vec![surrogate_key(), cache_tag(), x_tags()], 0..=3)
            .prop_shuffle(),
        1usize..24,
        1usize..8,
        any::<bool>(),
    )
        .prop_map(|(headers, max_length, max_per_object, strip)| TagRules {
            headers,
            strip,
            max_length,
            max_per_object,
        })
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9:_.-]{1,6}",
        2 => prop::sample::select(&["a", "b", "product:1", "campaign:summer"][..]).prop_map(String::from),
        1 => "[a-z]{20,30}",
    ]
}

/// One field line of `tags`: whitespace-separated for `Surrogate-Key`,
/// comma-separated (with blanks and empty members) for the others.
fn line(by_space: bool) -> impl Strategy<Value = (Vec<String>, String)> {
    let sep = if by_space {
        prop::sample::select(&[" ", "  ", "\t", " \t "][..]).boxed()
    } else {
        prop::sample::select(&[",", ", ", " ,", ",,", " , , "][..]).boxed()
    };
    (prop::collection::vec((tag(), sep), 0..6), ows(), ows()).prop_map(|(parts, lead, trail)| {
        let tags: Vec<String> = parts.iter().map(|(t, _)| t.clone()).collect();
        let mut text = lead.to_string();
        for (i, (t, s)) in parts.iter().enumerate() {
            if i > 0 {
                text.push_str(s);
            }
            text.push_str(t);
        }
        text.push_str(trail);
        (tags, text)
    })
}

fn lines(by_space: bool) -> impl Strategy<Value = Vec<(Vec<String>, String)>> {
    prop::collection::vec(line(by_space), 0..3)
}

fn as_strs(tags: &[Arc<str>]) -> Vec<&str> {
    tags.iter().map(|t| &**t).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Tags come out deduplicated, in order of first appearance over the rule's
    /// fields, without the ones longer than `max_length`, at most `max_per_object`
    /// of them; the drop counts account for every other occurrence; packing
    /// them and iterating the packed form gives them back.
    #[test]
    fn extract_keeps_the_limits(
        rules in rules(),
        sk in lines(true),
        ct in lines(false),
        xt in lines(false),
    ) {
        let mut h = HeaderMap::new();
        for (name, ls) in [(surrogate_key(), &sk), (cache_tag(), &ct), (x_tags(), &xt)] {
            for (_, text) in ls {
                h.append(name.clone(), HeaderValue::from_str(text).unwrap());
            }
        }
        let occurrences: Vec<&str> = rules
            .headers
            .iter()
            .flat_map(|name| {
                let ls = if *name == surrogate_key() { &sk } else if *name == cache_tag() { &ct } else { &xt };
                ls.iter().flat_map(|(tags, _)| tags.iter().map(String::as_str))
            })
            .collect();
        let mut want: Vec<&str> = Vec::new();
        for t in occurrences.iter().filter(|t| t.len() <= rules.max_length) {
            if !want.contains(t) {
                want.push(t);
            }
        }
        want.truncate(rules.max_per_object);
        let too_long = occurrences.iter().filter(|t| t.len() > rules.max_length).count();
        let over_count = occurrences
            .iter()
            .filter(|t| t.len() <= rules.max_length && !want.contains(t))
            .count();

        let (tags, dropped) = extract(&rules, &h);
        prop_assert_eq!(as_strs(&tags), want);
        prop_assert_eq!(dropped.too_long, too_long);
        prop_assert_eq!(dropped.over_count, over_count);

        let mut packed = Vec::new();
        pack(&tags, &mut packed);
        prop_assert_eq!(Packed::new(&packed).iter().collect::<Vec<_>>(), as_strs(&tags));
    }

    /// Arbitrary bytes in the tag fields: no panic, and the limits hold.
    #[test]
    fn extract_of_arbitrary_bytes(rules in rules(), sk in field_lines(3, 40), ct in field_lines(3, 40)) {
        let mut h = headers_with(&surrogate_key(), &sk);
        for (k, v) in headers_with(&cache_tag(), &ct).iter() {
            h.append(k, v.clone());
        }
        let (tags, _) = extract(&rules, &h);
        prop_assert!(tags.len() <= rules.max_per_object);
        for (i, t) in tags.iter().enumerate() {
            prop_assert!(!t.is_empty() && t.len() <= rules.max_length, "{:?}", t);
            prop_assert_eq!(t.trim(), &**t);
            prop_assert!(!tags[..i].contains(t), "duplicate {:?}", t);
        }
        let mut packed = Vec::new();
        pack(&tags, &mut packed);
        prop_assert_eq!(Packed::new(&packed).iter().collect::<Vec<_>>(), as_strs(&tags));
    }

    /// `pack` then `iter` gives back every tag that is not empty and holds no
    /// NUL (those cannot come from a field value), appended after what the buffer
    /// already held.
    #[test]
    fn pack_round_trips(
        before in prop::collection::vec("\\PC{1,6}", 0..4),
        tags in prop::collection::vec(prop_oneof![4 => "\\PC{0,8}", 1 => "[a\\x00]{1,3}"], 0..8),
    ) {
        let before: Vec<Arc<str>> = before.iter().map(|t| Arc::from(t.as_str())).collect();
        let tags: Vec<Arc<str>> = tags.iter().map(|t| Arc::from(t.as_str())).collect();
        let mut buf = Vec::new();
        pack(&before, &mut buf);
        pack(&tags, &mut buf);
        let want: Vec<&str> = before
            .iter()
            .chain(&tags)
            .map(|t| &**t)
            .filter(|t| !t.is_empty() && !t.contains('\0'))
            .collect();
        prop_assert_eq!(Packed::new(&buf).iter().collect::<Vec<_>>(), want);
    }
}
