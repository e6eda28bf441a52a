//! Where log lines go: standard error, through a writer thread. A request's line
//! (the access log, target `lacquer::access`) is formatted on the request's thread
//! and handed to a bounded queue; the writer thread drains the queue into a 64 KiB
//! buffer and writes it out whenever the queue is empty (so a line waits for the
//! next drain, never longer). A full queue drops lines: they are counted
//! (`lacquer_log_dropped_lines_total`) and announced on standard error, directly,
//! once a second while it happens. Colour codes only when standard error is a
//! terminal.

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use crate::config::LogFormat;

/// Lines the queue holds at most (about 64 k lines of a few hundred bytes).
const QUEUE_LINES: usize = 64 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread; dropping it writes out what is queued (at exit).
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Sets up the process's logging: `format`, and `level` as the filter unless
/// `RUST_LOG` says otherwise. Call once; later calls keep the first setup.
pub fn init(format: LogFormat, level: &str) -> LogGuard {
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("lacquer-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let _ = DROPPED.set(writer.error_counter());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    LogGuard { _worker: worker }
}

/// Log lines dropped because the writer fell behind (0 before `init`).
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// Announces dropped lines on standard error (directly: the queue is what is
/// full), at most once a second, for as long as it runs.
pub async fn announce_drops() {
    let mut seen = dropped_lines();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = dropped_lines();
        if now > seen {
            eprintln!(
                "lacquer: the log writer fell behind: {} log lines dropped in the last second, {now} in all (lacquer_log_dropped_lines_total)",
                now - seen
            );
            seen = now;
        }
    }
}
