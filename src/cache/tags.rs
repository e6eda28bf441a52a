//! Surrogate keys (tags) from response headers: `Surrogate-Key` (space-separated)
//! and `Cache-Tag` (comma-separated) by default. Pure functions.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};

/// Which headers carry tags, and the limits on them (validated config).
#[derive(Debug, Clone)]
pub struct TagRules {
    pub headers: Vec<HeaderName>,
    /// Remove the tag headers before responses go to clients.
    pub strip: bool,
    pub max_length: usize,
    pub max_per_object: usize,
}

impl Default for TagRules {
    fn default() -> Self {
        TagRules {
            headers: vec![
                HeaderName::from_static("surrogate-key"),
                HeaderName::from_static("cache-tag"),
            ],
            strip: true,
            max_length: 256,
            max_per_object: 128,
        }
    }
}

/// Tags as a stored entry keeps them: each followed by a NUL byte, in the entry's
/// one buffer (a tag is a piece of a header value, which cannot hold a NUL).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Packed<'a>(&'a [u8]);

impl<'a> Packed<'a> {
    pub fn new(bytes: &'a [u8]) -> Packed<'a> {
        Packed(bytes)
    }

    pub fn iter(self) -> impl Iterator<Item = &'a str> {
        self.0
            .split(|&b| b == 0)
            .filter(|t| !t.is_empty())
            .filter_map(|t| std::str::from_utf8(t).ok())
    }
}

impl std::fmt::Debug for Packed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Appends `tags` to `out` in the [`Packed`] form.
pub fn pack(tags: &[Arc<str>], out: &mut Vec<u8>) {
    for tag in tags.iter().filter(|t| !t.is_empty() && !t.contains('\0')) {
        out.extend_from_slice(tag.as_bytes());
        out.push(0);
    }
}

/// What went over a limit while reading tags (for a log line).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub too_long: usize,
    pub over_count: usize,
}

/// The tags of a response: deduplicated, in order, within the limits. Tags that are
/// too long or past the count limit are dropped and reported.
pub fn extract(rules: &TagRules, headers: &HeaderMap) -> (Vec<Arc<str>>, Dropped) {
    let mut tags: Vec<Arc<str>> = Vec::new();
    let mut dropped = Dropped::default();
    for name in &rules.headers {
        // Surrogate-Key is space-separated (Fastly); the others comma-separated.
        let by_space = name.as_str() == "surrogate-key";
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else { continue };
            let parts: Box<dyn Iterator<Item = &str>> = if by_space {
                Box::new(text.split_ascii_whitespace())
            } else {
                Box::new(text.split(',').map(str::trim))
            };
            for tag in parts.filter(|t| !t.is_empty()) {
                if tag.len() > rules.max_length {
                    dropped.too_long += 1;
                } else if tags.iter().any(|t| &**t == tag) {
                    continue;
                } else if tags.len() >= rules.max_per_object {
                    dropped.over_count += 1;
                } else {
                    tags.push(Arc::from(tag));
                }
            }
        }
    }
    (tags, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn both_syntaxes_deduplicated_and_bounded() {
        let mut h = HeaderMap::new();
        h.append(
            "surrogate-key",
            HeaderValue::from_static("  campaign:summer   product:1 product:1"),
        );
        h.append(
            "cache-tag",
            HeaderValue::from_static("product:1, page:home ,,"),
        );
        let (tags, dropped) = extract(&TagRules::default(), &h);
        let tags: Vec<&str> = tags.iter().map(|t| &**t).collect();
        assert_eq!(tags, ["campaign:summer", "product:1", "page:home"]);
        assert_eq!(dropped, Dropped::default());

        let rules = TagRules {
            max_length: 5,
            max_per_object: 1,
            ..TagRules::default()
        };
        let (tags, dropped) = extract(&rules, &h);
        assert_eq!(tags.len(), 0);
        assert_eq!(dropped.too_long, 5);
        let mut h = HeaderMap::new();
        h.append("surrogate-key", HeaderValue::from_static("a b c"));
        let (tags, dropped) = extract(&rules, &h);
        assert_eq!(tags.len(), 1);
        assert_eq!(dropped.over_count, 2);
        // Non-UTF-8 values are ignored, not a panic.
        let mut h = HeaderMap::new();
        h.append("cache-tag", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert!(extract(&TagRules::default(), &h).0.is_empty());
    }
}
