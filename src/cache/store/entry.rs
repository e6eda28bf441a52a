//! A stored response and its encoding: `Fetched` (plain fields, what the fetch
//! path builds) packed into a `StoredResponse` of 112 bytes whose one buffer holds a
//! small body, the header fields and the tags, so that a hit re-parses nothing; and
//! the cached rendering of a hit's head.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;

use crate::directives::StoredDirectives;
use crate::freshness::Born;
use crate::key::Variant;

/// A response as the origin gave it (hop-by-hop fields and `Age` removed), with
/// the facts freshness needs; [`StoredResponse::pack`] makes it what the store keeps.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: StoredHeaders,
    pub body: Bytes,
    /// When its age was zero (from the request and response times and the
    /// corrected initial age of §4.2.3).
    pub born: Born,
    pub lifetime: Duration,
    /// The directives Lacquer obeys for this response (targeted field or Cache-Control).
    pub directives: StoredDirectives,
    /// The request fields that selected this variant.
    pub variant: Variant,
    /// Surrogate keys (tags) of this response.
    pub tags: Arc<[Arc<str>]>,
    /// The purge generation when its origin request started (see `purge/mod.rs`).
    pub fetched_gen: u64,
}

/// A stored response and the facts freshness needs (RFC 9111 §4.2.3), packed for a
/// store of millions: a small body, the header fields and the tags share one
/// buffer, and the rest is 112 bytes (128 in its `Arc`). A hit clones the `Arc`
/// and slices the body out of the buffer: nothing is parsed or copied.
pub struct StoredResponse {
    /// The body if it is small (at most `SMALL_BODY`), then the header fields (see
    /// [`StoredHeaders`]), then the tags (see [`crate::tags::Packed`]).
    data: Bytes,
    /// A larger body, in its own buffer (copying it would cost more than the
    /// separate allocation saves).
    big_body: Option<Box<Bytes>>,
    pub born: Born,
    /// The purge generation when its origin request started (see `purge/mod.rs`).
    pub fetched_gen: u64,
    /// The request fields that selected this variant.
    pub variant: Variant,
    /// The last response head rendered for a fresh hit (see [`Self::rendering`]);
    /// none in a new or cloned entry.
    rendering: arc_swap::ArcSwapOption<Rendered>,
    lifetime_nanos: u64,
    body_len: u32,
    fields_len: u32,
    /// The directives Lacquer obeys for this response (targeted field or Cache-Control).
    pub directives: StoredDirectives,
    pub status: StatusCode,
    /// The age second of the last hit that found no rendering, plus one (0: none),
    /// truncated to 8 bits (a wrong match, 256 s later, costs one rendering).
    last_miss: AtomicU8,
    /// Set by a hit, cleared by the store's eviction hand passing by (CLOCK).
    pub(super) referenced: AtomicBool,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<StoredResponse>() == 112);

/// A cached rendering of the response head of a plain fresh hit: the stored headers
/// after `Proxy::finish` (targeted fields, Surrogate-Control and tag headers
/// removed, `Via` added) with `Age` and `Cache-Status`. `Age` and the `ttl` in
/// `Cache-Status` change once a second, so the rendering is reused while the
/// configuration generation, the age in seconds and the ttl are those it was made
/// for, and replaced otherwise. A hit then costs one `HeaderMap` clone instead of a
/// clone, three inserts, four removals and two renderings.
/// Only an entry hit twice within one second gets a rendering (a working set of
/// many objects, each rarely hit, would pay for renderings it never reuses).
struct Rendered {
    generation: u64,
    age: u64,
    ttl: i64,
    headers: HeaderMap,
}

impl From<Fetched> for StoredResponse {
    fn from(f: Fetched) -> StoredResponse {
        StoredResponse::pack(f)
    }
}

impl StoredResponse {
    /// A hit: set the CLOCK bit (read first, so a hot entry's cache line is not
    /// written on every hit).
    #[inline]
    pub(super) fn mark_referenced(&self) {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }

    /// The eviction hand passing by: was it hit since? Clears the bit.
    pub(super) fn take_referenced(&self) -> bool {
        self.referenced.swap(false, Ordering::Relaxed)
    }

