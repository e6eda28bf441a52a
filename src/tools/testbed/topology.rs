//! What a testbed run is made of, as data: the nodes and their tiers, the
//! origin's objects, the load, and the scenarios (timelines of actions and
//! faults). Read from TOML (`examples/testbed.toml` documents every key) or the
//! defaults; validated once, with errors that name the key.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A topology file, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topology {
    pub nodes: Vec<NodeSpec>,
    pub origin: OriginSpec,
    pub load: LoadSpec,
    /// `max_lag` of every node (short, so that the `partial` scenario shows it).
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// The scenarios to run when none is named on the command line (default: all
    /// of `scenarios`).
    pub run: Vec<String>,
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// `edge` or `shield`.
    pub tier: String,
    /// An edge's shield (by name); none: the edge goes to the origin.
    #[serde(default)]
    pub shield: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginSpec {
    /// Added to every origin answer.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    pub objects: usize,
    pub size: usize,
    /// Objects are tagged `tag-<n mod tags>`; tag-0 is the hot one the load
    /// favours.
    pub tags: usize,
    pub cache_control: String,
    /// Cache-Control for the objects of some tags (their class), instead of
    /// `cache_control`: `{ "tag-1" = "max-age=60, stale-while-revalidate=30" }`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cache_control_by_tag: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadSpec {
    /// Concurrent clients per edge.
    pub clients: usize,
    /// Requests per second per edge, over all its clients.
    pub rate: u32,
    /// Share of requests for the hot tag's objects (0 to 1).
    pub hot: f64,
}

/// A scenario: a timeline of steps over `duration`, with optional switches.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub about: String,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Shields catch up before answering edges (off only to show the failure).
    #[serde(default = "yes")]
    pub shield_order: bool,
    pub steps: Vec<Step>,
}

fn yes() -> bool {
    true
}

/// One action at `at` from the scenario's start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    #[serde(rename = "do")]
    pub action: Action,
    /// `publish`/`purge`: the tag (default `tag-0`, the hot one).
    #[serde(default)]
    pub tag: Option<String>,
    /// `purge`: the node that receives it (default: the first edge); `hold`,
    /// `release`, `kill`, `start`: the node it acts on.
    #[serde(default)]
    pub node: Option<String>,
    /// `purge`: confirmation wait (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub wait: Option<Duration>,
    /// `purge`: soft instead of hard.
    #[serde(default)]
    pub soft: bool,
    /// `storm`: purges per second, for `lasting`.
    #[serde(default)]
    pub rate: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub lasting: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The origin publishes a new version of the tag's objects.
    Publish,
    /// Purge the tag (through the node), with `wait`.
    Purge,
    /// Hold the node's bus consumer back (a stalled delivery).
    Hold,
    Release,
    /// Stop the node (its cache is lost), and start it again under its name.
    Kill,
    Start,
    /// `rate` tag purges a second (of cold tags) for `lasting`.
    Storm,
}

/// A bad topology: the key and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid topology key `{}`: {}", self.key, self.reason)
    }
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> TopologyError {
    TopologyError {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Default for OriginSpec {
    fn default() -> Self {
        OriginSpec {
            latency: Duration::from_millis(20),
            objects: 1000,
            size: 2048,
            tags: 20,
            cache_control: "max-age=3600".into(),
            cache_control_by_tag: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            clients: 4,
            rate: 200,
            hot: 0.5,
        }
    }
}

/// A step at `at_ms`: `tag` and `node` by name, `wait` in milliseconds.
fn step(
    at_ms: u64,
    action: Action,
    tag: Option<&str>,
    node: Option<&str>,
    wait_ms: Option<u64>,
    soft: bool,
) -> Step {
    Step {
        at: Duration::from_millis(at_ms),
        action,
        tag: tag.map(String::from),
        node: node.map(String::from),
        wait: wait_ms.map(Duration::from_millis),
        soft,
        rate: None,
        lasting: None,
    }
}

fn scenario(name: &str, about: &str, secs: u64, shield_order: bool, steps: Vec<Step>) -> Scenario {
    Scenario {
        name: name.into(),
        about: about.into(),
        duration: Duration::from_secs(secs),
        shield_order,
        steps,
    }
}

fn node(name: &str, tier: &str, shield: Option<&str>) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        tier: tier.into(),
        shield: shield.map(String::from),
    }
}

