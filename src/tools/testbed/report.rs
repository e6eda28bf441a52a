//! The figures of a run, measured from what was recorded (what clients were
//! served, what the origin was asked, what purges answered), never from a
//! scenario's intent; and their renderings: the terminal table, `report.json`
//! and a self-contained `report.html` with hand-written SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::run::{PurgeRecord, Sample, Timeline};
use super::topology::{Scenario, Topology};

/// One node's figures for one purge.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeFigures {
    /// From the purge being sent until the last old version this node served
    /// (0: none after the purge was sent).
    pub window_ms: u64,
    /// Old versions served after the purge's answer said it was confirmed.
    pub old_after_confirmed: u64,
    /// Old versions served after this node had applied the purge.
    pub old_after_applied: u64,
    /// When the node applied it, from the purge being sent.
    pub applied_after_ms: Option<u64>,
    /// What the purge's answer said of this node.
    pub answer: Option<String>,
    /// Distinct objects served old after this node applied the purge (stored
    /// again from a shield that had not applied it).
    pub objects_refilled_old: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PurgeFigures {
    pub tag: String,
    pub via: String,
    pub soft: bool,
    pub sent_ms: u64,
    pub answered_after_ms: Option<u64>,
    pub status: u16,
    pub complete: Option<bool>,
    /// Origin requests from the purge being sent until the next purge (or the end),
    /// and the most in any one second.
    pub origin_requests: u64,
    pub origin_peak_per_s: u64,
    /// Client latency p99 in the 2 s after the purge, in ms.
    pub latency_p99_after_ms: f64,
    pub nodes: BTreeMap<String, NodeFigures>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StormFigures {
    pub purges_sent: u64,
    pub purges_failed: u64,
    pub per_second: f64,
    /// Per edge: hits before the storm and during it.
    pub quiet: BTreeMap<String, Latency>,
    pub during: BTreeMap<String, Latency>,
    pub max_bus_lag_ms: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub about: String,
    pub duration_ms: u64,
    pub shield_order: bool,
    pub requests: u64,
    pub purges: Vec<PurgeFigures>,
    pub storms: Vec<StormFigures>,
    /// Per restarted node: from its (re)start until it had applied every purge
    /// sent before, and the old versions it served after coming back.
    pub restarts: BTreeMap<String, (Option<u64>, u64)>,
    /// Origin requests per 250 ms.
    pub origin_per_250ms: Vec<u64>,
    pub timeline: Timeline,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub nodes: Vec<(String, String)>,
    pub scenarios: Vec<ScenarioReport>,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

fn latency<'a>(samples: impl Iterator<Item = &'a Sample>) -> Latency {
    let mut l = Latency::default();
    let mut times = Vec::new();
    for s in samples {
        l.requests += 1;
        if s.status != 200 {
            l.errors += 1;
        } else if s.hit {
            times.push(s.latency_us);
        }
    }
    times.sort_unstable();
    l.p50_ms = percentile(&times, 0.5);
    l.p99_ms = percentile(&times, 0.99);
    l
}

/// The figures of one purge, per node, from the samples.
fn purge_figures(
    topology: &Topology,
    t: &Timeline,
    p: &PurgeRecord,
    until_ms: u64,
) -> PurgeFigures {
    let tag: usize = p
        .tag
        .strip_prefix("tag-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let old =
        |s: &&Sample| s.tag == tag && s.version > 0 && s.version < p.version && s.t_ms >= p.sent_ms;
    let mut nodes = BTreeMap::new();
    for (i, spec) in topology.nodes.iter().enumerate() {
        if spec.tier != "edge" {
            // Clients only talk to edges; a shield's figures are its edges'.
            nodes.insert(
                spec.name.clone(),
                NodeFigures {
                    applied_after_ms: p
                        .applied_ms
                        .get(&spec.name)
                        .map(|a| a.saturating_sub(p.sent_ms)),
                    answer: p.answer_nodes.get(&spec.name).cloned(),
                    ..NodeFigures::default()
                },
            );
            continue;
        }
        let applied = p.applied_ms.get(&spec.name).copied();
        let mine: Vec<&Sample> = t
            .samples
            .iter()
            .filter(|s| s.node == i)
            .filter(old)
            .collect();
        let last = mine.iter().map(|s| s.t_ms).max();
        let mut refilled: Vec<usize> = mine
            .iter()
            .filter(|s| applied.is_some_and(|a| s.t_ms > a))
            .map(|s| s.obj)
            .collect();
        refilled.sort_unstable();
        refilled.dedup();
        nodes.insert(
            spec.name.clone(),
            NodeFigures {
                window_ms: last.map_or(0, |l| l.saturating_sub(p.sent_ms)),
                old_after_confirmed: p
                    .answered_ms
                    .filter(|_| p.complete == Some(true))
                    .map_or(0, |a| mine.iter().filter(|s| s.t_ms > a).count() as u64),
                old_after_applied: applied
                    .map_or(0, |a| mine.iter().filter(|s| s.t_ms > a).count() as u64),
                applied_after_ms: applied.map(|a| a.saturating_sub(p.sent_ms)),
                answer: p.answer_nodes.get(&spec.name).cloned(),
                objects_refilled_old: refilled.len() as u64,
            },
        );
    }
    let window: Vec<u64> = t
        .origin
        .iter()
        .filter(|o| o.t_ms >= p.sent_ms && o.t_ms < until_ms)
        .map(|o| o.t_ms)
        .collect();
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    for o in &window {
        *per_second.entry((o - p.sent_ms) / 1000).or_default() += 1;
    }
    let mut after: Vec<u64> = t
        .samples
        .iter()
        .filter(|s| s.t_ms >= p.sent_ms && s.t_ms < p.sent_ms + 2000 && s.status == 200)
        .map(|s| s.latency_us)
        .collect();
    after.sort_unstable();
    PurgeFigures {
        tag: p.tag.clone(),
        via: p.via.clone(),
        soft: p.soft,
        sent_ms: p.sent_ms,
        answered_after_ms: p.answered_ms.map(|a| a.saturating_sub(p.sent_ms)),
        status: p.status,
        complete: p.complete,
        origin_requests: window.len() as u64,
        origin_peak_per_s: per_second.values().copied().max().unwrap_or(0),
        latency_p99_after_ms: percentile(&after, 0.99),
        nodes,
    }
}

pub fn scenario_report(topology: &Topology, s: &Scenario, t: Timeline) -> ScenarioReport {
    let duration_ms = u64::try_from(s.duration.as_millis()).unwrap_or(u64::MAX);
    let mut purges = Vec::new();
    for (i, p) in t.purges.iter().enumerate() {
        let until = t.purges.get(i + 1).map_or(duration_ms, |n| n.sent_ms);
        purges.push(purge_figures(topology, &t, p, until));
    }
    let edge_name = |i: usize| topology.nodes[i].name.clone();
    let storms =
        t.storms
            .iter()
            .map(|st| {
                let mut quiet = BTreeMap::new();
                let mut during = BTreeMap::new();
                for (i, spec) in topology.nodes.iter().enumerate() {
                    if spec.tier != "edge" {
                        continue;
                    }
                    quiet.insert(
                        edge_name(i),
                        latency(
                            t.samples
                                .iter()
                                .filter(|x| x.node == i && x.t_ms < st.start_ms),
                        ),
                    );
                    during.insert(
                        edge_name(i),
                        latency(t.samples.iter().filter(|x| {
                            x.node == i && x.t_ms >= st.start_ms && x.t_ms < st.end_ms
                        })),
                    );
                }
                let secs = (st.end_ms.saturating_sub(st.start_ms)) as f64 / 1000.0;
                StormFigures {
                    purges_sent: st.sent,
                    purges_failed: st.failed,
                    per_second: if secs > 0.0 {
                        st.sent as f64 / secs
                    } else {
                        0.0
                    },
                    quiet,
                    during,
                    max_bus_lag_ms: st.max_lag_ms.clone(),
                }
            })
            .collect();
    let mut restarts = BTreeMap::new();
    for (name, starts) in &t.started_ms {
        let Some(&back) = starts.get(1) else { continue };
        let Some(i) = topology.nodes.iter().position(|n| n.name == *name) else {
            continue;
        };
        // Caught up: its position, after it came back, reached the last purge sent
        // before.
        let last: Option<crate::purge::StreamId> = t
            .purges
            .iter()
            .filter(|p| p.sent_ms < back)
            .filter_map(|p| p.id.as_deref()?.parse().ok())
            .max();
        let caught_up = last.and_then(|last| {
            t.positions.get(name)?.iter().find_map(|(at, id)| {
                let id: crate::purge::StreamId = id.parse().ok()?;
                (*at >= back && id >= last).then(|| at.saturating_sub(back))
            })
        });
        let old_after: u64 = t
            .purges
            .iter()
            .filter(|p| p.sent_ms < back)
            .map(|p| {
                let tag: usize = p
                    .tag
                    .strip_prefix("tag-")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                t.samples
                    .iter()
                    .filter(|s| {
                        s.node == i
                            && s.t_ms > back
                            && s.tag == tag
                            && s.version > 0
                            && s.version < p.version
                    })
                    .count() as u64
            })
            .sum();
        restarts.insert(name.clone(), (caught_up, old_after));
    }
    let buckets = (duration_ms / 250 + 1) as usize;
    let mut origin_per_250ms = vec![0u64; buckets];
    for o in &t.origin {
        if let Some(b) = origin_per_250ms.get_mut((o.t_ms / 250) as usize) {
            *b += 1;
        }
    }
    ScenarioReport {
        name: s.name.clone(),
        about: s.about.clone(),
        duration_ms,
        shield_order: s.shield_order,
        requests: t.samples.len() as u64,
        purges,
        storms,
        restarts,
        origin_per_250ms,
        timeline: t,
    }
}

fn ms_text(v: Option<u64>) -> String {
    v.map_or("—".into(), |v| format!("{v} ms"))
}

/// The summary table, per scenario and node.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    for s in &report.scenarios {
        let _ = writeln!(
            out,
            "\n== {} — {} ({} client requests)",
            s.name, s.about, s.requests
        );
        for (k, p) in s.purges.iter().enumerate() {
            let _ = writeln!(
                out,
                "purge {} of {} via {}{}: answered {} ({}), complete {}; origin: {} requests, peak {}/s; client p99 in the 2 s after: {:.1} ms",
                k + 1,
                p.tag,
                p.via,
                if p.soft { " (soft)" } else { "" },
                ms_text(p.answered_after_ms),
                p.status,
                p.complete.map_or("—".into(), |c| c.to_string()),
                p.origin_requests,
                p.origin_peak_per_s,
                p.latency_p99_after_ms,
            );
            let _ = writeln!(
                out,
                "  {:<10} {:>10} {:>12} {:>13} {:>11} {:>10} {:>9}",
                "node",
                "answer",
                "applied",
                "stale window",
                "old>confirm",
                "old>applied",
                "refilled"
            );
            for (name, n) in &p.nodes {
                let _ = writeln!(
                    out,
                    "  {:<10} {:>10} {:>12} {:>13} {:>11} {:>10} {:>9}",
                    name,
                    n.answer.as_deref().unwrap_or("—"),
                    ms_text(n.applied_after_ms),
                    format!("{} ms", n.window_ms),
                    n.old_after_confirmed,
                    n.old_after_applied,
                    n.objects_refilled_old,
                );
            }
        }
        for st in &s.storms {
            let _ = writeln!(
                out,
                "storm: {} purges ({:.0}/s), {} failed",
                st.purges_sent, st.per_second, st.purges_failed
            );
            for (name, q) in &st.quiet {
                let d = &st.during[name];
                let _ = writeln!(
                    out,
                    "  {:<10} hits p50 {:.2} → {:.2} ms, p99 {:.2} → {:.2} ms; errors {}; bus lag max {} ms",
                    name,
                    q.p50_ms,
                    d.p50_ms,
                    q.p99_ms,
                    d.p99_ms,
                    d.errors,
                    st.max_bus_lag_ms.get(name).copied().unwrap_or(0)
                );
            }
        }
        for (name, (caught_up, old)) in &s.restarts {
            let _ = writeln!(
                out,
                "restart of {name}: caught up {} after it came back; old versions served after: {old}",
                ms_text(*caught_up)
            );
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A timeline of versions served per edge (the purged tags' objects only): green
/// new, red old; purges as blue lines, confirmations dashed, faults orange.
fn timeline_svg(topology: &Topology, s: &ScenarioReport) -> String {
    let width = 900.0;
    let left = 80.0;
    let row = 28.0;
    let edges: Vec<usize> = (0..topology.nodes.len())
        .filter(|i| topology.nodes[*i].tier == "edge")
        .collect();
    let height = row * edges.len() as f64 + 30.0;
    let x = |t: u64| left + (t as f64 / s.duration_ms.max(1) as f64) * (width - left - 10.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" role=\"img\">"
    );
    let tags: Vec<(usize, u32, u64)> = s
        .timeline
        .purges
        .iter()
        .map(|p| {
            (
                p.tag
                    .strip_prefix("tag-")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                p.version,
                p.sent_ms,
            )
        })
        .collect();
    for (r, &i) in edges.iter().enumerate() {
        let y = 10.0 + row * r as f64;
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{}\" font-size=\"12\">{}</text><line x1=\"{left}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#ddd\"/>",
            y + 14.0,
            esc(&topology.nodes[i].name),
            width - 10.0,
            y + 10.0,
            y + 10.0
        );
        // At most ~2 ticks per pixel column and colour.
        let mut drawn = std::collections::HashSet::new();
        for smp in s.timeline.samples.iter().filter(|x| x.node == i) {
            let Some(&(_, version, sent)) = tags.iter().find(|(t, _, _)| *t == smp.tag) else {
                continue;
            };
            if smp.version == 0 {
                continue;
            }
            let old = smp.version < version && smp.t_ms >= sent;
            let colour = if old {
                "#d33"
            } else if smp.version >= version {
                "#2a2"
            } else {
                "#999"
            };
            let px = x(smp.t_ms).round() as i64;
            if drawn.insert((px, colour)) {
                let _ = write!(
                    svg,
                    "<rect x=\"{px}\" y=\"{}\" width=\"2\" height=\"16\" fill=\"{colour}\"/>",
                    y + 2.0
                );
            }
        }
    }
    for e in &s.timeline.events {
        // A new version published is not a fault: its own colour.
        let colour = if e.what.starts_with("publish") {
            "#a3c"
        } else {
            "#e80"
        };
        let _ = write!(
            svg,
            "<line x1=\"{0}\" x2=\"{0}\" y1=\"0\" y2=\"{1}\" stroke=\"{colour}\" stroke-width=\"2\"><title>{2}</title></line>",
            x(e.t_ms),
            height - 20.0,
            esc(&format!("{} {}", e.what, e.node.as_deref().unwrap_or("")))
        );
    }
    for p in &s.timeline.purges {
        let _ = write!(
            svg,
            "<line x1=\"{0}\" x2=\"{0}\" y1=\"0\" y2=\"{1}\" stroke=\"#36c\" stroke-width=\"2\"><title>purge {2} sent</title></line>",
            x(p.sent_ms),
            height - 20.0,
            esc(&p.tag)
        );
        if let Some(a) = p.answered_ms {
            let _ = write!(
                svg,
                "<line x1=\"{0}\" x2=\"{0}\" y1=\"0\" y2=\"{1}\" stroke=\"#36c\" stroke-dasharray=\"4 3\"><title>answered</title></line>",
                x(a),
                height - 20.0
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{}\" font-size=\"11\">0 s</text><text x=\"{}\" y=\"{}\" font-size=\"11\">{:.1} s</text></svg>",
        height - 4.0,
        width - 50.0,
        height - 4.0,
        s.duration_ms as f64 / 1000.0
    );
    svg
}

fn bars_svg(values: &[(String, f64)], unit: &str, colour: &str) -> String {
    let width = 900.0;
    let bar = 18.0;
    let height = bar * values.len() as f64 + 10.0;
    let max = values.iter().map(|(_, v)| *v).fold(1.0_f64, f64::max);
    let mut svg =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">");
    for (i, (label, v)) in values.iter().enumerate() {
        let y = 5.0 + bar * i as f64;
        let w = (v / max) * (width - 260.0);
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"160\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{v:.0} {unit}</text>",
            y + 13.0,
            esc(label),
            bar - 4.0,
            165.0 + w,
            y + 13.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn origin_svg(s: &ScenarioReport) -> String {
    let width = 900.0;
    let height = 120.0;
    let n = s.origin_per_250ms.len().max(1) as f64;
    let max = s.origin_per_250ms.iter().copied().max().unwrap_or(1).max(1) as f64;
    let w = (width - 20.0) / n;
    let mut svg =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">");
    for (i, v) in s.origin_per_250ms.iter().enumerate() {
        let h = (*v as f64 / max) * (height - 20.0);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#888\"><title>{v} at {:.2} s</title></rect>",
            10.0 + w * i as f64,
            height - 15.0 - h,
            (w - 1.0).max(1.0),
            i as f64 * 0.25
        );
    }
    let _ = write!(
        svg,
        "<text x=\"10\" y=\"12\" font-size=\"11\">peak {max:.0} per 250 ms</text></svg>"
    );
    svg
}

/// `report.html`: self-contained (inline CSS and SVG, no script, no network).
pub fn html(topology: &Topology, report: &Report) -> String {
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Lacquer testbed report</title>\
         <style>body{font:14px system-ui,sans-serif;margin:24px;max-width:960px}h2{margin-top:32px}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\
         th:first-child,td:first-child{text-align:left}.key span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}</style>\
         </head><body><h1>Lacquer testbed report</h1>",
    );
    let _ = write!(
        out,
        "<p>Nodes: {}.</p><p class=\"key\">Timelines: <span style=\"background:#2a2\"></span>new version served\
         <span style=\"background:#d33\"></span>old version served after the purge was sent\
         <span style=\"background:#36c\"></span>purge sent (dashed: answered)<span style=\"background:#a3c\"></span>new version published<span style=\"background:#e80\"></span>fault</p>",
        report
            .nodes
            .iter()
            .map(|(n, t)| format!("{} ({t})", esc(n)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for s in &report.scenarios {
        let _ = write!(
            out,
            "<h2>{}</h2><p>{}; {} client requests over {:.1} s.</p>",
            esc(&s.name),
            esc(&s.about),
            s.requests,
            s.duration_ms as f64 / 1000.0
        );
        out.push_str(&timeline_svg(topology, s));
        out.push_str("<h3>Origin requests</h3>");
        out.push_str(&origin_svg(s));
        for (k, p) in s.purges.iter().enumerate() {
            let _ = write!(
                out,
                "<h3>Purge {} of {} via {}{}</h3><p>Answered {} ({}), complete: {}; origin requests after it {}, peak {}/s.</p>\
                 <table><tr><th>node</th><th>answer</th><th>applied</th><th>stale window</th><th>old after confirmed</th><th>old after applied</th></tr>",
                k + 1,
                esc(&p.tag),
                esc(&p.via),
                if p.soft { " (soft)" } else { "" },
                ms_text(p.answered_after_ms),
                p.status,
                p.complete.map_or("—".into(), |c| c.to_string()),
                p.origin_requests,
                p.origin_peak_per_s
            );
            for (name, n) in &p.nodes {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td></tr>",
                    esc(name),
                    esc(n.answer.as_deref().unwrap_or("—")),
                    ms_text(n.applied_after_ms),
                    n.window_ms,
                    n.old_after_confirmed,
                    n.old_after_applied
                );
            }
            out.push_str("</table><p>Staleness windows:</p>");
            let bars: Vec<(String, f64)> = p
                .nodes
                .iter()
                .filter(|(name, _)| {
                    topology
                        .nodes
                        .iter()
                        .any(|n| n.name == **name && n.tier == "edge")
                })
                .map(|(name, n)| (name.clone(), n.window_ms as f64))
                .collect();
            out.push_str(&bars_svg(&bars, "ms", "#d33"));
        }
        for st in &s.storms {
            let _ = write!(
                out,
                "<h3>Storm</h3><p>{} purges ({:.0}/s), {} failed.</p><table><tr><th>edge</th><th>hit p50 quiet</th><th>during</th><th>hit p99 quiet</th><th>during</th><th>errors</th><th>bus lag max</th></tr>",
                st.purges_sent, st.per_second, st.purges_failed
            );
            for (name, q) in &st.quiet {
                let d = &st.during[name];
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{:.2} ms</td><td>{:.2} ms</td><td>{:.2} ms</td><td>{:.2} ms</td><td>{}</td><td>{} ms</td></tr>",
                    esc(name),
                    q.p50_ms,
                    d.p50_ms,
                    q.p99_ms,
                    d.p99_ms,
                    d.errors,
                    st.max_bus_lag_ms.get(name).copied().unwrap_or(0)
                );
            }
            out.push_str("</table>");
        }
        for (name, (caught_up, old)) in &s.restarts {
            let _ = write!(
                out,
                "<p>Restart of {}: caught up {} after it came back; old versions served after: {old}.</p>",
                esc(name),
                ms_text(*caught_up)
            );
        }
    }
    out.push_str("</body></html>\n");
    out
}
