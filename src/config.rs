//! Configuration: documented serde structs with defaults in one place, read once
//! and validated into [`Settings`], the types the rest of the code uses (no
//! `Option` chasing downstream). A bad config names the key and the reason.
//!
//! The commented `proxy.toml` at the top of the repository is the reference.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::Uri;
use serde::{Deserialize, Serialize};

use crate::freshness::Policy;
use crate::key::{HostMatch, KeyHeader, KeyRule, KeyRules, NamePattern, QueryRule};
use crate::vary::{is_private_vary, Normalizer, VaryRules};

/// The file as written by the operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    pub server: ServerSection,
    pub cache: CacheSection,
    /// `[key]`: how cache keys are built, unless a route says otherwise.
    pub key: KeySection,
    /// `[vary]`: Vary normalizers and per-user Vary fields.
    pub vary: VarySection,
    /// `[[routes]]`: key rules for a host and/or path prefix; the first match wins.
    pub routes: Vec<RouteSection>,
    /// `[tags]`: surrogate keys from response headers.
    pub tags: TagsSection,
    /// `[admin]`: the purge/stats API and its tokens.
    pub admin: AdminSection,
    /// `[log]`: log format and the access log.
    pub log: LogSection,
    /// `[[origins]]`: the origins, in priority order. The first is the default.
    pub origins: Vec<OriginSection>,
    /// `[fleet]`: the purge bus shared with other nodes (absent: this node purges
    /// alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSection>,
}

/// A node's place in a fleet: shields sit in front of the origin, edges in front
/// of shields (or of the origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    #[default]
    Edge,
    Shield,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Edge => "edge",
            Tier::Shield => "shield",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// The Redis that carries the purge stream: `redis://host:port[/db]`.
    pub redis: String,
    /// The stream's key; the node records and request ids live beside it.
    pub stream: String,
    /// This node's name in the fleet (default: the host name). Unique per node.
    pub node: Option<String>,
    pub tier: Tier,
    /// Purges kept in the stream (trimmed approximately beyond it). A node that was
    /// away for longer than the stream reaches back revalidates everything it holds.
    pub retention: u64,
    /// How often a node records that it is alive (and how long a read blocks).
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A node that cannot read the stream for longer than this reuses a stored
    /// response only if it revalidated it within the last `max_lag`.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// A node without a heartbeat for this long is `down` (default: 3 heartbeats).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub down_after: Option<Duration>,
    /// A node down for this long is no longer listed (nor waited for).
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
    /// How long a shield waits to catch up with the purge an edge has applied
    /// before it answers that edge without its cache.
    #[serde(with = "humantime_serde")]
    pub catch_up_wait: Duration,
    /// Each command to Redis (connect, append, record) must answer within this.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Shields catch up before answering edges (the ordering guarantee). Off only
    /// to rehearse the failure it prevents (the testbed does).
    pub shield_order: bool,
    /// The networks a shield takes the fleet's edges from: only their
    /// `Lacquer-Purged-Through` is honoured (and only they get tag fields). Default:
    /// loopback and the private ranges.
    pub peers: Vec<String>,
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            redis: "redis://127.0.0.1:6379".into(),
            stream: "lacquer:purges".into(),
            node: None,
            tier: Tier::Edge,
            retention: 100_000,
            heartbeat: Duration::from_secs(1),
            max_lag: Duration::from_secs(10),
            down_after: None,
            forget_after: Duration::from_secs(3600),
            catch_up_wait: Duration::from_millis(250),
            redis_timeout: Duration::from_secs(1),
            shield_order: true,
            peers: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// `[fleet]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSettings {
    pub redis: String,
    pub stream: String,
    pub node: String,
    pub tier: Tier,
    pub retention: u64,
    pub heartbeat: Duration,
    pub max_lag: Duration,
    pub down_after: Duration,
    pub forget_after: Duration,
    pub catch_up_wait: Duration,
    pub redis_timeout: Duration,
    pub shield_order: bool,
    pub peers: Vec<ipnet::IpNet>,
}

impl FleetSettings {
    /// May this client be one of the fleet's edges?
    pub fn is_peer(&self, ip: std::net::IpAddr) -> bool {
        self.peers.iter().any(|net| net.contains(&ip))
    }
}

/// The machine's host name, the default node name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "lacquer".into())
}

