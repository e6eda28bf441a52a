//! `lacquer testbed`: rehearse purges on a local fleet and see each node's
//! staleness window. It starts, on loopback and free ports, a real
//! `redis-server` (found on PATH), the nodes of a topology (real Lacquer servers
//! in this process), a versioned and tagged origin and client load on every edge;
//! runs each scenario (a timeline of actions and faults, data in the topology);
//! and reports what clients were really served: a table, `report.json` and a
//! self-contained `report.html`. Everything it started stops with it, on Ctrl-C
//! and on failure too.

mod origin;
mod report;
mod run;
pub mod topology;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use report::{NodeFigures, PurgeFigures, Report, ScenarioReport};
pub use topology::{Topology, TopologyError};

/// `lacquer testbed`.
#[derive(Debug, Clone, Args)]
pub struct TestbedArgs {
    /// A topology file (TOML; `examples/testbed.toml` documents it). Default: 1
    /// shield, 3 edges, 1,000 tagged objects and the six scenarios.
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Run only this scenario (repeatable; default: all, or the file's `run`).
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Where `report.json` and `report.html` go.
    #[arg(long, value_name = "DIR", default_value = "testbed-report")]
    pub report: PathBuf,
}

/// Why a run could not be done.
#[derive(Debug)]
pub enum TestbedError {
    /// A bad topology or scenario name (exit 2).
    Topology(TopologyError),
    /// `redis-server` is not installed.
    NoRedis,
    /// Something the testbed starts failed.
    Io(String),
}

impl std::fmt::Display for TestbedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TestbedError::Topology(e) => write!(f, "{e}"),
            TestbedError::NoRedis => f.write_str(
                "redis-server was not found on PATH; install it (Debian/Ubuntu: \
                 apt-get install redis-server; macOS: brew install redis)",
            ),
            TestbedError::Io(e) => f.write_str(e),
        }
    }
}

fn io(e: impl std::fmt::Display) -> TestbedError {
    TestbedError::Io(e.to_string())
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The run's `redis-server`: a free port, a temporary directory; killed on drop.
struct Redis {
    port: u16,
    dir: PathBuf,
    _child: tokio::process::Child,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_redis(run_id: &str) -> Result<Redis, TestbedError> {
    let bin = find_on_path("redis-server").ok_or(TestbedError::NoRedis)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io)?
        .port();
    let dir = std::env::temp_dir().join(format!("lacquer-testbed-{run_id}"));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut child = tokio::process::Command::new(bin)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--port")
        .arg(port.to_string())
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(io)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io("redis-server: no output"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Ready to accept connections") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !ready {
        return Err(io("redis-server did not start (see its log)"));
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Redis {
        port,
        dir,
        _child: child,
    })
}

/// Runs the scenarios `names` (empty: the topology's selection) and returns the
/// report. `progress` is told each scenario's elapsed share now and then.
pub async fn run(
    topology: &Topology,
    names: &[String],
    progress: &(dyn Fn(&str, f64) + Sync),
) -> Result<Report, TestbedError> {
    topology.validate().map_err(TestbedError::Topology)?;
    let selected = topology.selected(names).map_err(TestbedError::Topology)?;
    let run_id = format!("{}-{:x}", std::process::id(), fastrand::u64(..));
    let redis = start_redis(&run_id).await?;
    let token = format!(
        "testbed-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let token_file = redis.dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).map_err(io)?;
    let env = run::Env {
        redis_url: format!("redis://127.0.0.1:{}", redis.port),
        token_file,
        token,
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build_http(),
    };
    let mut scenarios = Vec::new();
    for s in selected {
        let timeline = run::scenario(topology, s, &env, &run_id, progress)
            .await
            .map_err(io)?;
        scenarios.push(report::scenario_report(topology, s, timeline));
    }
    drop(redis);
    Ok(Report {
        nodes: topology
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.tier.clone()))
            .collect(),
        scenarios,
    })
}

/// The terminal table of a report.
pub fn table(report: &Report) -> String {
    report::table(report)
}

/// Writes `report.json` and `report.html` into `dir`.
pub fn write_report(topology: &Topology, report: &Report, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json)?;
    std::fs::write(dir.join("report.html"), report::html(topology, report))
}

/// `lacquer testbed`: exit 0 when the run completed, 1 when it could not, 2 for a
/// bad topology.
pub async fn command(args: TestbedArgs) -> u8 {
    let topology = match &args.topology {
        None => Topology::default(),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match Topology::parse(&text) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("lacquer testbed: {}: {e}", path.display());
                    return 2;
                }
            },
            Err(e) => {
                eprintln!("lacquer testbed: cannot read {}: {e}", path.display());
                return 2;
            }
        },
    };
    let progress = |name: &str, share: f64| {
        let filled = (share.clamp(0.0, 1.0) * 30.0) as usize;
        eprint!(
            "\r{name:<24} [{}{}] {:>3.0}%",
            "#".repeat(filled),
            " ".repeat(30 - filled),
            share.clamp(0.0, 1.0) * 100.0
        );
        if share >= 1.0 {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    };
    let outcome = tokio::select! {
        r = run(&topology, &args.scenarios, &progress) => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    match outcome {
        None => {
            eprintln!("\nlacquer testbed: interrupted; everything it started is stopped");
            130
        }
        Some(Err(e @ TestbedError::Topology(_))) => {
            eprintln!("lacquer testbed: {e}");
            2
        }
        Some(Err(e)) => {
            eprintln!("lacquer testbed: {e}");
            1
        }
        Some(Ok(report)) => {
            print!("{}", table(&report));
            match write_report(&topology, &report, &args.report) {
                Ok(()) => {
                    println!(
                        "\nreport: {}/report.html and report.json",
                        args.report.display()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("lacquer testbed: cannot write the report: {e}");
                    1
                }
            }
        }
    }
}