    /// From now on expired (a soft purge judged on insert).
    pub(super) fn expire(&mut self) {
        self.lifetime_nanos = 0;
    }

    /// Packs a fetched response: one buffer for a small body, the fields and the tags.
    pub fn pack(f: Fetched) -> StoredResponse {
        let small = f.body.len() <= SMALL_BODY;
        let body: &[u8] = if small { &f.body } else { &[] };
        let tags: usize = f.tags.iter().map(|t| t.len() + 1).sum();
        let mut buf = Vec::with_capacity(body.len() + f.headers.buf.len() + tags);
        buf.extend_from_slice(body);
        buf.extend_from_slice(&f.headers.buf);
        let fields_len = buf.len() - body.len();
        crate::tags::pack(&f.tags, &mut buf);
        // A head is far below 4 GiB (max_header_bytes) and a small body is small.
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        StoredResponse {
            data: Bytes::from(buf),
            big_body: (!small).then(|| Box::new(f.body.clone())),
            born: f.born,
            fetched_gen: f.fetched_gen,
            variant: f.variant,
            rendering: Default::default(),
            lifetime_nanos: u64::try_from(f.lifetime.as_nanos()).unwrap_or(u64::MAX),
            body_len: at(body.len()),
            fields_len: at(fields_len),
            directives: f.directives,
            status: f.status,
            last_miss: AtomicU8::new(0),
            referenced: AtomicBool::new(false),
        }
    }

    /// The body (a slice of the entry's buffer, or its own buffer if large).
    pub fn body(&self) -> Bytes {
        match &self.big_body {
            Some(body) => (**body).clone(),
            None => self
                .data
                .slice(..(self.body_len as usize).min(self.data.len())),
        }
    }

    pub fn body_len(&self) -> usize {
        match &self.big_body {
            Some(body) => body.len(),
            None => self.body_len as usize,
        }
    }

    fn fields_range(&self) -> std::ops::Range<usize> {
        let start = (self.body_len as usize).min(self.data.len());
        start..(start + self.fields_len as usize).min(self.data.len())
    }

    /// End-to-end header fields as received (hop-by-hop fields and `Age` removed).
    pub fn headers(&self) -> StoredHeaders {
        StoredHeaders {
            buf: self.data.slice(self.fields_range()),
        }
    }

    /// Surrogate keys (tags) of this response.
    pub fn tags(&self) -> crate::tags::Packed<'_> {
        crate::tags::Packed::new(self.data.get(self.fields_range().end..).unwrap_or_default())
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_nanos(self.lifetime_nanos)
    }

    /// The same response with another lifetime and purge generation (a soft purge
    /// makes it stale).
    pub fn restamped(&self, lifetime: Duration, fetched_gen: u64) -> StoredResponse {
        StoredResponse {
            lifetime_nanos: u64::try_from(lifetime.as_nanos()).unwrap_or(u64::MAX),
            fetched_gen,
            ..self.clone()
        }
    }

    /// Approximate memory held by this entry.
    pub fn weight(&self) -> usize {
        self.data.len()
            + self.big_body.as_ref().map_or(0, |b| b.len() + 32)
            + self.variant.weight()
            + std::mem::size_of::<StoredResponse>()
    }

    pub fn age(&self, now: SystemTime) -> Duration {
        self.born.age(now)
    }

    /// The head rendered for exactly these inputs, if that is what is cached.
    pub fn rendering(&self, generation: u64, age: u64, ttl: i64) -> Option<HeaderMap> {
        let guard = self.rendering.load();
        match guard.as_deref() {
            Some(r) if r.generation == generation && r.age == age && r.ttl == ttl => {
                Some(r.headers.clone())
            }
            _ => None,
        }
    }

    /// Is a rendering worth keeping: was this entry already hit in this second?
    pub fn rendering_wanted(&self, age: u64) -> bool {
        let mark = (age as u8).wrapping_add(1);
        self.last_miss.swap(mark, Ordering::Relaxed) == mark
    }

    pub fn keep_rendering(&self, generation: u64, age: u64, ttl: i64, headers: HeaderMap) {
        self.rendering.store(Some(Arc::new(Rendered {
            generation,
            age,
            ttl,
            headers,
        })));
    }
}