fn fleet_settings(f: &FleetSection) -> Result<FleetSettings, ConfigError> {
    let Some(rest) = f.redis.strip_prefix("redis://") else {
        return Err(err(
            "fleet.redis",
            format!("`{}` is not a redis://host:port URL", f.redis),
        ));
    };
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(err("fleet.redis", format!("`{}` names no host", f.redis)));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    if !name_ok(&f.stream) {
        return Err(err(
            "fleet.stream",
            "must be 1-128 letters, digits, `-`, `_`, `.` or `:`",
        ));
    }
    let node = f.node.clone().unwrap_or_else(host_name);
    if !name_ok(&node) || node.contains(':') {
        return Err(err(
            "fleet.node",
            format!("`{node}` must be 1-128 letters, digits, `-`, `_` or `.`"),
        ));
    }
    if f.retention < 100 {
        return Err(err("fleet.retention", "must keep at least 100 purges"));
    }
    for (key, d) in [
        ("fleet.heartbeat", f.heartbeat),
        ("fleet.max_lag", f.max_lag),
        ("fleet.forget_after", f.forget_after),
        ("fleet.redis_timeout", f.redis_timeout),
    ] {
        if d.is_zero() {
            return Err(err(key, "must be greater than zero"));
        }
    }
    let down_after = f.down_after.unwrap_or(f.heartbeat * 3);
    if down_after <= f.heartbeat {
        return Err(err(
            "fleet.down_after",
            "must be longer than fleet.heartbeat",
        ));
    }
    if f.max_lag <= f.heartbeat {
        return Err(err("fleet.max_lag", "must be longer than fleet.heartbeat"));
    }
    Ok(FleetSettings {
        redis: f.redis.clone(),
        stream: f.stream.clone(),
        node,
        tier: f.tier,
        retention: f.retention,
        heartbeat: f.heartbeat,
        max_lag: f.max_lag,
        down_after,
        forget_after: f.forget_after,
        catch_up_wait: f.catch_up_wait,
        redis_timeout: f.redis_timeout,
        shield_order: f.shield_order,
        peers: networks(&f.peers, "fleet.peers")?,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagsSection {
    /// Response headers carrying tags: `Surrogate-Key` is space-separated, the others
    /// comma-separated.
    pub headers: Vec<String>,
    /// Remove them before responses go to clients.
    pub strip: bool,
    pub max_length: usize,
    pub max_per_object: usize,
}

impl Default for TagsSection {
    fn default() -> Self {
        TagsSection {
            headers: vec!["Surrogate-Key".into(), "Cache-Tag".into()],
            strip: true,
            max_length: 256,
            max_per_object: 128,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` or `json` (one object per line).
    pub format: LogFormat,
    /// One line per request (target `lacquer::access`).
    pub access: bool,
    /// Default filter when RUST_LOG is not set, e.g. "info" or "lacquer=debug".
    pub level: String,
    /// The share of cache hits that get an access log line (0 to 1; 1: every
    /// one). Misses, errors and purges are always logged.
    pub sample_hits: f64,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            access: true,
            level: "info".into(),
            sample_hits: 1.0,
        }
    }
}

/// Operations a token may perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Url,
    Tag,
    Prefix,
    /// Purge everything: the break-glass scope.
    All,
    /// Reload the configuration (`POST /reload`).
    Reload,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSection {
    /// Named in the audit log (the secret never is).
    pub name: String,
    /// Environment variable holding the secret.
    pub env: Option<String>,
    /// File holding the secret (trailing newline ignored).
    pub file: Option<String>,
    pub operations: Vec<Operation>,
    /// Allowed tags (`campaign:*` matches a prefix); empty: any tag.
    pub tags: Vec<String>,
    /// Allowed hosts for url and prefix purges; empty: any host.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// A separate listener for the admin API; absent: it is served under
    /// `/.lacquer/` on the client listener (token-protected like everything else).
    pub listen: Option<SocketAddr>,
    /// Client networks allowed to use the admin API and PURGE (CIDR); empty: any.
    pub allow_ips: Vec<String>,
    /// Most items (tags + urls + prefixes) in one purge.
    pub max_batch: usize,
    /// A repeated `request_id` within this window returns the first result.
    #[serde(with = "humantime_serde")]
    pub request_id_window: Duration,
    /// Accept the `PURGE` method on the client listener (a token is still required).
    pub purge_method: bool,
    /// A purge's body (and, on the admin listener, a request head) must arrive
    /// within this time; a client that trickles it gets 408 (or is closed).
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    pub tokens: Vec<TokenSection>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: None,
            allow_ips: Vec::new(),
            max_batch: 1000,
            request_id_window: Duration::from_secs(600),
            purge_method: true,
            read_timeout: Duration::from_secs(10),
            tokens: Vec::new(),
        }
    }
}

/// A validated token.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    pub secret: Vec<u8>,
    pub operations: Vec<Operation>,
    pub tags: Vec<crate::key::NamePattern>,
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("operations", &self.operations)
            .finish_non_exhaustive()
    }
}

/// The validated admin settings.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: Option<SocketAddr>,
    pub allow_ips: Vec<ipnet::IpNet>,
    pub max_batch: usize,
    pub request_id_window: Duration,
    pub purge_method: bool,
    pub read_timeout: Duration,
    pub tokens: Vec<Token>,
}

/// Query handling in keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// Every parameter except those listed in `query_params`.
    Drop,
    /// Only the parameters listed in `query_params`.
    Allow,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySection {
    /// Sort query parameters so that `?b=1&a=2` and `?a=2&b=1` share an entry.
    pub sort_query: bool,
    pub query_mode: QueryMode,
    /// Parameter names (`utm_*` matches a prefix) dropped or allowed per `query_mode`.
    pub query_params: Vec<String>,
    /// Request headers whose values are part of the key (e.g. `X-Experiment-Id`).
    pub headers: Vec<String>,
    /// Of `headers`, those whose values compare case-insensitively.
    pub headers_fold_case: Vec<String>,
    /// Cookies whose values are part of the key (e.g. `user_segment`).
    pub cookies: Vec<String>,
    /// Keyed header and cookie values are cut to this many bytes.
    pub max_value_bytes: usize,
}

impl Default for KeySection {
    fn default() -> Self {
        KeySection {
            sort_query: true,
            query_mode: QueryMode::Drop,
            query_params: crate::key::DEFAULT_DROPPED_PARAMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            headers: Vec::new(),
            headers_fold_case: Vec::new(),
            cookies: Vec::new(),
            max_value_bytes: 256,
        }
    }
}

/// A route: where it applies, and which key settings it overrides (unset ones
/// come from `[key]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteSection {
    /// Exact host (`shop.example.com`) or `*.example.com`; absent: any host.
    pub host: Option<String>,
    /// Path prefix starting with `/`; absent: every path.
    pub path_prefix: Option<String>,
    pub sort_query: Option<bool>,
    pub query_mode: Option<QueryMode>,
    pub query_params: Option<Vec<String>>,
    pub headers: Option<Vec<String>>,
    pub headers_fold_case: Option<Vec<String>>,
    pub cookies: Option<Vec<String>>,
    pub max_value_bytes: Option<usize>,
    /// Per-user Vary fields allowed on this route (overrides `[vary] allow_private`).
    pub vary_allow_private: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormalizerKind {
    /// `Accept-Encoding` → `br`, `gzip` or `identity`.
    Encoding,
    /// `Accept-Language` → one of `languages`, else `default`.
    Language,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizerSection {
    pub header: String,
    pub kind: NormalizerKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VarySection {
    /// Request fields rewritten to a small set of values before lookup and forwarding.
    pub normalizers: Vec<NormalizerSection>,
    /// Responses with `Vary: Cookie`, `Authorization` or `User-Agent` are stored only if
    /// the field is listed here (each value then gets its own variant, never shared).
    pub allow_private: Vec<String>,
}

impl Default for VarySection {
    fn default() -> Self {
        VarySection {
            normalizers: vec![NormalizerSection {
                header: "Accept-Encoding".into(),
                kind: NormalizerKind::Encoding,
                languages: Vec::new(),
                default: None,
            }],
            allow_private: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// A client must send its complete request head within this time.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers) accepted; beyond it: 431.
    pub max_header_bytes: ByteSize,
    /// Longest request target accepted; beyond it: 414.
    pub max_uri_bytes: ByteSize,
    /// Pseudonym used in `Via` (RFC 9110 §7.6.3).
    pub via: String,
    /// Name of this cache in `Cache-Status` (RFC 9211).
    pub cache_status_name: String,
    /// Request headers removed before anything else looks at the request: fields that
    /// some frameworks trust to rewrite the URL or scheme, classic cache-poisoning vectors.
    pub strip_request_headers: Vec<String>,
    /// Add `X-Lacquer-Key` and `X-Lacquer-Variant` to responses (for debugging keys).
    pub debug_headers: bool,
    /// Terminate TLS on the listener (HTTPS only, ALPN h2 and http/1.1).
    pub tls: Option<TlsSection>,
    /// Worker threads of the runtime (0: one per CPU core).
    pub threads: usize,
    /// On SIGTERM/SIGINT: stop accepting, then let requests in flight finish for up
    /// to this long before exiting.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Most concurrent streams one HTTP/2 connection may open (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_streams: u32,
    /// An HTTP/2 connection that starts no stream for this long is closed
    /// gracefully (GOAWAY; streams in progress finish).
    #[serde(with = "humantime_serde")]
    pub h2_idle_timeout: Duration,
    /// Most origin requests one client connection may have in flight (0: no bound).
    /// A fetch that goes on after its client left, or after its HTTP/2 stream was
    /// reset, still counts.
    pub max_origin_requests_per_connection: usize,
}

/// The default `server.strip_request_headers`.
pub const DEFAULT_STRIPPED_HEADERS: &[&str] = &[
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Forwarded-Scheme",
    "X-Forwarded-Port",
    "X-Forwarded-Server",
    "X-Host",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "Forwarded",
    "X-Forwarded-Prefix",
    "X-Forwarded-Uri",
    "X-Forwarded-Path",
    "X-Forwarded-Ssl",
    "Front-End-Https",
    "X-Original-Host",
    "X-Url-Scheme",
];

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: ByteSize::kib(32),
            max_uri_bytes: ByteSize::kib(8),
            via: "lacquer".into(),
            cache_status_name: "lacquer".into(),
            strip_request_headers: DEFAULT_STRIPPED_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            debug_headers: false,
            drain_timeout: Duration::from_secs(30),
            tls: None,
            threads: 0,
            h2_max_streams: 100,
            h2_idle_timeout: Duration::from_secs(60),
            max_origin_requests_per_connection: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Memory budget of the store: bodies, headers and keys.
    pub max_size: ByteSize,
    /// Larger responses are streamed through and not stored.
    pub max_object_size: ByteSize,
    /// Heuristic freshness: this fraction of (Date − Last-Modified) (RFC 9111 §4.2.2).
    pub heuristic_fraction: f64,
    /// Upper bound on heuristic freshness.
    #[serde(with = "humantime_serde")]
    pub heuristic_max: Duration,
    /// Store responses that carry `Set-Cookie` (off: sharing them is the classic leak).
    pub store_set_cookie: bool,
    /// Let a client's `Cache-Control: no-cache` / `max-age` force revalidation
    /// (on, as RFC 9111 says; an origin shield may turn it off).
    pub honor_client_no_cache: bool,
    /// Targeted cache-control fields Lacquer obeys, highest priority first (RFC 9213).
    pub targeted_fields: Vec<String>,
    /// Forward the targeted fields downstream too.
    pub forward_targeted_fields: bool,
    /// Most variants (Vary) kept per URL; beyond it the least recently used goes.
    pub max_variants: usize,
    /// Obey `Surrogate-Control` (max-age, stale-while-revalidate, stale-if-error) above
    /// every other field for Lacquer's own freshness; it is always removed downstream.
    pub surrogate_control: bool,
    /// Heuristic freshness (from Last-Modified) for responses to requests that carry
    /// `Cookie` or `Authorization` (off: without explicit freshness, such a response
    /// is not stored; it is likely personal).
    pub heuristic_with_credentials: bool,
    /// Serve stale this long past expiry while one background revalidation runs, when
    /// the response has no `stale-while-revalidate` of its own (RFC 5861).
    #[serde(with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    /// Serve stale this long past expiry when the origin fails, when neither response
    /// nor request carries `stale-if-error` (RFC 5861).
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// While the origin is unhealthy (health checks failing, or unreachable), serve
    /// stale content up to this long past expiry instead of an error.
    #[serde(with = "humantime_serde")]
    pub unhealthy_grace: Duration,
    /// Requests waiting on another request's fetch of the same object give up after
    /// this long with 504.
    #[serde(with = "humantime_serde")]
    pub coalesce_wait: Duration,
    /// A URL whose response could not be shared skips the wait queue for this long
    /// (Varnish's hit-for-miss); "0s" disables it.
    #[serde(with = "humantime_serde")]
    pub uncacheable_ttl: Duration,
    /// Refresh hot entries in the background during the last part of their
    /// freshness ("0s" disables): the closer to expiry, the likelier a hit triggers it.
    #[serde(with = "humantime_serde")]
    pub early_refresh: Duration,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            max_size: ByteSize::mib(256),
            max_object_size: ByteSize::mib(8),
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(86_400),
            store_set_cookie: false,
            honor_client_no_cache: true,
            targeted_fields: vec!["CDN-Cache-Control".into()],
            forward_targeted_fields: true,
            max_variants: 32,
            surrogate_control: true,
            heuristic_with_credentials: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            unhealthy_grace: Duration::ZERO,
            coalesce_wait: Duration::from_secs(15),
            uncacheable_ttl: Duration::from_secs(30),
            early_refresh: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginSection {
    /// A name for logs.
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:9000` (a path prefix is allowed).
    pub url: String,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to receiving the response head.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Send the client's `Host` to the origin (on), or the origin's own authority.
    pub preserve_host: bool,
    /// Most requests in flight to this origin at once (0: no limit). Beyond it,
    /// requests wait up to `connect_timeout` for a free slot, then get 503.
    pub max_connections: usize,
    /// Reuse connections to this origin (a pool of idle connections). Off: one
    /// connection per request, as nginx does without `keepalive`; bytes an origin
    /// sends on an idle connection can then never be taken for a later answer.
    pub keepalive: bool,
    /// Active health check (absent: the origin is always considered healthy).
    pub health_check: Option<HealthCheckSection>,
    /// For an `https://` origin: an extra CA certificate (PEM) to trust besides the
    /// public roots (an internal CA, a self-signed origin).
    pub ca: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckSection {
    /// Path probed with GET (below the origin URL's own path).
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive good probes that make an unhealthy origin healthy.
    pub rise: u32,
    /// Consecutive failed probes that make a healthy origin unhealthy.
    pub fall: u32,
    /// Status a good probe returns (absent: any 2xx or 3xx).
    pub expect_status: Option<u16>,
}

impl Default for HealthCheckSection {
    fn default() -> Self {
        HealthCheckSection {
            path: "/".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            expect_status: None,
        }
    }
}

/// A validated health check.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub expect_status: Option<u16>,
}

impl Default for OriginSection {
    fn default() -> Self {
        OriginSection {
            name: "default".into(),
            url: String::new(),
            connect_timeout: Duration::from_secs(3),
            first_byte_timeout: Duration::from_secs(30),
            preserve_host: true,
            max_connections: 256,
            keepalive: true,
            health_check: None,
            ca: None,
        }
    }
}

/// A config error: the key (dotted path) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid config: {}", self.reason)
        } else {
            write!(f, "invalid config key `{}`: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Why a reload changed nothing (the old configuration stays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The reloader's lock was poisoned.
    Unavailable,
    /// No reloader was set (a proxy built from settings, not from a file).
    NoSource,
    /// The new configuration does not validate.
    Invalid(ConfigError),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Unavailable => f.write_str("reloader unavailable"),
            ReloadError::NoSource => f.write_str("no configuration source to reload from"),
            ReloadError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReloadError {}

impl crate::error::Kind for ReloadError {
    fn side(&self) -> crate::error::Side {
        match self {
            ReloadError::Invalid(_) => crate::error::Side::Client,
            ReloadError::Unavailable | ReloadError::NoSource => crate::error::Side::Internal,
        }
    }

    /// The old configuration stays; a corrected file can be reloaded.
    fn retry_safe(&self) -> bool {
        true
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Changed settings that only a restart applies (their old values stay).
    pub restart_required: Vec<String>,
    pub origins_changed: bool,
}

/// The field name under which the toml crate passes a date-time through serde.
const TOML_DATETIME_FIELD: &str = "$__toml_private_datetime";

impl ConfigFile {
    /// Parses TOML text; errors carry the dotted path of the offending key.
    pub fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| err("", e.to_string().trim().to_string()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            // toml hands a date-time to serde as a table with one private field: where
            // a table was expected, that field's name would be the "key".
            match key.strip_suffix(TOML_DATETIME_FIELD) {
                Some(key) => err(
                    key.trim_end_matches('.'),
                    "a date-time is not a valid value here".to_string(),
                ),
                None => err(key, e.inner().message().to_string()),
            }
        })
    }

    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        ConfigFile::parse(&text)
    }

    /// The effective settings as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// One origin, validated.
#[derive(Debug, Clone)]
pub struct OriginSettings {
    pub name: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix from the base URL, without a trailing slash ("" for none).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub preserve_host: bool,
    pub max_connections: usize,
    pub keepalive: bool,
    pub health_check: Option<HealthCheck>,
    /// TLS client configuration (used by https origins only).
    pub tls: Arc<rustls::ClientConfig>,
}

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub via: String,
    /// `1.1 <via>`: the `Via` entry added to every response (rendered once).
    pub via_response: http::HeaderValue,
    pub cache_status_name: String,
    pub origins: Vec<OriginSettings>,
    pub policy: Policy,
    pub max_size: u64,
    pub max_object_size: u64,
    pub max_variants: usize,
    pub forward_targeted_fields: bool,
    pub key_rules: KeyRules,
    pub tag_rules: crate::tags::TagRules,
    pub admin: AdminSettings,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub unhealthy_grace: Duration,
    pub coalesce_wait: Duration,
    pub uncacheable_ttl: Duration,
    pub early_refresh: Duration,
    pub strip_request_headers: crate::forward::HeaderSet,
    pub debug_headers: bool,
    pub drain_timeout: Duration,
    pub h2_max_streams: u32,
    pub h2_idle_timeout: Duration,
    pub max_origin_requests_per_connection: usize,
    pub access_log: bool,
    /// `log.sample_hits`.
    pub sample_hits: f64,
    /// The purge bus (`[fleet]`); none: this node purges alone.
    pub fleet: Option<FleetSettings>,
    /// TLS termination on the listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What was validated, for display.
    pub file: ConfigFile,
    /// Which configuration this is (the proxy numbers each one it applies): cached
    /// renderings of stored responses are only reused under the configuration
    /// that rendered them.
    pub generation: u64,
}

impl Settings {
    /// Do these settings name other origins (or other origin settings) than `old`?
    pub fn origins_differ(&self, old: &Settings) -> bool {
        self.file.origins != old.file.origins
    }

    /// For a reload: the settings only a restart can change (listeners, limits fixed
    /// when a connection or the store is set up). Each one that this new
    /// configuration changes from `old` keeps its old value here, and its key is
    /// returned.
    pub fn keep_restart_only(&mut self, old: &Settings) -> Vec<String> {
        let mut changed = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $name:expr) => {
                if self.$($field).+ != old.$($field).+ {
                    changed.push($name.to_string());
                    self.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        keep!(listen, "server.listen");
        keep!(header_read_timeout, "server.header_read_timeout");
        keep!(max_header_bytes, "server.max_header_bytes");
        keep!(h2_max_streams, "server.h2_max_streams");
        keep!(max_size, "cache.max_size");
        keep!(max_variants, "cache.max_variants");
        keep!(uncacheable_ttl, "cache.uncacheable_ttl");
        keep!(admin.listen, "admin.listen");
        keep!(admin.request_id_window, "admin.request_id_window");
        keep!(admin.read_timeout, "admin.read_timeout");
        keep!(fleet, "fleet");
        changed
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn header_names(names: &[String], key: &str) -> Result<Vec<HeaderName>, ConfigError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            HeaderName::from_bytes(n.trim().as_bytes()).map_err(|_| {
                err(
                    format!("{key}[{i}]"),
                    format!("`{n}` is not a valid header name"),
                )
            })
        })
        .collect()
}

fn query_patterns(params: &[String], key: &str) -> Result<Vec<NamePattern>, ConfigError> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let body = p.strip_suffix('*').unwrap_or(p);
            if body.is_empty() || body.contains(['*', '&', '=', '#', ' ']) {
                return Err(err(
                    format!("{key}[{i}]"),
                    format!("`{p}` is not a parameter name or `prefix*` pattern"),
                ));
            }
            Ok(NamePattern::new(p))
        })
        .collect()
}

fn is_cookie_name(s: &str) -> bool {
    is_token(s)
}

fn vary_rules(
    v: &VarySection,
    allow_private: &[String],
    allow_key: &str,
) -> Result<VaryRules, ConfigError> {
    let mut normalizers = Vec::new();
    for (i, n) in v.normalizers.iter().enumerate() {
        let key = |k: &str| format!("vary.normalizers[{i}].{k}");
        let name = HeaderName::from_bytes(n.header.as_bytes()).map_err(|_| {
            err(
                key("header"),
                format!("`{}` is not a valid header name", n.header),
            )
        })?;
        let normalizer = match n.kind {
            NormalizerKind::Encoding => {
                if name != http::header::ACCEPT_ENCODING {
                    return Err(err(
                        key("kind"),
                        "the `encoding` normalizer applies to Accept-Encoding only",
                    ));
                }
                Normalizer::Encoding
            }
            NormalizerKind::Language => {
                if n.languages.is_empty() {
                    return Err(err(
                        key("languages"),
                        "the `language` normalizer needs a list of languages",
                    ));
                }
                for (j, l) in n.languages.iter().enumerate() {
                    if l.is_empty() || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                        return Err(err(
                            format!("vary.normalizers[{i}].languages[{j}]"),
                            format!("`{l}` is not a language tag"),
                        ));
                    }
                    // Request members longer than this are skipped (rules/vary.rs), so
                    // such a language could never be matched again.
                    if l.len() > 64 {
                        return Err(err(
                            format!("vary.normalizers[{i}].languages[{j}]"),
                            "a language tag is at most 64 bytes long",
                        ));
                    }
                    // Tags compare without case: two spellings of one would make
                    // a normalized value normalize to the other.
                    if n.languages[..j].iter().any(|o| o.eq_ignore_ascii_case(l)) {
                        return Err(err(
                            format!("vary.normalizers[{i}].languages[{j}]"),
                            format!("`{l}` is listed twice (tags compare without case)"),
                        ));
                    }
                }
                let default = n.default.clone().unwrap_or_else(|| n.languages[0].clone());
                if !n.languages.contains(&default) {
                    return Err(err(
                        key("default"),
                        format!("`{default}` is not one of the languages"),
                    ));
                }
                Normalizer::Language {
                    languages: n.languages.clone(),
                    default,
                }
            }
        };
        if normalizers.iter().any(|(h, _)| *h == name) {
            return Err(err(
                key("header"),
                format!("`{}` has two normalizers", n.header),
            ));
        }
        normalizers.push((name, normalizer));
    }
    let allow = header_names(allow_private, allow_key)?;
    for (i, h) in allow.iter().enumerate() {
        if !is_private_vary(h) {
            return Err(err(
                format!("{allow_key}[{i}]"),
                "only cookie, authorization and user-agent need allowing",
            ));
        }
    }
    Ok(VaryRules {
        normalizers,
        allow_private: allow,
    })
}

fn key_rule(
    base: &KeySection,
    route: Option<(&RouteSection, usize)>,
    vary: VaryRules,
) -> Result<KeyRule, ConfigError> {
    let prefix = match route {
        Some((_, i)) => format!("routes[{i}]."),
        None => "key.".to_string(),
    };
    let r = route.map(|(r, _)| r);
    let pick = |o: Option<&Vec<String>>, d: &Vec<String>| o.cloned().unwrap_or_else(|| d.clone());
    let query_mode = r.and_then(|r| r.query_mode).unwrap_or(base.query_mode);
    let params = pick(r.and_then(|r| r.query_params.as_ref()), &base.query_params);
    let patterns = query_patterns(&params, &format!("{prefix}query_params"))?;
    let query = match query_mode {
        QueryMode::Drop => QueryRule::Drop(patterns),
        QueryMode::Allow => QueryRule::Allow(patterns),
    };
    let headers = header_names(
        &pick(r.and_then(|r| r.headers.as_ref()), &base.headers),
        &format!("{prefix}headers"),
    )?;
    let fold = header_names(
        &pick(
            r.and_then(|r| r.headers_fold_case.as_ref()),
            &base.headers_fold_case,
        ),
        &format!("{prefix}headers_fold_case"),
    )?;
    for (i, f) in fold.iter().enumerate() {
        if !headers.contains(f) {
            return Err(err(
                format!("{prefix}headers_fold_case[{i}]"),
                format!("`{f}` is not in {prefix}headers"),
            ));
        }
    }
    let cookies = pick(r.and_then(|r| r.cookies.as_ref()), &base.cookies);
    for (i, c) in cookies.iter().enumerate() {
        if !is_cookie_name(c) {
            return Err(err(
                format!("{prefix}cookies[{i}]"),
                format!("`{c}` is not a cookie name"),
            ));
        }
    }
    let max_value_bytes = r
        .and_then(|r| r.max_value_bytes)
        .unwrap_or(base.max_value_bytes);
    if !(1..=4096).contains(&max_value_bytes) {
        return Err(err(
            format!("{prefix}max_value_bytes"),
            "must be between 1 and 4096",
        ));
    }
    let host = match r.and_then(|r| r.host.as_deref()) {
        None => HostMatch::Any,
        Some(h) => {
            let (wild, name) = match h.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, h),
            };
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
                && !name.starts_with('.')
                && !name.contains("..");
            if !valid {
                return Err(err(
                    format!("{prefix}host"),
                    format!("`{h}` is not a host name or `*.domain` pattern"),
                ));
            }
            let name = crate::key::normalize_host(name, "http").into_owned();
            if wild {
                HostMatch::Suffix(name)
            } else {
                HostMatch::Exact(name)
            }
        }
    };
    let path_prefix = r
        .and_then(|r| r.path_prefix.clone())
        .unwrap_or_else(|| "/".into());
    if !path_prefix.starts_with('/') || path_prefix.contains(['?', '#', ' ', '*']) {
        return Err(err(
            format!("{prefix}path_prefix"),
            format!("`{path_prefix}` must be a path starting with `/` (no query, no wildcards)"),
        ));
    }
    Ok(KeyRule {
        host,
        path_prefix,
        sort_query: r.and_then(|r| r.sort_query).unwrap_or(base.sort_query),
        query,
        headers: headers
            .iter()
            .map(|h| KeyHeader {
                name: h.clone(),
                fold_case: fold.contains(h),
            })
            .collect(),
        cookies,
        max_value_bytes,
        vary,
    })
}

fn tag_rules(t: &TagsSection) -> Result<crate::tags::TagRules, ConfigError> {
    if !(1..=4096).contains(&t.max_length) {
        return Err(err("tags.max_length", "must be between 1 and 4096"));
    }
    if !(1..=10_000).contains(&t.max_per_object) {
        return Err(err("tags.max_per_object", "must be between 1 and 10000"));
    }
    Ok(crate::tags::TagRules {
        headers: header_names(&t.headers, "tags.headers")?,
        strip: t.strip,
        max_length: t.max_length,
        max_per_object: t.max_per_object,
    })
}

/// Addresses or CIDR networks; `key` names the list in errors.
fn networks(list: &[String], key: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, ip)| {
            ip.parse::<ipnet::IpNet>()
                .or_else(|_| ip.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    err(
                        format!("{key}[{i}]"),
                        format!("`{ip}` is not an IP address or CIDR network"),
                    )
                })
        })
        .collect()
}

fn admin_settings(a: &AdminSection) -> Result<AdminSettings, ConfigError> {
    let allow_ips = networks(&a.allow_ips, "admin.allow_ips")?;
    if !(1..=100_000).contains(&a.max_batch) {
        return Err(err("admin.max_batch", "must be between 1 and 100000"));
    }
    let mut tokens = Vec::new();
    for (i, t) in a.tokens.iter().enumerate() {
        let key = |k: &str| format!("admin.tokens[{i}].{k}");
        if t.name.is_empty() || !is_token(&t.name) {
            return Err(err(
                key("name"),
                "a token needs a name (letters, digits, -._)",
            ));
        }
        if tokens.iter().any(|x: &Token| x.name == t.name) {
            return Err(err(key("name"), format!("`{}` is used twice", t.name)));
        }
        let secret = match (&t.env, &t.file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                err(
                    key("env"),
                    format!("environment variable `{var}` is not set"),
                )
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| err(key("file"), format!("cannot read `{path}`: {e}")))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            _ => {
                return Err(err(
                    key("env"),
                    "give exactly one of `env` or `file` (never the secret itself)",
                ))
            }
        };
        if secret.len() < 16 {
            return Err(err(key("env"), "the secret must be at least 16 characters"));
        }
        if t.operations.is_empty() {
            return Err(err(
                key("operations"),
                "list at least one of url, tag, prefix, all",
            ));
        }
        tokens.push(Token {
            name: t.name.clone(),
            secret: secret.into_bytes(),
            operations: t.operations.clone(),
            tags: t.tags.iter().map(|p| NamePattern::new(p)).collect(),
            hosts: t
                .hosts
                .iter()
                .map(|h| crate::key::normalize_host(h, "http").into_owned())
                .collect(),
        });
    }
    Ok(AdminSettings {
        listen: a.listen,
        allow_ips,
        max_batch: a.max_batch,
        request_id_window: a.request_id_window,
        read_timeout: a.read_timeout,
        purge_method: a.purge_method,
        tokens,
    })
}

