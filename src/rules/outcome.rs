//! A request's cache outcome as one value. `Cache-Status` (RFC 9211), the access
//! log and (later) the metrics are all rendered from it, so "why was this not
//! cached?" has one answer in one place.

use std::fmt::Write as _;

use http::HeaderValue;

use crate::freshness::NotStored;

/// Why the request went forward to the origin (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Configured or method-based bypass (not a cacheable method).
    Method,
    /// Nothing stored under the key.
    UriMiss,
    /// Something stored, but no variant matched the request's headers.
    VaryMiss,
    /// The request's own directives forced going forward.
    Request,
    /// The stored response was stale (or `no-cache`) and needed validation.
    Stale,
    /// A range request on a miss: forwarded as is.
    Partial,
}

impl Fwd {
    pub fn as_str(self) -> &'static str {
        match self {
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
            Fwd::Partial => "partial",
        }
    }
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the store without contacting the origin.
    Hit { stale: bool },
    /// Went to the origin. `stored` says whether the response (or its refreshed
    /// headers, after a 304) went into the store; `not_stored` says why not;
    /// `collapsed` that this request waited on another request's fetch.
    Forward {
        fwd: Fwd,
        fwd_status: u16,
        stored: bool,
        not_stored: Option<NotStored>,
        collapsed: bool,
    },
    /// Stale content served at once while one background revalidation runs (RFC 5861 §3).
    StaleWhileRevalidate,
    /// Stale content served because the origin failed (RFC 5861 §4).
    StaleIfError { fwd: Fwd, detail: &'static str },
    /// The origin could not be reached or did not answer in time.
    OriginError { fwd: Fwd, detail: &'static str },
    /// `only-if-cached` and nothing usable is stored (RFC 9111 §5.2.1.7).
    OnlyIfCached,
}

impl Outcome {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Hit { stale: false } => "hit",
            Outcome::Hit { stale: true } => "stale-hit",
            Outcome::Forward {
                fwd: Fwd::Method, ..
            } => "pass",
            Outcome::Forward {
                collapsed: true, ..
            } => "coalesced",
            Outcome::Forward {
                fwd: Fwd::Stale,
                fwd_status: 304,
                ..
            } => "revalidated",
            Outcome::Forward { .. } => "miss",
            Outcome::StaleWhileRevalidate => "stale-swr",
            Outcome::StaleIfError { .. } => "stale-sie",
            Outcome::OriginError { .. } => "origin-error",
            Outcome::OnlyIfCached => "only-if-cached",
        }
    }

    /// A forward that stored nothing (`not_stored` says why, when there is a why).
    pub fn forwarded(fwd: Fwd, fwd_status: u16, not_stored: Option<NotStored>) -> Outcome {
        Outcome::Forward {
            fwd,
            fwd_status,
            stored: false,
            not_stored,
            collapsed: false,
        }
    }

    /// Our member of the `Cache-Status` list, e.g. `lacquer; fwd=uri-miss; fwd-status=200; stored; ttl=60`.
    /// `ttl` is the remaining freshness of what is (now) stored, in seconds.
    pub fn cache_status(&self, cache_name: &str, ttl: Option<i64>) -> String {
        let mut s = String::with_capacity(64);
        s.push_str(cache_name);
        match self {
            Outcome::Hit { .. } => s.push_str("; hit"),
            Outcome::Forward {
                fwd,
                fwd_status,
                stored,
                not_stored,
                collapsed,
            } => {
                let _ = write!(s, "; fwd={}; fwd-status={}", fwd.as_str(), fwd_status);
                if *stored {
                    s.push_str("; stored");
                }
                if *collapsed {
                    s.push_str("; collapsed");
                }
                if let Some(reason) = not_stored {
                    let _ = write!(s, "; detail={}", reason.as_str());
                }
            }
            Outcome::OriginError { fwd, detail } => {
                let _ = write!(s, "; fwd={}; detail={}", fwd.as_str(), detail);
            }
            Outcome::OnlyIfCached => s.push_str("; detail=only-if-cached"),
            Outcome::StaleWhileRevalidate => {
                s.push_str("; fwd=stale; detail=stale-while-revalidate")
            }
            Outcome::StaleIfError { fwd, detail } => {
                let _ = write!(
                    s,
                    "; fwd={}; detail=stale-if-error-{}",
                    fwd.as_str(),
                    detail
                );
            }
        }
        // A ttl tells what is stored: nothing, when a forward stored nothing.
        let stored_nothing = matches!(self, Outcome::Forward { stored: false, .. });
        if let Some(ttl) = ttl.filter(|_| !stored_nothing) {
            let _ = write!(s, "; ttl={ttl}");
        }
        s
    }

    /// The complete `Cache-Status` value: upstream members first, ours last (§2).
    pub fn cache_status_header(
        &self,
        upstream: Option<&HeaderValue>,
        cache_name: &str,
        ttl: Option<i64>,
    ) -> Option<HeaderValue> {
        let ours = self.cache_status(cache_name, ttl);
        let value = match upstream
            .and_then(|u| u.to_str().ok())
            .filter(|u| !u.trim().is_empty())
        {
            Some(up) => format!("{up}, {ours}"),
            None => ours,
        };
        HeaderValue::from_str(&value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9211_members() {
        assert_eq!(
            Outcome::Hit { stale: false }.cache_status("lacquer", Some(42)),
            "lacquer; hit; ttl=42"
        );
        let miss = Outcome::Forward {
            fwd: Fwd::UriMiss,
            fwd_status: 200,
            stored: true,
            not_stored: None,
            collapsed: false,
        };
        assert_eq!(
            miss.cache_status("lacquer", Some(60)),
            "lacquer; fwd=uri-miss; fwd-status=200; stored; ttl=60"
        );
        let reval = Outcome::Forward {
            fwd: Fwd::Stale,
            fwd_status: 304,
            stored: true,
            not_stored: None,
            collapsed: false,
        };
        assert_eq!(
            reval.cache_status("lacquer", Some(60)),
            "lacquer; fwd=stale; fwd-status=304; stored; ttl=60"
        );
        assert_eq!(reval.label(), "revalidated");
        let private = Outcome::Forward {
            fwd: Fwd::UriMiss,
            fwd_status: 200,
            stored: false,
            not_stored: Some(NotStored::Private),
            collapsed: false,
        };
        assert_eq!(
            private.cache_status("lacquer", None),
            "lacquer; fwd=uri-miss; fwd-status=200; detail=private"
        );
        let up = HeaderValue::from_static("origin-cache; hit");
        let v = Outcome::Hit { stale: true }
            .cache_status_header(Some(&up), "lacquer", Some(-3))
            .unwrap();
        assert_eq!(v, "origin-cache; hit, lacquer; hit; ttl=-3");
        // Every rendering must be a valid structured-field list (RFC 9211 §2).
        for o in [
            miss,
            reval,
            private,
            Outcome::OnlyIfCached,
            Outcome::OriginError {
                fwd: Fwd::UriMiss,
                detail: "timeout",
            },
        ] {
            let s = o.cache_status("lacquer", Some(-1));
            let parsed: Result<sfv::List, _> = sfv::Parser::new(&s).parse();
            assert!(parsed.is_ok(), "{s}");
        }
    }
}
