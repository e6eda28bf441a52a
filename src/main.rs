//! The `lacquer` command: `serve`, `check-config`, `origin`, and for pipelines `purge`
//! and `verify` (their logic is in `lacquer::cli`).

/// mimalloc instead of the system allocator: a hit allocates a few small blocks
/// (headers, body handle, response), and glibc's malloc/free was about 15% of a
/// hit's instructions under callgrind.
#[global_allocator]
static ALLOC: Mimalloc = Mimalloc;

/// mimalloc through its plain entry points wherever they give the alignment asked
/// for. The `mimalloc` crate calls `mi_malloc_aligned` for every allocation, and
/// that call leaves mimalloc's fast path whenever the size class's free list is
/// empty: it then over-allocates into a larger class. A block allocated and freed
/// once per request (a hit's head) met that case every time: about 0.35k of a
/// hit's 11.8k instructions under callgrind.
struct Mimalloc;

/// Every mimalloc block is aligned to a word, whatever its size.
const WORD: usize = std::mem::size_of::<usize>();

#[allow(unsafe_code)]
// SAFETY: each function passes the layout's size, and its alignment whenever it is
// above a word, to the mimalloc function of the same contract; `mi_free` takes
// blocks from either kind of allocation.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= WORD {
            libmimalloc_sys::mi_malloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= WORD {
            libmimalloc_sys::mi_zalloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lacquer::config::{ConfigError, ConfigFile, OriginSection, Settings, Tier};

#[derive(Parser)]
#[command(
    name = "lacquer",
    version,
    about = "A caching reverse proxy (RFC 9111 shared cache)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (default: proxy.toml in the working directory, if present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, overriding `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Origin base URL, replacing the `[[origins]]` of the config.
        #[arg(long)]
        origin: Option<String>,
        #[command(flatten)]
        fleet: FleetFlags,
    },
    /// Validate a config file and print the effective settings.
    CheckConfig { path: PathBuf },
    /// Run the built-in demo origin (responses chosen by query parameters).
    Origin {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Answer every request with the same preallocated body of this many bytes
        /// (the load benchmark's fast origin and hyper ceiling).
        #[arg(long)]
        fixed_size: Option<usize>,
        /// Cache-Control of the fixed responses.
        #[arg(long, default_value = "max-age=3600")]
        fixed_cache_control: String,
        /// Surrogate-Key of the fixed responses (tags, for purge benchmarks).
        #[arg(long)]
        fixed_surrogate_key: Option<String>,
        /// Runtime worker threads, as `server.threads` (0: one per core; 1: a
        /// single-threaded runtime, the flavour the load benchmark pins to a core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Purge through the admin API (for pipelines): exit 0 done, 1 refused, 2 usage,
    /// 3 unreachable.
    Purge(lacquer::cli::PurgeArgs),
    /// Poll a URL until the new content is served: exit 0 served, 1 not in time,
    /// 2 usage, 3 unreachable.
    Verify(lacquer::cli::VerifyArgs),
    /// Rehearse purges on a local fleet (redis-server, shields, edges, origin,
    /// load) and report each node's staleness window: exit 0 done, 1 failed, 2 bad
    /// topology.
    Testbed(lacquer::testbed::TestbedArgs),
}

/// `[fleet]` from the command line: each flag overrides its key.
#[derive(clap::Args, Clone, Default)]
struct FleetFlags {
    /// Join a fleet: the Redis URL of its purge bus (`fleet.redis`).
    #[arg(long, value_name = "REDIS_URL")]
    fleet: Option<String>,
    /// This node's name in the fleet (`fleet.node`).
    #[arg(long)]
    node: Option<String>,
    /// This node's tier: edge or shield (`fleet.tier`).
    #[arg(long, value_parser = ["edge", "shield"])]
    tier: Option<String>,
}