fn key_rules(file: &ConfigFile) -> Result<KeyRules, ConfigError> {
    let global_vary = vary_rules(&file.vary, &file.vary.allow_private, "vary.allow_private")?;
    let default = key_rule(&file.key, None, global_vary.clone())?;
    let mut routes = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        if r.host.is_none() && r.path_prefix.is_none() {
            return Err(err(
                format!("routes[{i}]"),
                "a route needs `host` and/or `path_prefix`",
            ));
        }
        let vary = match &r.vary_allow_private {
            Some(list) => vary_rules(&file.vary, list, &format!("routes[{i}].vary_allow_private"))?,
            None => global_vary.clone(),
        };
        routes.push(key_rule(&file.key, Some((r, i)), vary)?);
    }
    Ok(KeyRules { routes, default })
}

impl Settings {
    pub fn from_file(file: ConfigFile) -> Result<Settings, ConfigError> {
        if !(0.0..=1.0).contains(&file.log.sample_hits) {
            return Err(err("log.sample_hits", "must be between 0 and 1"));
        }
        let s = &file.server;
        if s.header_read_timeout.is_zero() {
            return Err(err(
                "server.header_read_timeout",
                "must be greater than zero",
            ));
        }
        if s.h2_idle_timeout.is_zero() {
            return Err(err("server.h2_idle_timeout", "must be greater than zero"));
        }
        if s.h2_max_streams == 0 {
            return Err(err("server.h2_max_streams", "must be at least 1"));
        }
        let max_header_bytes = s.max_header_bytes.as_u64();
        if !(1024..=1024 * 1024).contains(&max_header_bytes) {
            return Err(err(
                "server.max_header_bytes",
                "must be between 1 KiB and 1 MiB",
            ));
        }
        let max_uri_bytes = s.max_uri_bytes.as_u64();
        if !(64..=max_header_bytes).contains(&max_uri_bytes) {
            return Err(err(
                "server.max_uri_bytes",
                "must be between 64 bytes and server.max_header_bytes",
            ));
        }
        if !is_token(&s.via) {
            return Err(err(
                "server.via",
                "must be a token (letters, digits, -._~ …)",
            ));
        }
        if !is_token(&s.cache_status_name)
            || !s
                .cache_status_name
                .starts_with(|c: char| c.is_ascii_alphabetic())
        {
            return Err(err(
                "server.cache_status_name",
                "must be a structured-field token starting with a letter",
            ));
        }

        let c = &file.cache;
        if !(0.0..=1.0).contains(&c.heuristic_fraction) || c.heuristic_fraction.is_nan() {
            return Err(err(
                "cache.heuristic_fraction",
                "must be between 0.0 and 1.0",
            ));
        }
        if c.max_size.as_u64() < 1024 * 1024 {
            return Err(err("cache.max_size", "must be at least 1 MiB"));
        }
        if c.max_object_size.as_u64() == 0 || c.max_object_size > c.max_size {
            return Err(err(
                "cache.max_object_size",
                "must be greater than zero and at most cache.max_size",
            ));
        }
        if c.max_object_size.as_u64() > u64::from(u32::MAX) / 2 {
            return Err(err("cache.max_object_size", "must be below 2 GiB"));
        }
        if c.coalesce_wait.is_zero() {
            return Err(err("cache.coalesce_wait", "must be greater than zero"));
        }
        if c.max_variants == 0 || c.max_variants > 1024 {
            return Err(err("cache.max_variants", "must be between 1 and 1024"));
        }
        let mut targeted_fields = Vec::new();
        for (i, f) in c.targeted_fields.iter().enumerate() {
            let name = HeaderName::from_bytes(f.as_bytes()).map_err(|_| {
                err(
                    format!("cache.targeted_fields[{i}]"),
                    format!("`{f}` is not a valid header name"),
                )
            })?;
            if name == http::header::CACHE_CONTROL {
                return Err(err(
                    format!("cache.targeted_fields[{i}]"),
                    "Cache-Control is not a targeted field",
                ));
            }
            targeted_fields.push(name);
        }

        if file.origins.is_empty() {
            return Err(err(
                "origins",
                "at least one [[origins]] entry is required (or pass --origin URL)",
            ));
        }
        let mut origins = Vec::new();
        for (i, o) in file.origins.iter().enumerate() {
            let key = |k: &str| format!("origins[{i}].{k}");
            let uri: Uri = o
                .url
                .parse()
                .map_err(|e| err(key("url"), format!("`{}` is not a URL: {e}", o.url)))?;
            let scheme = uri
                .scheme()
                .cloned()
                .ok_or_else(|| err(key("url"), "needs a scheme, e.g. http://host:port"))?;
            if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
                return Err(err(
                    key("url"),
                    format!("scheme `{scheme}` is not supported (http or https)"),
                ));
            }
            if scheme == Scheme::HTTP && o.ca.is_some() {
                return Err(err(key("ca"), "only meaningful for an https:// origin"));
            }
            let tls = crate::tls::client_config(o.ca.as_deref())
                .map_err(|e| err(key(e.field), e.reason))?;
            let authority = uri
                .authority()
                .cloned()
                .ok_or_else(|| err(key("url"), "needs a host"))?;
            if uri.query().is_some() {
                return Err(err(key("url"), "must not have a query string"));
            }
            if o.connect_timeout.is_zero() {
                return Err(err(key("connect_timeout"), "must be greater than zero"));
            }
            if o.first_byte_timeout.is_zero() {
                return Err(err(key("first_byte_timeout"), "must be greater than zero"));
            }
            if o.name.is_empty() {
                return Err(err(key("name"), "must not be empty"));
            }
            let health_check = match &o.health_check {
                None => None,
                Some(h) => {
                    let hk = |k: &str| format!("origins[{i}].health_check.{k}");
                    if !h.path.starts_with('/')
                        || h.path.parse::<http::uri::PathAndQuery>().is_err()
                    {
                        return Err(err(
                            hk("path"),
                            format!("`{}` is not a path starting with `/`", h.path),
                        ));
                    }
                    if h.interval.is_zero() {
                        return Err(err(hk("interval"), "must be greater than zero"));
                    }
                    if h.timeout.is_zero() {
                        return Err(err(hk("timeout"), "must be greater than zero"));
                    }
                    if h.rise == 0 {
                        return Err(err(hk("rise"), "must be at least 1"));
                    }
                    if h.fall == 0 {
                        return Err(err(hk("fall"), "must be at least 1"));
                    }
                    if let Some(code) = h.expect_status {
                        if !(100..=599).contains(&code) {
                            return Err(err(hk("expect_status"), "must be an HTTP status code"));
                        }
                    }
                    Some(HealthCheck {
                        path: h.path.clone(),
                        interval: h.interval,
                        timeout: h.timeout,
                        rise: h.rise,
                        fall: h.fall,
                        expect_status: h.expect_status,
                    })
                }
            };
            origins.push(OriginSettings {
                name: o.name.clone(),
                scheme,
                authority,
                base_path: uri.path().trim_end_matches('/').to_string(),
                connect_timeout: o.connect_timeout,
                first_byte_timeout: o.first_byte_timeout,
                preserve_host: o.preserve_host,
                max_connections: o.max_connections,
                keepalive: o.keepalive,
                health_check,
                tls,
            });
        }