impl Default for Topology {
    /// 1 shield, 3 edges behind it, 1,000 tagged objects, 200 requests a second
    /// per edge, and the six scenarios (`examples/testbed.toml` spells them out).
    fn default() -> Self {
        use Action::{Hold, Kill, Publish, Purge, Release, Start, Storm};
        let bypass = |name: &str, about: &str, ordered: bool| {
            scenario(
                name,
                about,
                8,
                ordered,
                vec![
                    step(1500, Hold, None, Some("shield-1"), None, false),
                    step(2000, Publish, None, None, None, false),
                    step(2000, Purge, None, None, Some(500), false),
                    step(6000, Release, None, Some("shield-1"), None, false),
                ],
            )
        };
        let mut storm = step(3000, Storm, None, None, None, false);
        storm.rate = Some(200);
        storm.lasting = Some(Duration::from_secs(5));
        let scenarios =
            vec![
            scenario(
                "purge",
                "the origin publishes a new version of the hot tag, which is then purged with wait",
                8,
                true,
                vec![
                    step(2000, Publish, None, None, None, false),
                    step(2000, Purge, None, None, None, false),
                ],
            ),
            scenario(
                "partial",
                "edge-3's bus delivery stalls during the purge; max_lag bounds its staleness",
                14,
                true,
                vec![
                    step(1000, Hold, None, Some("edge-3"), None, false),
                    step(2000, Publish, None, None, None, false),
                    step(2000, Purge, None, None, Some(2000), false),
                    step(11000, Release, None, Some("edge-3"), None, false),
                ],
            ),
            scenario("storm", "200 tag purges a second for 5 s under load", 10, true, vec![storm]),
            scenario(
                "stampede",
                "a hard purge of the hot tag, then a soft one",
                12,
                true,
                vec![
                    step(2000, Publish, None, None, None, false),
                    step(2000, Purge, None, None, None, false),
                    step(7000, Publish, None, None, None, false),
                    step(7000, Purge, None, None, None, true),
                ],
            ),
            bypass(
                "shield-bypass",
                "the shield's consumer is held while the edges apply a purge (ordering on)",
                true,
            ),
            bypass(
                "shield-bypass-unordered",
                "the same with the ordering switched off: the classic failure",
                false,
            ),
            scenario(
                "restart",
                "edge-2 is killed during a series of purges and started again",
                10,
                true,
                vec![
                    step(1000, Publish, None, None, None, false),
                    step(1000, Purge, None, None, None, false),
                    step(2000, Kill, None, Some("edge-2"), None, false),
                    step(3000, Publish, Some("tag-1"), None, None, false),
                    step(3000, Purge, Some("tag-1"), None, None, false),
                    step(4000, Publish, Some("tag-2"), None, None, false),
                    step(4000, Purge, Some("tag-2"), None, None, false),
                    step(5000, Start, None, Some("edge-2"), None, false),
                    step(7000, Publish, Some("tag-3"), None, None, false),
                    step(7000, Purge, Some("tag-3"), None, None, false),
                ],
            ),
        ];
        Topology {
            nodes: vec![
                node("shield-1", "shield", None),
                node("edge-1", "edge", Some("shield-1")),
                node("edge-2", "edge", Some("shield-1")),
                node("edge-3", "edge", Some("shield-1")),
            ],
            origin: OriginSpec::default(),
            load: LoadSpec::default(),
            max_lag: Duration::from_secs(5),
            run: Vec::new(),
            scenarios,
        }
    }
}

