//! `lacquer purge` and `lacquer verify`: the command line for pipelines.
//!
//! `purge` POSTs a [`Purge`] to the admin API (`{endpoint}/purge`) with a bearer token
//! read from an environment variable. Connection failures, timeouts and 5xx answers
//! are retried with exponential backoff under one request id, so a retry of a purge
//! the server did apply is answered from its idempotency record instead of purging
//! twice; 4xx answers are never retried. `verify` polls a URL with plain GETs (what
//! ordinary clients send) until an expected ETag, header or body text is served.
//!
//! Exit codes, both commands ([`Exit`]): 0 done, 1 refused (purge) or not served
//! in time (verify), 2 usage, 3 unreachable.
//!
//! The decisions are small pure functions (validation, backoff schedule, answer
//! classification, expectation matching, output formatting) so unit tests can reach
//! them; [`purge`] and [`verify`] only add the network and the clock.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{ArgGroup, Args};
use http::header::{
    HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, ETAG, USER_AGENT,
};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::purge::Purge;

/// A [`UsageError`] from `format!` arguments.
macro_rules! usage {
    ($($arg:tt)*) => {
        UsageError(format!($($arg)*))
    };
}

/// What a command line (or an answer to it) that the tool cannot act on is: the text
/// says why. Reads as its text (`Deref<Target = str>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl std::ops::Deref for UsageError {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for UsageError {
    fn from(text: String) -> UsageError {
        UsageError(text)
    }
}

impl From<crate::purge::InvalidPurge> for UsageError {
    fn from(e: crate::purge::InvalidPurge) -> UsageError {
        UsageError(e.0)
    }
}

impl From<&str> for UsageError {
    fn from(text: &str) -> UsageError {
        UsageError(text.to_string())
    }
}

/// The exit status of `purge` and `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Purge applied (or dry run answered); verify: the expected content is served.
    Done = 0,
    /// Purge refused (401, 403, 400, any 4xx, or an answer that is not a purge
    /// report); verify: the expected content was not served before the timeout.
    Refused = 1,
    /// Bad arguments, missing token variable, nothing to purge.
    Usage = 2,
    /// No answer (connection failures, timeouts, 5xx) after every attempt.
    Unreachable = 3,
    /// Purge applied, but with `--wait` not every node of the fleet confirmed it in
    /// time (they are named).
    Unconfirmed = 4,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

const PURGE_HELP: &str = "\
Exit status: 0 done, 1 refused (401/403/400 or any 4xx: the server's message is printed),
2 usage (bad arguments, token variable not set, nothing to purge), 3 unreachable
(connection failures, timeouts or 5xx after every retry), 4 applied but with --wait not
confirmed by every node of the fleet in time (the nodes are named).

Retries reuse one request id (generated when --request-id is absent), so a purge that
did happen is answered from the server's record instead of being applied twice.";

const VERIFY_HELP: &str = "\
Exit status: 0 the expected content is served, 1 it was not before the timeout (what was
last seen is printed), 2 usage, 3 the URL never answered at all.

Sends plain GETs, as ordinary clients do (no Cache-Control), so it sees what they get.
A 4xx or 5xx answer never counts as the expected content. ETags are compared weakly:
`v2`, `\"v2\"` and `W/\"v2\"` all match a served `\"v2\"` or `W/\"v2\"`.";

/// `lacquer purge`.
#[derive(Debug, Clone, Args)]
#[command(after_help = PURGE_HELP)]
pub struct PurgeArgs {
    /// Admin API root, e.g. `http://127.0.0.1:8080/.lacquer` (POSTs to `{URL}/purge`).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    /// Environment variable holding the bearer token (never the token itself).
    #[arg(long, value_name = "VAR")]
    pub token_env: String,
    /// Purge every entry carrying this tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Purge every variant stored for this absolute URL (repeatable).
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Purge everything under `host/path-prefix` (repeatable).
    #[arg(long = "prefix", value_name = "PREFIX")]
    pub prefixes: Vec<String>,
    /// Purge everything (needs a token with the break-glass scope).
    #[arg(long)]
    pub all: bool,
    /// Mark stale instead of evicting.
    #[arg(long)]
    pub soft: bool,
    /// Report what would be purged; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// In a fleet: wait until every node that is alive has applied the purge, at
    /// most this long (e.g. `2s`).
    #[arg(long, value_name = "DURATION", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// Idempotency id (default: generated from time, pid and a random number).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Retries after the first attempt (connection failures, timeouts, 5xx).
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: u32,
    /// Seconds each attempt may take.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// `lacquer verify`.
#[derive(Debug, Clone, Args)]
#[command(after_help = VERIFY_HELP)]
#[command(group(
    ArgGroup::new("expectation")
        .required(true)
        .multiple(false)
        .args(["expect_etag", "expect_header", "expect_body_contains"])
))]
pub struct VerifyArgs {
    /// The URL to poll (through the proxy), e.g. `http://127.0.0.1:8080/products/1`.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Wait until this ETag is served.
    #[arg(long, value_name = "ETAG")]
    pub expect_etag: Option<String>,
    /// Wait until this response header has this value (`Name:Value`).
    #[arg(long, value_name = "NAME:VALUE")]
    pub expect_header: Option<String>,
    /// Wait until the body contains this text.
    #[arg(long, value_name = "TEXT")]
    pub expect_body_contains: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    /// Pause between attempts, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub interval_ms: u64,
}

