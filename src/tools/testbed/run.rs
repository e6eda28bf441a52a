//! Running one scenario: the nodes (real Lacquer servers, in this process) on a
//! fresh stream of the run's `redis-server`, client load on every edge, and the
//! scenario's steps at their times. What clients were served, what the origin
//! was asked and what each purge answered are recorded as they happen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::task::JoinHandle;

use crate::config::{
    ConfigFile, FleetSection, Operation, OriginSection, Settings, Tier, TokenSection,
};
use crate::server::Running;

use super::origin::{parse_body, period, VersionedOrigin};
use super::topology::{Action, Scenario, Step, Topology};

pub(super) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What one client request got.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    /// Milliseconds since the scenario's start.
    pub t_ms: u64,
    /// The edge's index in the topology's nodes.
    pub node: usize,
    pub obj: usize,
    pub tag: usize,
    /// The version served (0: no version, e.g. an error).
    pub version: u32,
    pub status: u16,
    pub latency_us: u64,
    pub hit: bool,
}

/// A purge as it went: sent, answered, and applied per node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PurgeRecord {
    pub tag: String,
    pub via: String,
    pub soft: bool,
    /// The version the origin serves for the tag when the purge is sent: anything
    /// older is old.
    pub version: u32,
    pub sent_ms: u64,
    pub answered_ms: Option<u64>,
    pub status: u16,
    pub complete: Option<bool>,
    /// Each node's state in the answer.
    pub answer_nodes: BTreeMap<String, String>,
    /// When each node had applied it in stream order (as it reported).
    pub applied_ms: BTreeMap<String, u64>,
    /// Its stream entry.
    pub id: Option<String>,
}

/// A step that is not a purge, as it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub t_ms: u64,
    pub what: String,
    pub node: Option<String>,
}

/// A storm's own figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StormRecord {
    pub start_ms: u64,
    pub end_ms: u64,
    pub sent: u64,
    pub failed: u64,
    /// The largest bus lag any node reported while it lasted.
    pub max_lag_ms: BTreeMap<String, u64>,
}

/// Everything a scenario recorded.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timeline {
    pub samples: Vec<Sample>,
    pub purges: Vec<PurgeRecord>,
    pub events: Vec<Event>,
    pub origin: Vec<super::origin::OriginHit>,
    pub storms: Vec<StormRecord>,
    /// When a node was (re)started, per node.
    pub started_ms: BTreeMap<String, Vec<u64>>,
    /// What each node itself counted at the end (its `/.lacquer/metrics`): the
    /// requests it sent to the node or origin behind it. A second observer of the
    /// origin's load, beside the origin's own log.
    pub node_origin_requests: BTreeMap<String, u64>,
    /// Each node's position in the stream as it moved: (ms, stream id).
    pub positions: BTreeMap<String, Vec<(u64, String)>>,
}

type Positions = Arc<Mutex<BTreeMap<String, Vec<(u64, crate::purge::StreamId)>>>>;

/// Records every move of a node's stream position until the node goes.
fn monitor(
    running: &Running,
    name: &str,
    epoch: Instant,
    positions: &Positions,
) -> Option<JoinHandle<()>> {
    let mut rx = running.proxy.fleet_applied()?;
    let (name, positions) = (name.to_string(), positions.clone());
    let now = *rx.borrow_and_update();
    if let Ok(mut p) = positions.lock() {
        p.entry(name.clone()).or_default().push((ms(epoch), now));
    }
    Some(tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let id = *rx.borrow_and_update();
            if let Ok(mut p) = positions.lock() {
                p.entry(name.clone()).or_default().push((ms(epoch), id));
            }
        }
    }))
}

#[derive(Clone)]
pub(super) struct Env {
    pub redis_url: String,
    pub token_file: std::path::PathBuf,
    pub token: String,
    pub client: HttpClient,
}

fn ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

struct Node {
    name: String,
    listen: SocketAddr,
    running: Option<Running>,
}

