//! Issue 17: `lacquer testbed` end to end: a real `redis-server`, real nodes, real
//! load, short `purge` and `partial` scenarios. The test recomputes the report's
//! figures itself from the raw timeline (what each client request got, and every
//! origin request, recorded as they happened) and checks them.

use std::process::Command;
use std::time::Duration;

use lacquer::testbed::topology::{
    Action, LoadSpec, NodeSpec, OriginSpec, Scenario, Step, Topology,
};

const BIN: &str = env!("CARGO_BIN_EXE_lacquer");

fn step(at_ms: u64, action: Action, node: Option<&str>) -> Step {
    Step {
        at: Duration::from_millis(at_ms),
        action,
        tag: None,
        node: node.map(String::from),
        wait: Some(Duration::from_millis(1500)),
        soft: false,
        rate: None,
        lasting: None,
    }
}

fn short_topology() -> Topology {
    let node = |name: &str, tier: &str, shield: Option<&str>| NodeSpec {
        name: name.into(),
        tier: tier.into(),
        shield: shield.map(String::from),
    };
    Topology {
        nodes: vec![
            node("shield-1", "shield", None),
            node("edge-1", "edge", Some("shield-1")),
            node("edge-2", "edge", Some("shield-1")),
        ],
        origin: OriginSpec {
            latency: Duration::from_millis(2),
            objects: 40,
            size: 256,
            tags: 4,
            cache_control: "max-age=3600".into(),
            cache_control_by_tag: [("tag-3".to_string(), "max-age=1".to_string())].into(),
        },
        load: LoadSpec {
            clients: 2,
            rate: 150,
            hot: 0.8,
        },
        max_lag: Duration::from_secs(1),
        run: Vec::new(),
        scenarios: vec![
            Scenario {
                name: "purge".into(),
                about: "publish and purge".into(),
                duration: Duration::from_secs(3),
                shield_order: true,
                steps: vec![
                    step(1000, Action::Publish, None),
                    step(1000, Action::Purge, None),
                ],
            },
            Scenario {
                name: "partial".into(),
                about: "edge-2 held during the purge".into(),
                duration: Duration::from_millis(4500),
                shield_order: true,
                steps: vec![
                    step(500, Action::Hold, Some("edge-2")),
                    step(1000, Action::Publish, None),
                    step(1000, Action::Purge, None),
                    step(4000, Action::Release, Some("edge-2")),
                ],
            },
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_purge_and_partial_scenarios_report_what_clients_were_served() {
    let topology = short_topology();
    let report = lacquer::testbed::run(&topology, &[], &|_, _| {})
        .await
        .expect("testbed run");
    assert_eq!(report.scenarios.len(), 2);
    for s in &report.scenarios {
        let t = &s.timeline;
        assert!(
            s.requests > 100,
            "{}: load ran ({} requests)",
            s.name,
            s.requests
        );
        assert_eq!(s.purges.len(), 1, "{}", s.name);
        let (p, raw) = (&s.purges[0], &t.purges[0]);
        // Recomputed here, per edge: the last old version served after the purge
        // was sent, and the old versions after its answer.
        for (i, spec) in topology.nodes.iter().enumerate() {
            if spec.tier != "edge" {
                continue;
            }
            let old: Vec<_> = t
                .samples
                .iter()
                .filter(|x| x.node == i && x.tag == 0 && x.version > 0 && x.version < raw.version)
                .filter(|x| x.t_ms >= raw.sent_ms)
                .collect();
            let window = old.iter().map(|x| x.t_ms - raw.sent_ms).max().unwrap_or(0);
            let figures = &p.nodes[&spec.name];
            assert_eq!(figures.window_ms, window, "{} {}", s.name, spec.name);
            if raw.complete == Some(true) {
                let after = old
                    .iter()
                    .filter(|x| x.t_ms > raw.answered_ms.unwrap())
                    .count() as u64;
                assert_eq!(
                    figures.old_after_confirmed, after,
                    "{} {}",
                    s.name, spec.name
                );
            }
        }
        // Every origin request from the purge until the end, from the origin's own log.
        let origin_after = t
            .origin
            .iter()
            .filter(|o| o.t_ms >= raw.sent_ms && o.t_ms < s.duration_ms)
            .count() as u64;
        assert_eq!(p.origin_requests, origin_after, "{}", s.name);
        assert!(
            origin_after > 0,
            "{}: the purge sent requests to the origin",
            s.name
        );
        // Two observers of the origin's load agree: its own log, and what the
        // shield (the only node in front of it) counted sending.
        assert_eq!(
            t.node_origin_requests.get("shield-1").copied(),
            Some(t.origin.len() as u64),
            "{}",
            s.name
        );
    }
    // tag-3's class expires after 1 s: its objects come back as revalidations.
    assert!(
        report.scenarios[0]
            .timeline
            .origin
            .iter()
            .any(|o| o.conditional),
        "conditional requests for the short-lived class"
    );
    let purge = &report.scenarios[0].purges[0];
    assert_eq!(purge.complete, Some(true), "{purge:?}");
    for edge in ["edge-1", "edge-2"] {
        assert_eq!(purge.nodes[edge].old_after_confirmed, 0, "{edge}");
        assert_eq!(purge.nodes[edge].answer.as_deref(), Some("applied"));
    }
    let partial = &report.scenarios[1].purges[0];
    assert_eq!(partial.complete, Some(false), "{partial:?}");
    assert_eq!(
        partial.nodes["edge-2"].answer.as_deref(),
        Some("pending"),
        "the answer named it"
    );
    assert_eq!(partial.nodes["edge-1"].answer.as_deref(), Some("applied"));
    assert!(
        partial.nodes["edge-2"].window_ms > partial.nodes["edge-1"].window_ms,
        "the held edge served old content for longer: {partial:?}"
    );
    // The files: JSON with the raw timeline, HTML with its SVG plots.
    let dir = std::env::temp_dir().join(format!("lacquer-testbed-test-{}", std::process::id()));
    lacquer::testbed::write_report(&topology, &report, &dir).expect("write report");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert!(
        json["scenarios"][0]["timeline"]["samples"]
            .as_array()
            .unwrap()
            .len()
            > 100
    );
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("partial"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "self-contained: nothing fetched from the network"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_topology_with_an_error_is_refused_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("lacquer-testbed-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, key) in [
        (
            "[[scenarios]]\nname = \"x\"\nduration = \"5s\"\n[[scenarios.steps]]\nat = \"1s\"\ndo = \"hold\"\nnode = \"edge-9\"\n",
            "scenarios[0].steps[0].node",
        ),
        ("max_lag = \"a while\"\n", "max_lag"),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["testbed", "--topology"])
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(key), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