// ---------------------------------------------------------------------------------
// Pure parts: purge.

/// First pause between attempts; it doubles up to [`BACKOFF_CAP`].
pub const BACKOFF_START: Duration = Duration::from_millis(200);
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// The pause before retry number `retry` (0 for the first retry): 200 ms doubling,
/// capped at 5 s.
pub fn backoff(retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
    BACKOFF_START.saturating_mul(factor).min(BACKOFF_CAP)
}

/// What to do with an answer of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Done,
    /// Never retried: the same request would be refused again.
    Refused,
    Retry,
}

pub fn classify(status: StatusCode) -> Answer {
    if status.is_success() {
        Answer::Done
    } else if status.is_server_error() {
        Answer::Retry
    } else {
        Answer::Refused
    }
}

/// An `http://` URL (this client speaks no TLS). `flag` names the argument.
fn http_uri(flag: &str, text: &str) -> Result<Uri, UsageError> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("{flag} {text:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(usage!(
            "{flag} {text:?}: https is not supported by this client; use the proxy's http listener"
        ))
        }
        _ => return Err(usage!("{flag} {text:?} must be an absolute http:// URL")),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(usage!("{flag} {text:?} has no host"));
    }
    Ok(uri)
}

/// `{endpoint}/purge` (one slash between them, whatever the endpoint ends with).
pub fn purge_uri(endpoint: &str) -> Result<Uri, UsageError> {
    let uri = http_uri("--endpoint", endpoint)?;
    if uri.query().is_some() {
        return Err(usage!(
            "--endpoint {endpoint:?}: give the admin root, without a query"
        ));
    }
    let authority = uri.authority().map_or("", |a| a.as_str());
    let root = uri.path().trim_end_matches('/');
    format!("http://{authority}{root}/purge")
        .parse()
        .map_err(|_| usage!("--endpoint {endpoint:?} is not a URL"))
}

/// A fresh request id: seconds since the epoch, process id, 64 random bits.
pub fn new_request_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "lacquer-cli-{secs}-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    )
}

/// The purge the arguments describe, checked the way the server will check it.
pub fn purge_from_args(args: &PurgeArgs, request_id: String) -> Result<Purge, UsageError> {
    let purge = Purge {
        tags: args.tags.clone(),
        urls: args.urls.clone(),
        prefixes: args.prefixes.clone(),
        all: args.all,
        soft: args.soft,
        dry_run: args.dry_run,
        request_id: Some(request_id),
        wait: args.wait,
    };
    if purge.items() == 0 {
        return Err("nothing to purge: give --tag, --url, --prefix or --all".into());
    }
    for url in &purge.urls {
        let uri: Option<Uri> = url.parse().ok();
        let absolute = uri.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        });
        if !absolute {
            return Err(usage!("--url {url:?} is not an absolute http(s) URL"));
        }
    }
    // The server's own limit (`admin.max_batch`) is checked there.
    purge.validate(usize::MAX)?;
    Ok(purge)
}

/// `Bearer <secret>` from the environment variable `var`, marked sensitive.
pub fn bearer_token(
    var: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(HeaderValue, String), UsageError> {
    if var.is_empty() {
        return Err("--token-env needs the name of an environment variable".into());
    }
    let secret =
        env(var).ok_or_else(|| format!("environment variable `{var}` (--token-env) is not set"))?;
    let secret = secret.trim().to_string();
    if secret.is_empty() {
        return Err(usage!(
            "environment variable `{var}` (--token-env) is empty"
        ));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| {
        format!("environment variable `{var}` holds characters not allowed in a header")
    })?;
    value.set_sensitive(true);
    Ok((value, secret))
}

/// Everything one purge attempt sends. No `Debug`: it holds the token.
pub struct PurgeRequest {
    pub uri: Uri,
    pub purge: Purge,
    pub body: Bytes,
    authorization: HeaderValue,
    secret: String,
}

impl PurgeRequest {
    /// `text` with the secret, should anything ever echo it, blanked out.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.secret, "[redacted]")
    }
}