/// Starts (or starts again, on the same address) node `i` of the topology.
async fn start_node(
    topology: &Topology,
    scenario: &Scenario,
    env: &Env,
    stream: &str,
    origin: SocketAddr,
    nodes: &[Node],
    i: usize,
) -> std::io::Result<Running> {
    let spec = &topology.nodes[i];
    let upstream = match &spec.shield {
        Some(s) => nodes
            .iter()
            .find(|n| n.name == *s)
            .map_or(origin, |n| n.listen),
        None => origin,
    };
    let mut file = ConfigFile::default();
    file.server.listen = nodes[i].listen;
    file.server.via = spec.name.clone();
    file.log.access = false;
    file.origins.push(OriginSection {
        name: "testbed".into(),
        url: format!("http://{upstream}"),
        ..OriginSection::default()
    });
    file.admin.tokens.push(TokenSection {
        name: "testbed".into(),
        env: None,
        file: Some(env.token_file.display().to_string()),
        operations: vec![Operation::Tag, Operation::Url],
        tags: Vec::new(),
        hosts: Vec::new(),
    });
    file.fleet = Some(FleetSection {
        redis: env.redis_url.clone(),
        stream: stream.to_string(),
        node: Some(spec.name.clone()),
        tier: if spec.tier == "shield" {
            Tier::Shield
        } else {
            Tier::Edge
        },
        heartbeat: Duration::from_millis(250),
        max_lag: topology.max_lag,
        shield_order: scenario.shield_order,
        ..FleetSection::default()
    });
    let settings = Settings::from_file(file)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let running = crate::server::start(settings).await?;
    if let Some(mut recorded) = running.proxy.fleet_recorded() {
        let _ = tokio::time::timeout(Duration::from_secs(10), recorded.wait_for(|r| *r)).await;
    }
    Ok(running)
}

/// What starting a node of a scenario needs.
struct Launch<'a> {
    topology: &'a Topology,
    scenario: &'a Scenario,
    env: &'a Env,
    stream: &'a str,
    origin: SocketAddr,
    epoch: Instant,
    positions: &'a Positions,
}

impl Launch<'_> {
    /// Starts node `i` (again), watches its position and records when.
    async fn start(
        &self,
        nodes: &mut [Node],
        i: usize,
        monitors: &mut Vec<JoinHandle<()>>,
        started: &mut BTreeMap<String, Vec<u64>>,
    ) -> std::io::Result<()> {
        let running = start_node(
            self.topology,
            self.scenario,
            self.env,
            self.stream,
            self.origin,
            nodes,
            i,
        )
        .await?;
        monitors.extend(monitor(
            &running,
            &nodes[i].name,
            self.epoch,
            self.positions,
        ));
        nodes[i].running = Some(running);
        started
            .entry(nodes[i].name.clone())
            .or_default()
            .push(ms(self.epoch));
        Ok(())
    }
}

fn free_addr() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

async fn post(
    env: &Env,
    addr: SocketAddr,
    body: serde_json::Value,
) -> Option<(u16, serde_json::Value)> {
    let req = http::Request::post(format!("http://{addr}/.lacquer/purge"))
        .header("authorization", format!("Bearer {}", env.token))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .ok()?;
    let res = env.client.request(req).await.ok()?;
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&bytes).unwrap_or_default()))
}