        Ok(Settings {
            generation: 0,
            listen: s.listen,
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: max_header_bytes as usize,
            max_uri_bytes: max_uri_bytes as usize,
            via: s.via.clone(),
            via_response: http::HeaderValue::from_str(&format!("1.1 {}", s.via))
                .map_err(|_| err("server.via", "not a valid header value"))?,
            cache_status_name: s.cache_status_name.clone(),
            origins,
            policy: Policy {
                heuristic_fraction: c.heuristic_fraction,
                heuristic_max: c.heuristic_max,
                store_set_cookie: c.store_set_cookie,
                honor_client_no_cache: c.honor_client_no_cache,
                targeted_fields,
                surrogate_control: c.surrogate_control,
                heuristic_with_credentials: c.heuristic_with_credentials,
            },
            max_size: c.max_size.as_u64(),
            max_object_size: c.max_object_size.as_u64(),
            max_variants: c.max_variants,
            forward_targeted_fields: c.forward_targeted_fields,
            key_rules: key_rules(&file)?,
            tag_rules: tag_rules(&file.tags)?,
            admin: admin_settings(&file.admin)?,
            stale_while_revalidate: c.stale_while_revalidate,
            stale_if_error: c.stale_if_error,
            unhealthy_grace: c.unhealthy_grace,
            coalesce_wait: c.coalesce_wait,
            uncacheable_ttl: c.uncacheable_ttl,
            early_refresh: c.early_refresh,
            strip_request_headers: crate::forward::HeaderSet::new(header_names(
                &s.strip_request_headers,
                "server.strip_request_headers",
            )?),
            debug_headers: s.debug_headers,
            drain_timeout: s.drain_timeout,
            h2_max_streams: s.h2_max_streams,
            h2_idle_timeout: s.h2_idle_timeout,
            max_origin_requests_per_connection: s.max_origin_requests_per_connection,
            access_log: file.log.access,
            sample_hits: file.log.sample_hits,
            fleet: file.fleet.as_ref().map(fleet_settings).transpose()?,
            tls: match &s.tls {
                None => None,
                Some(t) => Some(
                    crate::tls::server_config(&t.cert, &t.key)
                        .map_err(|e| err(format!("server.tls.{}", e.field), e.reason))?,
                ),
            },
            file,
        })
    }

    /// Settings for a single origin with every default: what
    /// `lacquer serve --origin URL` runs with when there is no file.
    pub fn for_origin(url: &str) -> Result<Settings, ConfigError> {
        let mut file = ConfigFile::default();
        file.origins.push(OriginSection {
            url: url.to_string(),
            ..OriginSection::default()
        });
        Settings::from_file(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_file(ConfigFile::parse(text)?)
    }

    #[test]
    fn minimal_config() {
        let s = check("[[origins]]\nurl = \"http://127.0.0.1:9000/base/\"\n").unwrap();
        assert_eq!(s.origins[0].authority.as_str(), "127.0.0.1:9000");
        assert_eq!(s.origins[0].base_path, "/base");
        assert_eq!(s.max_size, 256 * 1024 * 1024);
    }

    #[test]
    fn a_reload_keeps_the_restart_only_settings_and_names_them() {
        let mut file = ConfigFile::default();
        file.origins.push(OriginSection {
            url: "http://a".into(),
            ..OriginSection::default()
        });
        let old = Settings::from_file(file.clone()).unwrap();
        file.cache.max_size = ByteSize::mib(512);
        file.admin.read_timeout = Duration::from_secs(3);
        file.cache.coalesce_wait = Duration::from_secs(2);
        file.fleet = Some(FleetSection {
            node: Some("edge-1".into()),
            ..FleetSection::default()
        });
        let mut new = Settings::from_file(file).unwrap();
        let changed = new.keep_restart_only(&old);
        assert_eq!(changed, ["cache.max_size", "admin.read_timeout", "fleet"]);
        assert_eq!(new.fleet, None, "joining a fleet takes a restart");
        assert_eq!(new.max_size, old.max_size);
        assert_eq!(new.admin.read_timeout, old.admin.read_timeout);
        assert_eq!(new.coalesce_wait, Duration::from_secs(2), "applied at once");
        assert!(new.clone().keep_restart_only(&new).is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisen = \"127.0.0.1:1\"\n", "server.lisen"),
            ("[server]\nlisten = \"nope\"\n", "server.listen"),
            ("[server]\nlisten = 5\n", "server.listen"),
            ("[cache]\nmax_size = \"lots\"\n", "cache.max_size"),
            (
                "[cache]\nheuristic_max = \"forever\"\n",
                "cache.heuristic_max",
            ),
            (
                "[cache]\nheuristic_fraction = 2.0\n[[origins]]\nurl=\"http://a\"\n",
                "cache.heuristic_fraction",
            ),
            (
                "[cache]\ntargeted_fields = [\"bad header\"]\n[[origins]]\nurl=\"http://a\"\n",
                "cache.targeted_fields[0]",
            ),
            ("[[origins]]\nurl = \"ftp://x\"\n", "origins[0].url"),
            ("[[origins]]\nurl = \"not a url\"\n", "origins[0].url"),
            (
                "[[origins]]\nurl = \"http://a\"\nfoo = 1\n",
                "origins[0].foo",
            ),
            ("", "origins"),
            ("[vary]\nnormalizers = [{ header = \"accept\", kind = \"magic\" }]\n", "vary.normalizers[0].kind"),
            ("[vary]\nnormalizers = [{ header = \"accept-language\", kind = \"language\" }]\n[[origins]]\nurl=\"http://a\"\n", "vary.normalizers[0].languages"),
            ("[server]\nh2_max_streams = 0\n[[origins]]\nurl=\"http://a\"\n", "server.h2_max_streams"),
            ("[server]\nh2_idle_timeout = \"0s\"\n[[origins]]\nurl=\"http://a\"\n", "server.h2_idle_timeout"),
            ("[vary]\nnormalizers = [{ header = \"accept-language\", kind = \"language\", languages = [\"EN\", \"en\"] }]\n[[origins]]\nurl=\"http://a\"\n", "vary.normalizers[0].languages[1]"),
            ("[vary]\nnormalizers = [{ header = \"accept-language\", kind = \"language\", languages = [\"en\", \"x-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"] }]\n[[origins]]\nurl=\"http://a\"\n", "vary.normalizers[0].languages[1]"),
            ("[vary]\nallow_private = [\"accept\"]\n[[origins]]\nurl=\"http://a\"\n", "vary.allow_private[0]"),
            ("[[routes]]\npath_prefix = \"shop\"\n[[origins]]\nurl=\"http://a\"\n", "routes[0].path_prefix"),
            ("[[routes]]\nhost = \"**.bad\"\n[[origins]]\nurl=\"http://a\"\n", "routes[0].host"),
            ("[[routes]]\nsort_query = false\n[[origins]]\nurl=\"http://a\"\n", "routes[0]"),
            ("[[routes]]\nhost = \"a.b\"\nquery_params = [\"a=b\"]\n[[origins]]\nurl=\"http://a\"\n", "routes[0].query_params[0]"),
            ("[key]\nheaders = [\"bad header\"]\n[[origins]]\nurl=\"http://a\"\n", "key.headers[0]"),
            ("[key]\nheaders_fold_case = [\"x-a\"]\n[[origins]]\nurl=\"http://a\"\n", "key.headers_fold_case[0]"),
            ("[key]\nquery_mode = \"sometimes\"\n", "key.query_mode"),
            ("[log]\nsample_hits = 1.5\n[[origins]]\nurl=\"http://a\"\n", "log.sample_hits"),
            ("[fleet]\nredis = \"http://x:1\"\n[[origins]]\nurl=\"http://a\"\n", "fleet.redis"),
            ("[fleet]\nredis = \"redis://\"\n[[origins]]\nurl=\"http://a\"\n", "fleet.redis"),
            ("[fleet]\nnode = \"edge 1\"\n[[origins]]\nurl=\"http://a\"\n", "fleet.node"),
            ("[fleet]\ntier = \"middle\"\n", "fleet.tier"),
            ("[fleet]\nmax_lag = \"1s\"\nheartbeat = \"2s\"\n[[origins]]\nurl=\"http://a\"\n", "fleet.max_lag"),
            ("[fleet]\nretention = 5\n[[origins]]\nurl=\"http://a\"\n", "fleet.retention"),
            ("[fleet]\npeers = [\"10.0.0.0/33\"]\n[[origins]]\nurl=\"http://a\"\n", "fleet.peers[0]"),
            ("[fleet]\nstream = \"\"\n[[origins]]\nurl=\"http://a\"\n", "fleet.stream"),
            // A date-time where a table belongs: the key, not toml's private field.
            ("[vary]\nnormalizers = [1979-05-27T07:32:00Z]\n", "vary.normalizers[0]"),
        ];
        for (text, key) in cases {
            let e = check(text).expect_err(text);
            assert_eq!(e.key, key, "{text:?} gave {e}");
            assert!(!e.reason.is_empty());
        }
        let e = check("[server]\nlisen = 1\n").unwrap_err();
        assert!(e.reason.contains("lisen"), "{e}");
    }

    #[test]
    fn routes_inherit_from_key() {
        let s = check(
            "[key]\nheaders = [\"X-Exp\"]\ncookies = [\"seg\"]\n\
             [[routes]]\nhost = \"*.example.com\"\npath_prefix = \"/shop\"\nquery_mode = \"allow\"\nquery_params = [\"page\"]\n\
             [[origins]]\nurl = \"http://a\"\n",
        )
        .unwrap();
        let r = &s.key_rules.routes[0];
        assert_eq!(r.host, HostMatch::Suffix("example.com".into()));
        assert_eq!(r.query, QueryRule::Allow(vec![NamePattern::new("page")]));
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.cookies, vec!["seg".to_string()]);
        assert!(std::ptr::eq(
            s.key_rules.rule_for("www.example.com", "/shop/1"),
            r
        ));
        assert!(!std::ptr::eq(
            s.key_rules.rule_for("www.example.com", "/blog"),
            r
        ));
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = check("[server\n").unwrap_err();
        assert!(e.to_string().contains("invalid config"));
    }

    #[test]
    fn effective_settings_round_trip() {
        let s = Settings::for_origin("http://127.0.0.1:9000").unwrap();
        let text = s.file.to_toml();
        let again = check(&text).unwrap();
        assert_eq!(again.origins[0].authority.as_str(), "127.0.0.1:9000");
        assert_eq!(again.max_object_size, s.max_object_size);
    }
}