/// Checks the arguments and reads the token: every usage error (exit 2) is found here,
/// before the network is touched.
pub fn prepare_purge(
    args: &PurgeArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<PurgeRequest, UsageError> {
    let uri = purge_uri(&args.endpoint)?;
    let request_id = args.request_id.clone().unwrap_or_else(new_request_id);
    let purge = purge_from_args(args, request_id)?;
    let (authorization, secret) = bearer_token(&args.token_env, env)?;
    let body = serde_json::to_vec(&purge)
        .map_err(|e| e.to_string())?
        .into();
    Ok(PurgeRequest {
        uri,
        purge,
        body,
        authorization,
        secret,
    })
}

/// The message of a refusal: the `error` of lacquer's JSON, else the start of the
/// body, else the status's reason.
pub fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return e.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string();
    }
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// An error with its causes (`client error (Connect): tcp connect error: Connection
/// refused`): the top-level text of hyper's errors alone says little.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let t = cause.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = cause.source();
    }
    text
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The human summary of a successful purge answer (`{"request_id", "token",
/// "report"}`).
pub fn format_report(answer: &serde_json::Value, replayed: bool) -> String {
    let report = &answer["report"];
    let dry_run = report["dry_run"].as_bool().unwrap_or(false);
    let soft = report["soft"].as_bool().unwrap_or(false);
    let mut out = String::new();
    let _ = if dry_run {
        writeln!(
            out,
            "dry run: nothing purged; would {}purge:",
            if soft { "soft-" } else { "" }
        )
    } else if soft {
        writeln!(
            out,
            "soft-purged (marked stale), generation {}:",
            report["generation"].as_u64().unwrap_or(0)
        )
    } else {
        writeln!(
            out,
            "purged, generation {}:",
            report["generation"].as_u64().unwrap_or(0)
        )
    };
    let entries = |n: u64| plural(n, "entry", "entries");
    if let Some(tags) = report["tags"].as_object() {
        for (tag, n) in tags {
            let _ = writeln!(out, "  tag {tag}: {}", entries(n.as_u64().unwrap_or(0)));
        }
    }
    if let Some(urls) = report["urls"].as_object() {
        for (url, n) in urls {
            let n = n.as_u64().unwrap_or(0);
            let _ = writeln!(out, "  url {url}: {}", plural(n, "variant", "variants"));
        }
    }
    if let Some(prefixes) = report["prefixes"].as_object() {
        for (prefix, n) in prefixes {
            let _ = match n.as_u64() {
                Some(n) => writeln!(out, "  prefix {prefix}: {}", entries(n)),
                None => writeln!(out, "  prefix {prefix}: not counted (a --dry-run counts)"),
            };
        }
    }
    if let Some(n) = report["all"].as_u64() {
        let _ = writeln!(out, "  everything: {}", entries(n));
    }
    let _ = writeln!(
        out,
        "token {}, request id {}",
        answer["token"].as_str().unwrap_or("?"),
        answer["request_id"].as_str().unwrap_or("(none)")
    );
    if replayed {
        let _ = writeln!(
            out,
            "(replayed: the server had already applied this request id; these are its first figures)"
        );
    }
    let fleet = &answer["fleet"];
    if let Some(id) = fleet["id"].as_str() {
        let nodes: Vec<String> = fleet["nodes"]
            .as_object()
            .map(|n| {
                n.iter()
                    .map(|(node, state)| format!("{node} {}", state.as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default();
        let _ = match fleet["complete"].as_bool() {
            Some(true) => writeln!(
                out,
                "fleet: entry {id}, applied by every node: {}",
                nodes.join(", ")
            ),
            Some(false) => writeln!(
                out,
                "fleet: entry {id}, NOT confirmed by every node: {}",
                nodes.join(", ")
            ),
            None => writeln!(
                out,
                "fleet: entry {id} (no --wait: other nodes apply it from the bus)"
            ),
        };
    }
    out
}

// ---------------------------------------------------------------------------------
// Pure parts: verify.

/// What `verify` waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    Etag(String),
    Header(HeaderName, String),
    BodyContains(String),
}

impl Expectation {
    /// Exactly one of the three (clap enforces it too; this also checks the values).
    pub fn from_args(
        etag: Option<&str>,
        header: Option<&str>,
        body: Option<&str>,
    ) -> Result<Expectation, UsageError> {
        match (etag, header, body) {
            (Some(etag), None, None) => {
                let etag = etag.trim();
                if etag.is_empty() {
                    return Err("--expect-etag needs a value".into());
                }
                Ok(Expectation::Etag(etag.to_string()))
            }
            (None, Some(header), None) => {
                let (name, value) = header
                    .split_once(':')
                    .ok_or_else(|| format!("--expect-header {header:?} must be `Name:Value`"))?;
                let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                    format!(
                        "--expect-header {header:?}: {:?} is not a header name",
                        name.trim()
                    )
                })?;
                Ok(Expectation::Header(name, value.trim().to_string()))
            }
            (None, None, Some(text)) => {
                if text.is_empty() {
                    return Err("--expect-body-contains needs a non-empty text".into());
                }
                Ok(Expectation::BodyContains(text.to_string()))
            }
            _ => Err(
                "give exactly one of --expect-etag, --expect-header, --expect-body-contains".into(),
            ),
        }
    }

    pub fn needs_body(&self) -> bool {
        matches!(self, Expectation::BodyContains(_))
    }

    pub fn describe(&self) -> String {
        match self {
            Expectation::Etag(e) => format!("ETag {e}"),
            Expectation::Header(name, value) => format!("header {name}: {value}"),
            Expectation::BodyContains(text) => format!("a body containing {text:?}"),
        }
    }

    /// Does this answer carry the expected content? 4xx and 5xx answers never do.
    pub fn holds(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
        if status.is_client_error() || status.is_server_error() {
            return false;
        }
        match self {
            Expectation::Etag(want) => headers
                .get_all(ETAG)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|got| etag_matches(want, got)),
            Expectation::Header(name, want) => headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|got| got.trim() == want)),
            Expectation::BodyContains(text) => contains(body, text.as_bytes()),
        }
    }
}