impl FleetFlags {
    fn apply(&self, file: &mut ConfigFile) -> Result<(), ConfigError> {
        if self.fleet.is_none() && file.fleet.is_none() {
            if self.node.is_some() || self.tier.is_some() {
                return Err(ConfigError {
                    key: "fleet".into(),
                    reason: "--node and --tier need --fleet or a [fleet] section".into(),
                });
            }
            return Ok(());
        }
        let fleet = file.fleet.get_or_insert_with(Default::default);
        if let Some(url) = &self.fleet {
            fleet.redis = url.clone();
        }
        if let Some(node) = &self.node {
            fleet.node = Some(node.clone());
        }
        match self.tier.as_deref() {
            Some("shield") => fleet.tier = Tier::Shield,
            Some(_) => fleet.tier = Tier::Edge,
            None => {}
        }
        Ok(())
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("lacquer: {e}");
    ExitCode::from(2)
}

fn load_settings(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    origin: Option<String>,
    fleet: &FleetFlags,
) -> Result<Settings, ConfigError> {
    let default_path = PathBuf::from("proxy.toml");
    let mut file = match config {
        Some(path) => ConfigFile::load(&path)?,
        None if default_path.exists() => ConfigFile::load(&default_path)?,
        None => ConfigFile::default(),
    };
    if let Some(listen) = listen {
        file.server.listen = listen;
    }
    if let Some(url) = origin {
        file.origins = vec![OriginSection {
            name: "cli".into(),
            url,
            ..OriginSection::default()
        }];
    }
    fleet.apply(&mut file)?;
    Settings::from_file(file)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { path } => {
            match ConfigFile::load(&path).and_then(Settings::from_file) {
                Ok(settings) => {
                    println!("# {}: OK. Effective settings:", path.display());
                    print!("{}", settings.file.to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => config_failure(&e),
            }
        }
        Command::Serve {
            config,
            listen,
            origin,
            fleet,
        } => {
            let settings = match load_settings(config.clone(), listen, origin.clone(), &fleet) {
                Ok(s) => s,
                Err(e) => return config_failure(&e),
            };
            let _log = lacquer::logging::init(settings.file.log.format, &settings.file.log.level);
            let drain = settings.drain_timeout;
            let threads = settings.file.server.threads;
            run_with(threads, async move {
                let running = lacquer::server::start(settings).await?;
                // SIGHUP and `POST /reload` re-read the same sources.
                running.proxy.set_reloader(Box::new(move || {
                    load_settings(config.clone(), listen, origin.clone(), &fleet)
                }));
                #[cfg(unix)]
                {
                    let proxy = running.proxy.clone();
                    tokio::spawn(async move {
                        use tokio::signal::unix::{signal, SignalKind};
                        let Ok(mut hup) = signal(SignalKind::hangup()) else {
                            return;
                        };
                        while hup.recv().await.is_some() {
                            match proxy.reload_from_source() {
                                Ok(report) => {
                                    tracing::info!(?report, "SIGHUP: configuration reloaded")
                                }
                                Err(reason) => {
                                    tracing::error!(%reason, "SIGHUP: reload rejected, old configuration kept")
                                }
                            }
                        }
                    });
                }
                println!("lacquer: listening on {}", running.addr);
                tracing::info!(addr = %running.addr, "proxy listening");
                shutdown_signal().await;
                tracing::info!(?drain, "shutting down: draining requests in flight");
                let drained = running.shutdown(drain).await;
                tracing::info!(drained, "stopped");
                Ok(())
            })
        }
        Command::Origin {
            listen,
            fixed_size,
            fixed_cache_control,
            fixed_surrogate_key,
            threads,
        } => {
            let _log = lacquer::logging::init(lacquer::config::LogFormat::Text, "info");
            run_with(threads, async move {
                let origin = match fixed_size {
                    Some(size) => {
                        lacquer::demo_origin::start_fixed(
                            listen,
                            size,
                            &fixed_cache_control,
                            fixed_surrogate_key.as_deref(),
                        )
                        .await?
                    }
                    None => lacquer::demo_origin::start(listen).await?,
                };
                println!("lacquer origin: listening on {}", origin.addr);
                shutdown_signal().await;
                drop(origin);
                Ok(())
            })
        }
        Command::Purge(args) => run_cli(lacquer::cli::purge(args)),
        Command::Verify(args) => run_cli(lacquer::cli::verify(args)),
        Command::Testbed(args) => {
            // The nodes' own logs would drown the progress line: errors only.
            let _log = lacquer::logging::init(lacquer::config::LogFormat::Text, "error");
            block_on(lacquer::testbed::command(args)).map_or(ExitCode::from(1), ExitCode::from)
        }
    }
}

/// `purge` and `verify`: their own exit codes; a runtime that cannot start counts as
/// "unreachable" (3), the code a pipeline retries.
fn run_cli(fut: impl std::future::Future<Output = lacquer::cli::Exit>) -> ExitCode {
    block_on(fut).map_or(lacquer::cli::Exit::Unreachable.into(), ExitCode::from)
}

/// Runs `fut` on a runtime with `threads` workers: 0 is one per core (multi-thread),
/// 1 is tokio's current-thread runtime (no work stealing, no cross-thread wake-ups:
/// measured faster on one pinned core, see benches/load/results.md).
fn run_with(
    threads: usize,
    fut: impl std::future::Future<Output = std::io::Result<()>>,
) -> ExitCode {
    match block_on_with(threads, fut) {
        Some(Ok(())) => ExitCode::SUCCESS,
        Some(Err(e)) => {
            eprintln!("lacquer: {e}");
            ExitCode::FAILURE
        }
        None => ExitCode::FAILURE,
    }
}

/// Runs `fut` on a new runtime; `None` (after a message) if the runtime cannot start.
fn block_on<F: std::future::Future>(fut: F) -> Option<F::Output> {
    block_on_with(0, fut)
}

fn block_on_with<F: std::future::Future>(threads: usize, fut: F) -> Option<F::Output> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 0 {
            b.worker_threads(threads);
        }
        b
    };
    match builder.enable_all().build() {
        Ok(runtime) => Some(runtime.block_on(fut)),
        Err(e) => {
            eprintln!("lacquer: cannot start the runtime: {e}");
            None
        }
    }
}
