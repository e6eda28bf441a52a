//! Metrics in the Prometheus text format (`GET /metrics` on the admin API) and the
//! same figures as JSON (`GET /stats`). Rendered from the one [`Outcome`] value per
//! request, like `Cache-Status` and the access log.
//!
//! A request is counted by finding its outcome label among the fixed outcomes (a
//! search of a short array, `hit` first) and an atomic add: no lock, no map. Figures
//! another owner keeps (the store's evictions) are read at scrape time.
//!
//! [`Outcome`]: crate::outcome::Outcome

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every outcome label (`Outcome::label`), in a fixed order.
pub const OUTCOMES: [&str; 11] = [
    "hit",
    "stale-hit",
    "miss",
    "pass",
    "coalesced",
    "revalidated",
    "stale-swr",
    "stale-sie",
    "origin-error",
    "only-if-cached",
    "rejected",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    cache_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginStatus {
    origin: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabel {
    origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurgeLabel {
    operation: &'static str,
    token: String,
    soft: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The fleet's figures (zero on a node without one).
#[derive(Default)]
pub struct FleetMetrics {
    /// Purges read from the bus and applied.
    pub applied: Counter,
    /// Purges refused because the bus could not be reached.
    pub refused: Counter,
    /// Times this node found it may have missed purges and required everything to
    /// be revalidated.
    pub gap_flushes: Counter,
    /// Seconds spent partitioned from the bus.
    pub partitioned_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// How long the oldest purge this node has not applied has waited.
    pub lag_ms: Gauge,
}

pub struct Metrics {
    registry: Registry,
    pub fleet: FleetMetrics,
    by_outcome: [Counter; OUTCOMES.len()],
    origin_requests: Family<OriginStatus, Counter>,
    origin_latency: Family<OriginLabel, Histogram, fn() -> Histogram>,
    pub coalesced_waiters: Counter,
    pub background_revalidations: Counter,
    purges: Family<PurgeLabel, Counter>,
    entries: Gauge,
    bytes: Gauge,
    tag_index: Gauge,
    origin_healthy: Family<OriginLabel, Gauge>,
}

/// A counter another owner keeps, read when the metrics are scraped.
struct ReadCounter {
    name: &'static str,
    help: &'static str,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for ReadCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCounter")
            .field("name", &self.name)
            .finish()
    }
}

impl Collector for ReadCounter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new((self.read)());
        let metric =
            encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
        counter.encode(metric)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(|| 0)
    }
}

impl Metrics {
    /// `evictions` reads the store's count of evictions (at scrape time).
    pub fn new(evictions: impl Fn() -> u64 + Send + Sync + 'static) -> Metrics {
        let mut registry = Registry::with_prefix("lacquer");
        let requests = Family::<OutcomeLabel, Counter>::default();
        let by_outcome = OUTCOMES.map(|o| {
            requests
                .get_or_create(&OutcomeLabel { cache_status: o })
                .clone()
        });
        registry.register("requests", "Requests by cache outcome", requests);
        let origin_requests = Family::<OriginStatus, Counter>::default();
        registry.register(
            "origin_requests",
            "Requests sent to origins, by origin and status",
            origin_requests.clone(),
        );
        let origin_latency =
            Family::<OriginLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "origin_response_seconds",
            "Time to the origin's response head",
            origin_latency.clone(),
        );
        let coalesced_waiters = Counter::default();
        registry.register(
            "coalesced_waiters",
            "Requests that waited on another request's fetch",
            coalesced_waiters.clone(),
        );
        let background_revalidations = Counter::default();
        registry.register(
            "background_revalidations",
            "Background revalidations started",
            background_revalidations.clone(),
        );
        let purges = Family::<PurgeLabel, Counter>::default();
        registry.register(
            "purges",
            "Purge operations by operation, token and softness",
            purges.clone(),
        );
        registry.register_collector(Box::new(ReadCounter {
            name: "evictions",
            help: "Entries evicted to stay within the memory budget",
            read: Box::new(evictions),
        }));
        registry.register_collector(Box::new(ReadCounter {
            name: "log_dropped_lines",
            help: "Log lines dropped because the log writer fell behind",
            read: Box::new(crate::logging::dropped_lines),
        }));
        let entries = Gauge::default();
        registry.register("entries", "URLs stored", entries.clone());
        let bytes = Gauge::default();
        registry.register("bytes", "Bytes accounted to stored entries", bytes.clone());
        let tag_index = Gauge::default();
        registry.register(
            "tag_index_tags",
            "Distinct tags in the tag index",
            tag_index.clone(),
        );
        let origin_healthy = Family::<OriginLabel, Gauge>::default();
        registry.register(
            "origin_healthy",
            "1 when the origin passes its health check",
            origin_healthy.clone(),
        );
        let fleet = FleetMetrics::default();
        registry.register(
            "fleet_applied",
            "Purges read from the fleet's bus and applied",
            fleet.applied.clone(),
        );
        registry.register(
            "fleet_refused",
            "Purges refused because the fleet's bus could not be reached",
            fleet.refused.clone(),
        );
        registry.register(
            "fleet_gap_flushes",
            "Times purges may have been missed and everything stored was to be revalidated",
            fleet.gap_flushes.clone(),
        );
        registry.register(
            "fleet_partitioned_seconds",
            "Time spent partitioned from the fleet's bus",
            fleet.partitioned_seconds.clone(),
        );
        registry.register(
            "fleet_lag_milliseconds",
            "How long the oldest purge this node has not applied has waited",
            fleet.lag_ms.clone(),
        );
        Metrics {
            registry,
            fleet,
            by_outcome,
            origin_requests,
            origin_latency,
            coalesced_waiters,
            background_revalidations,
            purges,
            entries,
            bytes,
            tag_index,
            origin_healthy,
        }
    }

    /// Counts one request by its outcome label.
    pub fn request(&self, label: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == label) {
            self.by_outcome[i].inc();
        }
    }

    pub fn requests_by_outcome(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES
            .iter()
            .zip(&self.by_outcome)
            .map(|(o, c)| (*o, c.get()))
            .collect()
    }

    pub fn origin_response(&self, origin: &str, status: Option<u16>, seconds: f64) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.origin_requests
            .get_or_create(&OriginStatus {
                origin: origin.to_string(),
                status,
            })
            .inc();
        self.origin_latency
            .get_or_create(&OriginLabel {
                origin: origin.to_string(),
            })
            .observe(seconds);
    }

    pub fn purge(&self, operation: &'static str, token: &str, soft: bool) {
        let soft = if soft { "true" } else { "false" };
        self.purges
            .get_or_create(&PurgeLabel {
                operation,
                token: token.to_string(),
                soft,
            })
            .inc();
    }

    /// Sets the gauges that are read at scrape time.
    pub fn set_store(&self, entries: u64, bytes: u64, tags: usize) {
        self.entries.set(entries as i64);
        self.bytes.set(bytes as i64);
        self.tag_index.set(tags as i64);
    }

    pub fn set_origin_health(&self, origin: &str, healthy: bool) {
        self.origin_healthy
            .get_or_create(&OriginLabel {
                origin: origin.to_string(),
            })
            .set(i64::from(healthy));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_in_prometheus_text() {
        let m = Metrics::new(|| 7);
        m.request("hit");
        m.request("hit");
        m.request("miss");
        m.request("not-a-label");
        m.origin_response("default", Some(200), 0.01);
        m.purge("tag", "ci", false);
        m.set_store(3, 1024, 2);
        let text = m.render();
        assert!(
            text.contains("lacquer_requests_total{cache_status=\"hit\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lacquer_requests_total{cache_status=\"miss\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lacquer_origin_requests_total{origin=\"default\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lacquer_purges_total{operation=\"tag\",token=\"ci\",soft=\"false\"} 1"),
            "{text}"
        );
        assert!(text.contains("lacquer_entries 3"), "{text}");
        assert!(text.contains("lacquer_evictions_total 7"), "{text}");
        assert!(
            text.contains("lacquer_origin_response_seconds_bucket"),
            "{text}"
        );
    }
}