impl Topology {
    /// Parses TOML text; errors carry the dotted path of the offending key.
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let de = toml::Deserializer::parse(text).map_err(|e| bad("", e.to_string().trim()))?;
        let topology: Topology = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            bad(
                if key == "." { String::new() } else { key },
                e.inner().message(),
            )
        })?;
        topology.validate()?;
        Ok(topology)
    }

    /// Every name refers to something that exists, every number is usable.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.nodes.is_empty() {
            return Err(bad("nodes", "name at least one node"));
        }
        let mut names = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let ok = !n.name.is_empty()
                && n.name.len() <= 64
                && n.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(bad(
                    format!("nodes[{i}].name"),
                    "1-64 letters, digits, `-` or `_`",
                ));
            }
            if !names.insert(n.name.as_str()) {
                return Err(bad(
                    format!("nodes[{i}].name"),
                    format!("`{}` is named twice", n.name),
                ));
            }
            if n.tier != "edge" && n.tier != "shield" {
                return Err(bad(
                    format!("nodes[{i}].tier"),
                    "must be `edge` or `shield`",
                ));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(s) = &n.shield {
                let is_shield = self
                    .nodes
                    .iter()
                    .any(|m| m.name == *s && m.tier == "shield");
                if n.tier != "edge" || !is_shield {
                    return Err(bad(
                        format!("nodes[{i}].shield"),
                        format!("`{s}` is not a shield of this topology (only edges name one)"),
                    ));
                }
            }
        }
        if !self.nodes.iter().any(|n| n.tier == "edge") {
            return Err(bad(
                "nodes",
                "name at least one edge (the load goes to edges)",
            ));
        }
        let o = &self.origin;
        if o.objects == 0 || o.objects > 1_000_000 {
            return Err(bad("origin.objects", "must be between 1 and 1000000"));
        }
        if o.tags == 0 || o.tags > o.objects {
            return Err(bad("origin.tags", "must be between 1 and origin.objects"));
        }
        for (tag, cc) in &o.cache_control_by_tag {
            let n: Option<usize> = tag.strip_prefix("tag-").and_then(|n| n.parse().ok());
            if n.is_none_or(|n| n >= o.tags) {
                return Err(bad(
                    format!("origin.cache_control_by_tag.{tag}"),
                    format!("`{tag}` is not one of tag-0 … tag-{}", o.tags - 1),
                ));
            }
            if http::HeaderValue::from_str(cc).is_err() {
                return Err(bad(
                    format!("origin.cache_control_by_tag.{tag}"),
                    "not a valid header value",
                ));
            }
        }
        if o.size > 16 * 1024 * 1024 {
            return Err(bad("origin.size", "must be at most 16 MiB"));
        }
        if !(0.0..=1.0).contains(&self.load.hot) {
            return Err(bad("load.hot", "must be between 0 and 1"));
        }
        if self.load.clients == 0 || self.load.rate == 0 {
            return Err(bad("load", "clients and rate must be at least 1"));
        }
        if self.max_lag < Duration::from_millis(500) {
            return Err(bad("max_lag", "must be at least 500ms"));
        }
        let mut scenario_names = BTreeSet::new();
        for (i, s) in self.scenarios.iter().enumerate() {
            if !scenario_names.insert(s.name.as_str()) {
                return Err(bad(
                    format!("scenarios[{i}].name"),
                    format!("`{}` is named twice", s.name),
                ));
            }
            if s.duration.is_zero() || s.duration > Duration::from_secs(600) {
                return Err(bad(
                    format!("scenarios[{i}].duration"),
                    "must be between 1ms and 10m",
                ));
            }
            for (j, st) in s.steps.iter().enumerate() {
                let key = |k: &str| format!("scenarios[{i}].steps[{j}].{k}");
                if st.at > s.duration {
                    return Err(bad(key("at"), "after the scenario's duration"));
                }
                if let Some(n) = &st.node {
                    if !names.contains(n.as_str()) {
                        return Err(bad(key("node"), format!("no node is named `{n}`")));
                    }
                }
                let needs_node = matches!(
                    st.action,
                    Action::Hold | Action::Release | Action::Kill | Action::Start
                );
                if needs_node && st.node.is_none() {
                    return Err(bad(key("node"), "this action needs a node"));
                }
                if let Some(t) = &st.tag {
                    let n: Option<usize> = t.strip_prefix("tag-").and_then(|n| n.parse().ok());
                    if n.is_none_or(|n| n >= o.tags) {
                        return Err(bad(
                            key("tag"),
                            format!("`{t}` is not one of tag-0 … tag-{}", o.tags - 1),
                        ));
                    }
                }
                if st.action == Action::Storm
                    && (st.rate.is_none_or(|r| r == 0 || r > 10_000) || st.lasting.is_none())
                {
                    return Err(bad(
                        key("rate"),
                        "a storm needs a rate of 1 to 10000 a second and `lasting`",
                    ));
                }
            }
        }
        for (i, r) in self.run.iter().enumerate() {
            if !scenario_names.contains(r.as_str()) {
                return Err(bad(
                    format!("run[{i}]"),
                    format!("no scenario is named `{r}`"),
                ));
            }
        }
        Ok(())
    }

    /// The scenarios to run: those named (or `run`, or all), in order.
    pub fn selected(&self, names: &[String]) -> Result<Vec<&Scenario>, TopologyError> {
        let names = if names.is_empty() { &self.run } else { names };
        if names.is_empty() {
            return Ok(self.scenarios.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.scenarios
                    .iter()
                    .find(|s| s.name == *n)
                    .ok_or_else(|| bad("--scenario", format!("no scenario is named `{n}`")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_topology_is_valid_and_round_trips() {
        let t = Topology::default();
        t.validate().unwrap();
        let text = toml::to_string(&t).unwrap();
        let again = Topology::parse(&text).unwrap();
        assert_eq!(again.scenarios.len(), t.scenarios.len());
    }

    #[test]
    fn the_shipped_example_is_the_default() {
        let text = include_str!("../../../examples/testbed.toml");
        let shipped = Topology::parse(text).unwrap();
        assert_eq!(
            serde_json::to_value(&shipped).unwrap(),
            serde_json::to_value(Topology::default()).unwrap()
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[[nodes]]\nname = \"e\"\ntier = \"middle\"\n", "nodes[0].tier"),
            ("max_lag = \"soon\"\n", "max_lag"),
            ("[origin]\nobjects = 0\n", "origin.objects"),
            (
                "[[scenarios]]\nname = \"x\"\nduration = \"5s\"\n[[scenarios.steps]]\nat = \"1s\"\ndo = \"hold\"\nnode = \"edge-9\"\n",
                "scenarios[0].steps[0].node",
            ),
            (
                "[[scenarios]]\nname = \"x\"\nduration = \"5 parsecs\"\nsteps = []\n",
                "scenarios[0].duration",
            ),
            (
                "[[scenarios]]\nname = \"x\"\nduration = \"5s\"\n[[scenarios.steps]]\nat = \"1s\"\ndo = \"explode\"\n",
                "scenarios[0].steps[0].do",
            ),
            ("run = [\"nope\"]\n", "run[0]"),
        ];
        for (text, key) in cases {
            // Scenarios given in a file replace the defaults; nodes too.
            let e = Topology::parse(text).expect_err(text);
            assert_eq!(e.key, key, "{text:?} gave {e}");
        }
    }
}