/// A clone is a different entry (a soft-purged copy): it starts without a rendering.
impl Clone for StoredResponse {
    fn clone(&self) -> StoredResponse {
        StoredResponse {
            data: self.data.clone(),
            big_body: self.big_body.clone(),
            born: self.born,
            fetched_gen: self.fetched_gen,
            variant: self.variant.clone(),
            rendering: Default::default(),
            lifetime_nanos: self.lifetime_nanos,
            body_len: self.body_len,
            fields_len: self.fields_len,
            directives: self.directives,
            status: self.status,
            last_miss: AtomicU8::new(0),
            referenced: AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredResponse")
            .field("status", &self.status)
            .field("headers", &self.headers())
            .field("body_len", &self.body_len())
            .field("born", &self.born)
            .field("lifetime", &self.lifetime())
            .field("directives", &self.directives)
            .field("variant", &self.variant)
            .field("tags", &self.tags())
            .field("fetched_gen", &self.fetched_gen)
            .finish()
    }
}

/// The stored header fields of a response: each name and each value followed by a
/// NUL byte, in one buffer of exactly that size (neither a name nor a value can hold
/// a NUL: RFC 9110 §5.5). A `HeaderMap` keeps index and bucket tables sized for
/// growth (624 bytes for 5 fields, measured by the purge bench); this keeps the bytes
/// and 2 more per field. Values as hyper parses them are slices of the connection's
/// read buffer, so storing them as they are would also keep that whole buffer (8 KiB
/// or more) alive with the entry: the copy here never does. Requests that need the
/// fields as a map (a rendering, a 304, a range, a revalidation) build one with
/// [`StoredHeaders::to_map`], whose values share this buffer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoredHeaders {
    pub(super) buf: bytes::Bytes,
}

impl StoredHeaders {
    /// The fields of `headers`, in order. A value holding a NUL (which no parser
    /// lets through) is left out rather than stored misaligned.
    pub fn from_map(headers: &HeaderMap) -> StoredHeaders {
        let total: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 2)
            .sum();
        let mut buf = Vec::with_capacity(total);
        for (name, value) in headers {
            if value.as_bytes().contains(&0) {
                continue;
            }
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.push(0);
            buf.extend_from_slice(value.as_bytes());
            buf.push(0);
        }
        StoredHeaders {
            buf: bytes::Bytes::from(buf),
        }
    }

    /// The fields as (name, value) byte strings, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans()
            .filter_map(|(name, value)| self.buf.get(name).zip(self.buf.get(value)))
    }

    /// Where each field's name and value are in the buffer.
    fn spans(&self) -> impl Iterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>)> + '_ {
        let mut at = 0usize;
        std::iter::from_fn(move || {
            let rest = self.buf.get(at..)?;
            let name_end = at + rest.iter().position(|&b| b == 0)?;
            let value_end =
                name_end + 1 + self.buf.get(name_end + 1..)?.iter().position(|&b| b == 0)?;
            let field = (at..name_end, name_end + 1..value_end);
            at = value_end + 1;
            Some(field)
        })
    }

    /// The fields as a map; the values share this buffer (no copy).
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len());
        for (name, value) in self.spans() {
            let name = self
                .buf
                .get(name)
                .and_then(|n| http::HeaderName::from_bytes(n).ok());
            let value = HeaderValue::from_maybe_shared(self.buf.slice(value)).ok();
            if let (Some(name), Some(value)) = (name, value) {
                map.append(name, value);
            }
        }
        map
    }

    pub fn get(&self, name: &http::HeaderName) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| *n == name.as_str().as_bytes())
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.buf.iter().filter(|&&b| b == 0).count() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Heap bytes held (for the store's weights).
    pub fn heap_bytes(&self) -> usize {
        self.buf.len()
    }
}

/// Bodies up to this size share their entry's buffer (see [`StoredResponse`]); a
/// larger body's own allocation is noise beside it.
pub(super) const SMALL_BODY: usize = 4096;

impl From<HeaderMap> for StoredHeaders {
    fn from(headers: HeaderMap) -> StoredHeaders {
        StoredHeaders::from_map(&headers)
    }
}

impl std::fmt::Debug for StoredHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}