/// Weak comparison (RFC 9110 §8.8.3.2), quotes optional on the expected side.
pub fn etag_matches(expected: &str, served: &str) -> bool {
    fn opaque(tag: &str) -> &str {
        let tag = tag.trim();
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        tag.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(tag)
    }
    opaque(expected) == opaque(served)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// What one answer looked like, for the messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub status: StatusCode,
    pub etag: Option<String>,
    pub cache_status: Option<String>,
    /// The expected header's value(s), for `--expect-header`.
    pub header: Option<(HeaderName, Option<String>)>,
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

impl Observation {
    pub fn of(status: StatusCode, headers: &HeaderMap, expectation: &Expectation) -> Observation {
        Observation {
            status,
            etag: joined(headers, &ETAG),
            cache_status: joined(headers, &HeaderName::from_static("cache-status")),
            header: match expectation {
                Expectation::Header(name, _) => Some((name.clone(), joined(headers, name))),
                _ => None,
            },
        }
    }

    /// `status 200 OK, ETag "v1", Cache-Status: lacquer; hit; ttl=290`.
    pub fn describe(&self) -> String {
        let mut out = format!("status {}", self.status);
        let _ = write!(out, ", ETag {}", self.etag.as_deref().unwrap_or("(none)"));
        if let Some((name, value)) = &self.header {
            let _ = write!(out, ", {name}: {}", value.as_deref().unwrap_or("(absent)"));
        }
        let _ = write!(
            out,
            ", Cache-Status: {}",
            self.cache_status.as_deref().unwrap_or("(none)")
        );
        out
    }
}

fn attempts_text(n: u32) -> String {
    plural(u64::from(n), "attempt", "attempts")
}

/// The success line of `verify`.
pub fn format_verified(
    expectation: &Expectation,
    url: &str,
    attempts: u32,
    elapsed: Duration,
    seen: &Observation,
) -> String {
    format!(
        "verified: {} served by {url} after {} ({:.1} s): {}",
        expectation.describe(),
        attempts_text(attempts),
        elapsed.as_secs_f64(),
        seen.describe()
    )
}

/// The failure line of `verify` when the URL answered but never as expected.
pub fn format_not_verified(
    expectation: &Expectation,
    url: &str,
    timeout_secs: u64,
    attempts: u32,
    last_seen: &Observation,
    last_error: Option<&str>,
) -> String {
    let mut out = format!(
        "not verified: {} not served by {url} within {timeout_secs} s ({}); last seen: {}",
        expectation.describe(),
        attempts_text(attempts),
        last_seen.describe()
    );
    if let Some(e) = last_error {
        let _ = write!(out, "; the last attempt failed: {e}");
    }
    out
}

// ---------------------------------------------------------------------------------
// The network.

/// Largest answer read (purge report, or body searched by `verify`).
const MAX_ANSWER: usize = 32 * 1024 * 1024;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

struct Answered {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// One exchange; `Err` is a transport failure (connect, reset, broken body). With
/// `body_required == false` an oversized body is skipped instead of failing.
async fn exchange(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    body_required: bool,
) -> Result<Answered, UsageError> {
    let res = client.request(req).await.map_err(|e| error_chain(&e))?;
    let (parts, body) = res.into_parts();
    let body = match Limited::new(body, MAX_ANSWER).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) if !body_required => Bytes::new(),
        Err(e) => return Err(usage!("reading the answer: {}", error_chain(&*e))),
    };
    Ok(Answered {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn purge_http_request(req: &PurgeRequest) -> Result<Request<Full<Bytes>>, UsageError> {
    Request::builder()
        .method(Method::POST)
        .uri(req.uri.clone())
        .header(AUTHORIZATION, req.authorization.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, concat!("lacquer/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(req.body.clone()))
        .map_err(|e| UsageError(e.to_string()))
}

/// `lacquer purge`: reads the token from the environment, sends the purge, retries,
/// prints the outcome. Never prints the token.
pub async fn purge(args: PurgeArgs) -> Exit {
    let req = match prepare_purge(&args, |var| std::env::var(var).ok()) {
        Ok(r) => r,
        Err(message) => {
            eprintln!("lacquer purge: {message}");
            return Exit::Usage;
        }
    };
    let client = http_client();
    let attempts = args.retries.saturating_add(1);
    let per_attempt = Duration::from_secs(args.timeout);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let http_req = match purge_http_request(&req) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("lacquer purge: {e}");
                return Exit::Usage;
            }
        };
        let problem =
            match tokio::time::timeout(per_attempt, exchange(&client, http_req, true)).await {
                Err(_) => format!("no answer within {} s", args.timeout),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(answer)) => match classify(answer.status) {
                    Answer::Done => return purge_done(&args, &req, &answer),
                    Answer::Refused => {
                        let message = req.redact(&error_message(answer.status, &answer.body));
                        eprintln!("lacquer purge: refused ({}): {message}", answer.status);
                        return Exit::Refused;
                    }
                    Answer::Retry => format!(
                        "server error ({}): {}",
                        answer.status,
                        req.redact(&error_message(answer.status, &answer.body))
                    ),
                },
            };
        if attempt >= attempts {
            eprintln!(
                "lacquer purge: {} unreachable after {}: {problem}",
                req.uri,
                attempts_text(attempts)
            );
            return Exit::Unreachable;
        }
        let pause = backoff(attempt - 1);
        eprintln!(
            "lacquer purge: attempt {attempt}/{attempts} failed ({problem}); retrying in {} ms",
            pause.as_millis()
        );
        tokio::time::sleep(pause).await;
    }
}

fn purge_done(args: &PurgeArgs, req: &PurgeRequest, answer: &Answered) -> Exit {
    let value = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .filter(|v| v.get("report").is_some_and(|r| r.is_object()) || v.get("fleet").is_some());
    let Some(value) = value else {
        eprintln!(
            "lacquer purge: {} answered {} but not with a purge report; is --endpoint the admin root (e.g. http://127.0.0.1:8080/.lacquer)?",
            req.uri, answer.status
        );
        return Exit::Refused;
    };
    let replayed = answer
        .headers
        .get("lacquer-idempotent-replay")
        .is_some_and(|v| v == "true");
    if args.json {
        println!(
            "{}",
            req.redact(String::from_utf8_lossy(&answer.body).trim_end())
        );
        if replayed {
            eprintln!(
                "lacquer purge: replayed: request id already applied; these are its first figures"
            );
        }
    } else {
        print!("{}", req.redact(&format_report(&value, replayed)));
    }
    if let Some(missing) = unconfirmed(&value) {
        eprintln!("lacquer purge: not confirmed by every node in time: {missing}");
        return Exit::Unconfirmed;
    }
    Exit::Done
}

/// With a fleet wait that ran out: the nodes that did not confirm, and why
/// (`edge-2 (pending), edge-3 (down)`).
pub fn unconfirmed(answer: &serde_json::Value) -> Option<String> {
    let fleet = answer.get("fleet")?;
    if fleet.get("complete")?.as_bool()? {
        return None;
    }
    let nodes = fleet.get("nodes")?.as_object()?;
    let missing: Vec<String> = nodes
        .iter()
        .filter(|(_, state)| state.as_str() != Some("applied"))
        .map(|(node, state)| format!("{node} ({})", state.as_str().unwrap_or("?")))
        .collect();
    Some(missing.join(", "))
}

/// The URL and expectation of `verify`, or the usage error.
pub fn prepare_verify(args: &VerifyArgs) -> Result<(Uri, Expectation), UsageError> {
    let uri = http_uri("--url", &args.url)?;
    let expectation = Expectation::from_args(
        args.expect_etag.as_deref(),
        args.expect_header.as_deref(),
        args.expect_body_contains.as_deref(),
    )?;
    Ok((uri, expectation))
}

/// The least an attempt at the deadline may take (so the last attempt is real).
const LAST_ATTEMPT_MIN: Duration = Duration::from_millis(250);

/// `lacquer verify`: plain GETs every `interval_ms` until the expectation holds or
/// `timeout` passes.
pub async fn verify(args: VerifyArgs) -> Exit {
    let (uri, expectation) = match prepare_verify(&args) {
        Ok(v) => v,
        Err(message) => {
            eprintln!("lacquer verify: {message}");
            return Exit::Usage;
        }
    };
    let client = http_client();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let interval = Duration::from_millis(args.interval_ms);
    let mut attempts = 0u32;
    let mut last_seen: Option<Observation> = None;
    let mut last_error: Option<String>;
    loop {
        attempts += 1;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(LAST_ATTEMPT_MIN);
        let req = Request::get(uri.clone())
            .body(Full::default())
            .expect("a GET of a parsed URI");
        match tokio::time::timeout(budget, exchange(&client, req, expectation.needs_body())).await {
            Err(_) => last_error = Some(format!("no answer within {} ms", budget.as_millis())),
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Ok(Ok(answer)) => {
                let seen = Observation::of(answer.status, &answer.headers, &expectation);
                if expectation.holds(answer.status, &answer.headers, &answer.body) {
                    println!(
                        "{}",
                        format_verified(
                            &expectation,
                            &args.url,
                            attempts,
                            started.elapsed(),
                            &seen
                        )
                    );
                    return Exit::Done;
                }
                last_seen = Some(seen);
                last_error = None;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
    match last_seen {
        Some(seen) => {
            eprintln!(
                "lacquer verify: {}",
                format_not_verified(
                    &expectation,
                    &args.url,
                    args.timeout,
                    attempts,
                    &seen,
                    last_error.as_deref()
                )
            );
            Exit::Refused
        }
        None => {
            eprintln!(
                "lacquer verify: {} unreachable: no answer in {} within {} s: {}",
                args.url,
                attempts_text(attempts),
                args.timeout,
                last_error.as_deref().unwrap_or("no attempt made")
            );
            Exit::Unreachable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(clap::Subcommand)]
    enum TestCommand {
        Purge(PurgeArgs),
        Verify(VerifyArgs),
    }

    fn purge_args(extra: &[&str]) -> Result<PurgeArgs, clap::Error> {
        let mut argv = vec![
            "lacquer",
            "purge",
            "--endpoint",
            "http://127.0.0.1:8080/.lacquer",
        ];
        argv.extend_from_slice(&["--token-env", "TOKEN"]);
        argv.extend_from_slice(extra);
        match TestCli::try_parse_from(argv)?.command {
            TestCommand::Purge(a) => Ok(a),
            TestCommand::Verify(_) => unreachable!(),
        }
    }

    fn verify_args(extra: &[&str]) -> Result<VerifyArgs, clap::Error> {
        let mut argv = vec!["lacquer", "verify", "--url", "http://127.0.0.1:8080/p/1"];
        argv.extend_from_slice(extra);
        match TestCli::try_parse_from(argv)?.command {
            TestCommand::Verify(a) => Ok(a),
            TestCommand::Purge(_) => unreachable!(),
        }
    }

    fn env_with_token(var: &str) -> Option<String> {
        (var == "TOKEN").then(|| "s3cret-s3cret-s3cret\n".to_string())
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        assert_eq!(Exit::Done.code(), 0);
        assert_eq!(Exit::Refused.code(), 1);
        assert_eq!(Exit::Usage.code(), 2);
        assert_eq!(Exit::Unreachable.code(), 3);
        assert_eq!(Exit::Unconfirmed.code(), 4);
    }

    #[test]
    fn backoff_doubles_from_200ms_and_is_capped() {
        let ms: Vec<u128> = (0..7).map(|r| backoff(r).as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(31), BACKOFF_CAP);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn only_5xx_is_retried() {
        assert_eq!(classify(StatusCode::OK), Answer::Done);
        for s in [400, 401, 403, 404, 408, 429] {
            assert_eq!(
                classify(StatusCode::from_u16(s).unwrap()),
                Answer::Refused,
                "{s}"
            );
        }
        assert_eq!(classify(StatusCode::MOVED_PERMANENTLY), Answer::Refused);
        for s in [500, 502, 503, 504] {
            assert_eq!(
                classify(StatusCode::from_u16(s).unwrap()),
                Answer::Retry,
                "{s}"
            );
        }
    }

    #[test]
    fn endpoint_gets_purge_appended_once() {
        for (endpoint, want) in [
            (
                "http://127.0.0.1:8080/.lacquer",
                "http://127.0.0.1:8080/.lacquer/purge",
            ),
            (
                "http://127.0.0.1:8080/.lacquer/",
                "http://127.0.0.1:8080/.lacquer/purge",
            ),
            ("http://admin:9090", "http://admin:9090/purge"),
            ("http://admin:9090/", "http://admin:9090/purge"),
        ] {
            assert_eq!(purge_uri(endpoint).unwrap().to_string(), want);
        }
        assert!(purge_uri("https://x/.lacquer")
            .unwrap_err()
            .contains("https"));
        assert!(purge_uri("ftp://x/").unwrap_err().contains("http://"));
        assert!(purge_uri("/.lacquer").is_err());
        assert!(purge_uri("not a url").is_err());
        assert!(purge_uri("http://x/.lacquer?a=1")
            .unwrap_err()
            .contains("query"));
    }

    #[test]
    fn purge_arguments_become_a_checked_purge() {
        let args = purge_args(&["--tag", "a", "--tag", "b", "--url", "http://s/p?q=1"]).unwrap();
        assert_eq!(args.retries, 4);
        assert_eq!(args.timeout, 10);
        let req = prepare_purge(&args, env_with_token).unwrap();
        assert_eq!(req.uri.to_string(), "http://127.0.0.1:8080/.lacquer/purge");
        assert_eq!(req.purge.tags, ["a", "b"]);
        let id = req.purge.request_id.clone().unwrap();
        assert!(id.starts_with("lacquer-cli-"), "{id}");
        // The body is what the admin API deserializes.
        let back: Purge = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(back, req.purge);
        // The trailing newline of the secret is not sent, and the header is sensitive.
        assert_eq!(req.authorization, "Bearer s3cret-s3cret-s3cret");
        assert!(req.authorization.is_sensitive());
        assert_eq!(req.redact("x s3cret-s3cret-s3cret y"), "x [redacted] y");

        let given =
            purge_args(&["--all", "--soft", "--dry-run", "--request-id", "deploy-7"]).unwrap();
        let req = prepare_purge(&given, env_with_token).unwrap();
        assert_eq!(req.purge.request_id.as_deref(), Some("deploy-7"));
        assert!(req.purge.all && req.purge.soft && req.purge.dry_run);
    }

    #[test]
    fn generated_request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn usage_errors_name_the_problem() {
        let err = |extra: &[&str], env: fn(&str) -> Option<String>| {
            prepare_purge(&purge_args(extra).unwrap(), env)
                .err()
                .expect("a usage error")
        };
        assert!(err(&[], env_with_token).contains("nothing to purge"));
        assert!(err(&["--soft"], env_with_token).contains("nothing to purge"));
        assert!(err(&["--tag", "a"], |_| None).contains("`TOKEN`"));
        assert!(err(&["--tag", "a"], |_| Some("  \n".into())).contains("empty"));
        assert!(err(&["--tag", "a"], |_| Some(
            "bad\u{1}secret-long-enough".into()
        ))
        .contains("not allowed"));
        assert!(err(&["--tag", "a b"], env_with_token).contains("tags[0]"));
        assert!(err(&["--url", "/relative"], env_with_token).contains("absolute"));
        assert!(err(&["--tag", "a", "--request-id", ""], env_with_token).contains("request_id"));
        // No error message ever carries the secret.
        let msg = err(&["--tag", "a"], |_| {
            Some("bad\u{1}secret-long-enough".into())
        });
        assert!(!msg.contains("secret-long-enough"), "{msg}");
        // clap's own checks (exit 2 as well).
        assert!(purge_args(&["--tag", "a", "--retries", "x"]).is_err());
        assert!(purge_args(&["--tag", "a", "--timeout", "0"]).is_err());
        assert!(TestCli::try_parse_from(["lacquer", "purge", "--tag", "a"]).is_err());
    }

    #[test]
    fn refusal_messages_come_from_the_server() {
        let body = br#"{"error": "tag \"x\" is outside the scope of token `ci`"}"#;
        assert_eq!(
            error_message(StatusCode::FORBIDDEN, body),
            "tag \"x\" is outside the scope of token `ci`"
        );
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, b"  no such thing\n"),
            "no such thing"
        );
        assert_eq!(error_message(StatusCode::UNAUTHORIZED, b""), "Unauthorized");
        let long = "x".repeat(1000);
        assert_eq!(
            error_message(StatusCode::BAD_REQUEST, long.as_bytes())
                .chars()
                .count(),
            301
        );
    }

    #[test]
    fn report_summary_lists_every_item() {
        let answer = serde_json::json!({
            "request_id": "deploy-7",
            "token": "ci",
            "report": {
                "tags": {"campaign:summer": 3, "product:1": 1},
                "urls": {"http://shop/p/1": 2},
                "prefixes": {"shop/p/": null},
                "all": null,
                "soft": false,
                "dry_run": false,
                "generation": 12
            }
        });
        let text = format_report(&answer, false);
        assert_eq!(
            text,
            "purged, generation 12:\n\
             \x20 tag campaign:summer: 3 entries\n\
             \x20 tag product:1: 1 entry\n\
             \x20 url http://shop/p/1: 2 variants\n\
             \x20 prefix shop/p/: not counted (a --dry-run counts)\n\
             token ci, request id deploy-7\n"
        );
        assert!(format_report(&answer, true).contains("replayed"));

        // A fleet's answer: the entry and each node's state.
        let mut fleet = answer.clone();
        fleet["fleet"] = serde_json::json!({"id": "5-0", "complete": false,
            "nodes": {"edge-1": "applied", "edge-2": "down"}});
        assert!(format_report(&fleet, false).ends_with(
            "fleet: entry 5-0, NOT confirmed by every node: edge-1 applied, edge-2 down\n"
        ));
        assert_eq!(unconfirmed(&fleet).as_deref(), Some("edge-2 (down)"));
        fleet["fleet"]["complete"] = true.into();
        assert_eq!(unconfirmed(&fleet), None);
        assert_eq!(unconfirmed(&answer), None, "no fleet: nothing to confirm");

        let dry = serde_json::json!({
            "request_id": null,
            "token": "ops",
            "report": {"tags": {}, "urls": {}, "prefixes": {"shop/": 4}, "all": 9,
                       "soft": true, "dry_run": true, "generation": 0}
        });
        let text = format_report(&dry, false);
        assert!(
            text.starts_with("dry run: nothing purged; would soft-purge:\n"),
            "{text}"
        );
        assert!(text.contains("  prefix shop/: 4 entries\n"), "{text}");
        assert!(text.contains("  everything: 9 entries\n"), "{text}");
        assert!(text.contains("request id (none)"), "{text}");

        let soft = serde_json::json!({"token": "ci", "request_id": "r",
            "report": {"tags": {"t": 0}, "soft": true, "dry_run": false, "generation": 3}});
        assert!(format_report(&soft, false)
            .starts_with("soft-purged (marked stale), generation 3:\n  tag t: 0 entries\n"));
    }

    #[test]
    fn etags_compare_weakly_with_optional_quotes() {
        assert!(etag_matches("\"v2\"", "\"v2\""));
        assert!(etag_matches("v2", "\"v2\""));
        assert!(etag_matches("v2", "W/\"v2\""));
        assert!(etag_matches("W/\"v2\"", "\"v2\""));
        assert!(!etag_matches("v2", "\"v1\""));
        assert!(!etag_matches("v2", "\"v22\""));
    }

    #[test]
    fn expectations_match_only_successful_answers() {
        let mut headers = HeaderMap::new();
        headers.insert(ETAG, HeaderValue::from_static("\"v2\""));
        headers.insert("x-release", HeaderValue::from_static("2024.5"));
        let ok = StatusCode::OK;

        let etag = Expectation::from_args(Some("v2"), None, None).unwrap();
        assert!(etag.holds(ok, &headers, b""));
        assert!(!etag.holds(StatusCode::BAD_GATEWAY, &headers, b""));
        assert!(!etag.holds(StatusCode::NOT_FOUND, &headers, b""));
        assert!(!Expectation::Etag("v1".into()).holds(ok, &headers, b""));
        assert!(!etag.holds(ok, &HeaderMap::new(), b""));

        let header = Expectation::from_args(None, Some("X-Release: 2024.5"), None).unwrap();
        assert_eq!(
            header,
            Expectation::Header(HeaderName::from_static("x-release"), "2024.5".into())
        );
        assert!(header.holds(ok, &headers, b""));
        let other = Expectation::from_args(None, Some("x-release:2024.4"), None).unwrap();
        assert!(!other.holds(ok, &headers, b""));

        let body = Expectation::from_args(None, None, Some("new price")).unwrap();
        assert!(body.needs_body() && !etag.needs_body());
        assert!(body.holds(ok, &headers, b"<p>the new price: 3</p>"));
        assert!(!body.holds(ok, &headers, b"<p>the old price: 4</p>"));
        assert!(!body.holds(StatusCode::INTERNAL_SERVER_ERROR, &headers, b"new price"));
    }

    #[test]
    fn exactly_one_valid_expectation_is_required() {
        assert!(Expectation::from_args(None, None, None).is_err());
        assert!(Expectation::from_args(Some("a"), Some("b:c"), None).is_err());
        assert!(Expectation::from_args(Some(" "), None, None).is_err());
        assert!(Expectation::from_args(None, Some("no-colon"), None)
            .unwrap_err()
            .contains("Name:Value"));
        assert!(Expectation::from_args(None, Some("bad name:1"), None).is_err());
        assert!(Expectation::from_args(None, None, Some("")).is_err());
        // clap refuses none or two (usage, exit 2) before that.
        assert!(verify_args(&[]).is_err());
        assert!(verify_args(&["--expect-etag", "a", "--expect-body-contains", "b"]).is_err());
        let args = verify_args(&["--expect-etag", "\"v2\""]).unwrap();
        assert_eq!((args.timeout, args.interval_ms), (30, 500));
        let (uri, e) = prepare_verify(&args).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:8080/p/1");
        assert_eq!(e, Expectation::Etag("\"v2\"".into()));
        let https = verify_args(&["--expect-etag", "a"]).map(|mut a| {
            a.url = "https://shop/".into();
            a
        });
        assert!(prepare_verify(&https.unwrap())
            .unwrap_err()
            .contains("https"));
    }

    #[test]
    fn verify_messages_say_what_was_seen() {
        let mut headers = HeaderMap::new();
        headers.insert(ETAG, HeaderValue::from_static("\"v1\""));
        headers.insert(
            "cache-status",
            HeaderValue::from_static("lacquer; hit; ttl=290"),
        );
        let etag = Expectation::Etag("\"v2\"".into());
        let seen = Observation::of(StatusCode::OK, &headers, &etag);
        assert_eq!(
            seen.describe(),
            "status 200 OK, ETag \"v1\", Cache-Status: lacquer; hit; ttl=290"
        );
        assert_eq!(
            format_not_verified(&etag, "http://p/x", 30, 61, &seen, None),
            "not verified: ETag \"v2\" not served by http://p/x within 30 s (61 attempts); \
             last seen: status 200 OK, ETag \"v1\", Cache-Status: lacquer; hit; ttl=290"
        );
        assert!(format_not_verified(&etag, "u", 1, 2, &seen, Some("reset"))
            .ends_with("; the last attempt failed: reset"));
        assert_eq!(
            format_verified(&etag, "http://p/x", 1, Duration::from_millis(40), &seen),
            "verified: ETag \"v2\" served by http://p/x after 1 attempt (0.0 s): \
             status 200 OK, ETag \"v1\", Cache-Status: lacquer; hit; ttl=290"
        );
        let header = Expectation::Header(HeaderName::from_static("x-release"), "2".into());
        let seen = Observation::of(StatusCode::NOT_FOUND, &HeaderMap::new(), &header);
        assert_eq!(
            seen.describe(),
            "status 404 Not Found, ETag (none), x-release: (absent), Cache-Status: (none)"
        );
    }

    #[test]
    fn error_chains_include_the_causes() {
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl StdError for Wrap {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Wrap(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error",
        ));
        assert_eq!(error_chain(&e), "client error (Connect): tcp connect error");
    }
}
