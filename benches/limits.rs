//! Limits under load on the bench-profile binary, larger than the test: 2,000
//! idle connections, 200,000 distinct keys through a 64 MiB store, 8 slow readers
//! of 64 MiB bodies too large to store. Reports resident memory against the
//! budget and the rate of distinct keys. Run with `cargo bench --bench limits`.

#[path = "../tests/limits/scenario.rs"]
mod scenario;

const BIN: &str = env!("CARGO_BIN_EXE_lacquer");

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = scenario::Load {
        budget_mib: 64,
        idle: 2_000,
        keys: 200_000,
        slow: 8,
    };
    let report = runtime.block_on(scenario::run(BIN, &load));
    println!(
        "limits: budget {} MiB; RSS {} MiB at start, {} MiB loaded ({} over the budget); \
         {} idle connections, {} keys at {:.0} keys/s, {} slow readers",
        load.budget_mib,
        report.start_rss_mib,
        report.rss_mib,
        report.rss_mib.saturating_sub(load.budget_mib),
        load.idle,
        load.keys,
        report.keys_per_sec,
        load.slow
    );
}