async fn fleet_lag(env: &Env, addr: SocketAddr) -> BTreeMap<String, u64> {
    let Ok(req) = http::Request::get(format!("http://{addr}/.lacquer/fleet"))
        .header("authorization", format!("Bearer {}", env.token))
        .body(Full::default())
    else {
        return BTreeMap::new();
    };
    let Ok(res) = env.client.request(req).await else {
        return BTreeMap::new();
    };
    let Ok(bytes) = res.into_body().collect().await else {
        return BTreeMap::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes.to_bytes()).unwrap_or_default();
    v["nodes"]
        .as_object()
        .map(|nodes| {
            nodes
                .iter()
                .map(|(n, s)| (n.clone(), s["lag_ms"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// The requests a node sent to what is behind it, as its own metrics count them.
async fn origin_requests_counted(env: &Env, addr: SocketAddr) -> Option<u64> {
    let req = http::Request::get(format!("http://{addr}/.lacquer/metrics"))
        .body(Full::default())
        .ok()?;
    let res = env.client.request(req).await.ok()?;
    let text = res.into_body().collect().await.ok()?.to_bytes();
    let text = String::from_utf8_lossy(&text);
    Some(
        text.lines()
            .filter(|l| l.starts_with("lacquer_origin_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// Client load on one edge until `stop`: `clients` loops, `rate` a second in all.
fn load(
    topology: &Topology,
    env: &Env,
    node: usize,
    addr: SocketAddr,
    epoch: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let l = &topology.load;
    let o = &topology.origin;
    (0..l.clients)
        .map(|c| {
            let client = env.client.clone();
            let samples = samples.clone();
            let mut stop = stop.clone();
            let (objects, tags, hot) = (o.objects, o.tags, l.hot);
            let pause = period(l.clients, l.rate);
            let mut rng = fastrand::Rng::with_seed((node * 1000 + c) as u64);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(pause);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    let obj = if rng.f64() < hot {
                        // An object of tag-0.
                        rng.usize(0..objects.div_ceil(tags)) * tags
                    } else {
                        rng.usize(0..objects)
                    }
                    .min(objects - 1);
                    let Ok(req) = http::Request::get(format!("http://{addr}/obj/{obj}"))
                        .body(Full::default())
                    else {
                        continue;
                    };
                    let sent = Instant::now();
                    let t_ms = ms(epoch);
                    let (status, version, hit) = match client.request(req).await {
                        Ok(res) => {
                            let status = res.status().as_u16();
                            let hit = res
                                .headers()
                                .get("cache-status")
                                .and_then(|v| v.to_str().ok())
                                .is_some_and(|v| {
                                    v.rsplit(',').next().is_some_and(|e| e.contains("; hit"))
                                });
                            let body = res.into_body().collect().await.map(|b| b.to_bytes());
                            let version =
                                body.ok().and_then(|b| parse_body(&b)).map_or(0, |(_, v)| v);
                            (status, version, hit)
                        }
                        Err(_) => (0, 0, false),
                    };
                    let sample = Sample {
                        t_ms,
                        node,
                        obj,
                        tag: obj % tags,
                        version,
                        status,
                        latency_us: u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX),
                        hit,
                    };
                    if let Ok(mut s) = samples.lock() {
                        s.push(sample);
                    }
                }
            })
        })
        .collect()
}

fn tag_index(step: &Step) -> usize {
    step.tag
        .as_deref()
        .and_then(|t| t.strip_prefix("tag-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Runs one scenario and returns what happened. `progress` is told the elapsed
/// share now and then.
pub(super) async fn scenario(
    topology: &Topology,
    scenario: &Scenario,
    env: &Env,
    run_id: &str,
    progress: &(dyn Fn(&str, f64) + Sync),
) -> std::io::Result<Timeline> {
    let epoch = Instant::now();
    let origin = VersionedOrigin::start(&topology.origin, epoch).await?;
    let stream = format!("testbed:{run_id}:{}", scenario.name);
    let mut nodes: Vec<Node> = Vec::new();
    for spec in &topology.nodes {
        nodes.push(Node {
            name: spec.name.clone(),
            listen: free_addr()?,
            running: None,
        });
    }
    let mut timeline = Timeline::default();
    // Shields first: edges go through them.
    let order: Vec<usize> = (0..nodes.len())
        .filter(|i| topology.nodes[*i].tier == "shield")
        .chain((0..nodes.len()).filter(|i| topology.nodes[*i].tier == "edge"))
        .collect();
    let positions: Positions = Arc::default();
    let mut monitors = Vec::new();
    let launch = Launch {
        topology,
        scenario,
        env,
        stream: &stream,
        origin: origin.addr,
        epoch,
        positions: &positions,
    };
    for &i in &order {
        launch
            .start(&mut nodes, i, &mut monitors, &mut timeline.started_ms)
            .await?;
    }
    let edges: Vec<usize> = (0..nodes.len())
        .filter(|i| topology.nodes[*i].tier == "edge")
        .collect();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut loads = Vec::new();
    for &e in &edges {
        loads.extend(load(
            topology,
            env,
            e,
            nodes[e].listen,
            epoch,
            samples.clone(),
            stop_rx.clone(),
        ));
    }
    let purges: Arc<Mutex<Vec<PurgeRecord>>> = Arc::default();
    let storms: Arc<Mutex<Vec<StormRecord>>> = Arc::default();
    let mut background = Vec::new();
    let mut steps: Vec<&Step> = scenario.steps.iter().collect();
    steps.sort_by_key(|s| s.at);
    let start = tokio::time::Instant::now();
    let end = start + scenario.duration;
    let mut steps = steps.into_iter().peekable();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let next_at = steps.peek().map_or(end, |s| (start + s.at).min(end));
        tokio::select! {
            _ = tokio::time::sleep_until(next_at) => {}
            _ = tick.tick() => {
                progress(&scenario.name, start.elapsed().as_secs_f64() / scenario.duration.as_secs_f64());
                continue;
            }
        }
        let Some(step) = steps.next_if(|s| start + s.at <= tokio::time::Instant::now()) else {
            if tokio::time::Instant::now() >= end {
                break;
            }
            continue;
        };
        let node_idx = step
            .node
            .as_ref()
            .and_then(|n| nodes.iter().position(|m| m.name == *n));
        let node_name = step.node.clone();
        match step.action {
            Action::Publish => {
                let v = origin.publish(tag_index(step));
                timeline.events.push(Event {
                    t_ms: ms(epoch),
                    what: format!("publish tag-{} v{v}", tag_index(step)),
                    node: None,
                });
            }
            Action::Purge => {
                let via = node_idx.unwrap_or(edges[0]);
                let tag = tag_index(step);
                let record = PurgeRecord {
                    tag: format!("tag-{tag}"),
                    via: nodes[via].name.clone(),
                    soft: step.soft,
                    version: origin.version(tag),
                    sent_ms: ms(epoch),
                    answered_ms: None,
                    status: 0,
                    complete: None,
                    answer_nodes: BTreeMap::new(),
                    applied_ms: BTreeMap::new(),
                    id: None,
                };
                let addr = nodes[via].listen;
                let wait = step.wait.unwrap_or(Duration::from_secs(10));
                let body = serde_json::json!({
                    "tags": [record.tag],
                    "soft": step.soft,
                    "wait": format!("{}ms", wait.as_millis()),
                });
                let env_client = env.clone();
                let purges = purges.clone();
                background.push(tokio::spawn(async move {
                    let mut record = record;
                    if let Some((status, answer)) = post(&env_client, addr, body).await {
                        record.status = status;
                        record.answered_ms = Some(ms(epoch));
                        record.complete = answer["fleet"]["complete"].as_bool();
                        record.id = answer["fleet"]["id"].as_str().map(String::from);
                        if let Some(states) = answer["fleet"]["nodes"].as_object() {
                            record.answer_nodes = states
                                .iter()
                                .map(|(n, s)| (n.clone(), s.as_str().unwrap_or("?").to_string()))
                                .collect();
                        }
                    }
                    if let Ok(mut p) = purges.lock() {
                        p.push(record);
                    }
                }));
            }
            Action::Hold | Action::Release => {
                if let Some(r) = node_idx.and_then(|i| nodes[i].running.as_ref()) {
                    r.proxy.hold_fleet(step.action == Action::Hold);
                }
                timeline.events.push(Event {
                    t_ms: ms(epoch),
                    what: if step.action == Action::Hold {
                        "hold".into()
                    } else {
                        "release".into()
                    },
                    node: node_name,
                });
            }
            Action::Kill => {
                if let Some(i) = node_idx {
                    if let Some(r) = nodes[i].running.take() {
                        // Stops accepting and closes its connections (after the
                        // request each is serving); its cache goes with it.
                        r.shutdown(Duration::from_millis(200)).await;
                    }
                }
                timeline.events.push(Event {
                    t_ms: ms(epoch),
                    what: "kill".into(),
                    node: node_name,
                });
            }
            Action::Start => {
                if let Some(i) = node_idx {
                    if nodes[i].running.is_none() {
                        launch
                            .start(&mut nodes, i, &mut monitors, &mut timeline.started_ms)
                            .await?;
                    }
                }
                timeline.events.push(Event {
                    t_ms: ms(epoch),
                    what: "start".into(),
                    node: node_name,
                });
            }
            Action::Storm => {
                let rate = step.rate.unwrap_or(100);
                let lasting = step.lasting.unwrap_or(Duration::from_secs(5));
                let targets: Vec<SocketAddr> = edges.iter().map(|&e| nodes[e].listen).collect();
                let watch_at = targets[0];
                let env_client = env.clone();
                let storms = storms.clone();
                background.push(tokio::spawn(async move {
                    let env = Arc::new(env_client);
                    let mut record = StormRecord {
                        start_ms: ms(epoch),
                        ..StormRecord::default()
                    };
                    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let until = tokio::time::Instant::now() + lasting;
                    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
                    let mut lag_tick = tokio::time::interval(Duration::from_millis(500));
                    let mut i = 0u64;
                    let mut sends = Vec::new();
                    while tokio::time::Instant::now() < until {
                        tokio::select! {
                            _ = tick.tick() => {
                                i += 1;
                                let (env, sent, failed) = (env.clone(), sent.clone(), failed.clone());
                                let target = targets[(i as usize) % targets.len()];
                                sends.push(tokio::spawn(async move {
                                    let ok = post(&env, target, serde_json::json!({"tags": [format!("storm-{i}")]}))
                                        .await
                                        .is_some_and(|(s, _)| s == 200);
                                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    if !ok {
                                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    }
                                }));
                            }
                            _ = lag_tick.tick() => {
                                for (n, lag) in fleet_lag(&env, watch_at).await {
                                    let m = record.max_lag_ms.entry(n).or_default();
                                    *m = (*m).max(lag);
                                }
                            }
                        }
                    }
                    for s in sends {
                        let _ = s.await;
                    }
                    record.end_ms = ms(epoch);
                    record.sent = sent.load(std::sync::atomic::Ordering::Relaxed);
                    record.failed = failed.load(std::sync::atomic::Ordering::Relaxed);
                    if let Ok(mut s) = storms.lock() {
                        s.push(record);
                    }
                }));
            }
        }
    }
    progress(&scenario.name, 1.0);
    stop_tx.send_replace(true);
    for l in loads {
        let _ = l.await;
    }
    for b in background {
        // Confirmations are bounded by their `wait`, storms by their length.
        let _ = tokio::time::timeout(Duration::from_secs(15), b).await;
    }
    for n in &nodes {
        if n.running.is_some() {
            if let Some(count) = origin_requests_counted(env, n.listen).await {
                timeline.node_origin_requests.insert(n.name.clone(), count);
            }
        }
    }
    drop(nodes);
    for m in monitors {
        m.abort();
    }
    let positions = positions.lock().map(|p| p.clone()).unwrap_or_default();
    timeline.samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    timeline.samples.sort_by_key(|s| s.t_ms);
    timeline.purges = purges.lock().map(|p| p.clone()).unwrap_or_default();
    timeline.purges.sort_by_key(|p| p.sent_ms);
    // When each node had applied each purge: the first position at or past it
    // after the purge was sent (a restarted node's later moves included).
    for p in &mut timeline.purges {
        let Some(id) =
            p.id.as_deref()
                .and_then(|i| i.parse::<crate::purge::StreamId>().ok())
        else {
            continue;
        };
        for (name, moves) in &positions {
            if let Some((t, _)) = moves
                .iter()
                .find(|(t, at)| *at >= id && *t + 1 >= p.sent_ms)
            {
                p.applied_ms.insert(name.clone(), *t);
            }
        }
    }
    timeline.positions = positions
        .into_iter()
        .map(|(n, moves)| {
            (
                n,
                moves
                    .into_iter()
                    .map(|(t, id)| (t, id.to_string()))
                    .collect(),
            )
        })
        .collect();
    timeline.storms = storms.lock().map(|s| s.clone()).unwrap_or_default();
    timeline.origin = origin.take_hits();
    Ok(timeline)
}
