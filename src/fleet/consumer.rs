//! A node's two fleet tasks: the consumer (reads the stream in order and applies
//! each purge) and the heartbeat (records the node, watches for a partition,
//! forgets nodes long gone). Both hold the fleet weakly and end with it.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use tracing::{info, warn};

use super::redis::{self, StreamInfo};
use super::{Fleet, StreamId};

/// Entries read (and applied) per round trip.
const BATCH: usize = 256;

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Where to read from, and whether purges may have been lost: the node's position
/// (here, or recorded in Redis by its previous run), else the stream's end. Entries
/// trimmed away after the position, or a stream behind it (Redis lost data), mean
/// this node cannot know what it missed: everything it holds must be revalidated.
async fn resume(
    fleet: &Fleet,
    conn: &mut ConnectionManager,
    pos: Option<StreamId>,
) -> ::redis::RedisResult<StreamId> {
    let info = redis::info(conn, &fleet.keys).await?;
    let pos = match pos {
        Some(p) => p,
        None => {
            let records = redis::nodes(conn, &fleet.keys).await?;
            match records.get(&fleet.cfg.node) {
                Some(r) => r.applied.parse().unwrap_or_default(),
                None => info.map(|i| i.last_generated).unwrap_or_default(),
            }
        }
    };
    let zero = StreamId::default();
    let info = match info {
        Some(info) => info,
        None if pos > zero => {
            gap(fleet, "the stream is gone (Redis lost it)");
            fleet.applied.send_replace(zero);
            return Ok(zero);
        }
        None => StreamInfo::default(),
    };
    if info.last_generated < pos {
        gap(fleet, "the stream is behind this node (Redis lost entries)");
        fleet.applied.send_replace(info.last_generated);
        return Ok(info.last_generated);
    }
    if info.trimmed_after(pos) {
        gap(
            fleet,
            "purges this node had not applied were trimmed from the stream",
        );
    }
    fleet.applied.send_if_modified(|a| {
        let moved = *a < pos;
        if moved {
            *a = pos;
        }
        moved
    });
    Ok(pos)
}

fn gap(fleet: &Fleet, reason: &str) {
    warn!(node = %fleet.cfg.node, reason, "fleet: purges may have been missed; every stored response will be revalidated before reuse");
    fleet.metrics.fleet.gap_flushes.inc();
    fleet.purger.require_revalidation(reason);
}

/// Reads the stream in order and applies each purge, until the fleet is dropped.
pub(super) async fn consume(fleet: Weak<Fleet>, mut reader: ConnectionManager) {
    let mut pos: Option<StreamId> = None;
    let mut failures = 0u32;
    loop {
        let Some(f) = fleet.upgrade() else { return };
        let mut held = f.held.subscribe();
        if *held.borrow() {
            drop(f);
            // Held back: wait for the release (or for the fleet to go).
            let _ = held.wait_for(|h| !*h).await;
            continue;
        }
        let mut conn = f.writer.clone();
        let result = async {
            // Every read starts from a checked position: entries trimmed after it,
            // or a stream behind it, mean purges may be lost.
            pos = Some(resume(&f, &mut conn, pos).await?);
            let after = pos.unwrap_or_default();
            let entries = redis::read(&mut reader, &f.keys, after, BATCH, f.cfg.heartbeat).await?;
            if *f.held.borrow() {
                // Held back while the read was waiting: nothing of it is applied (it
                // is read again once released).
                return Ok(());
            }
            f.last_read.store(elapsed_ms(f.started), Ordering::Relaxed);
            f.reads.send_modify(|n| *n += 1);
            let read = entries.len();
            for (id, admitted) in entries {
                match admitted {
                    Some(a) => {
                        f.purger.apply(&a, "bus");
                        f.metrics.fleet.applied.inc();
                    }
                    None => warn!(%id, "fleet: skipped a stream entry that is not a purge"),
                }
                pos = Some(id);
                f.applied.send_replace(id);
                f.note_seen(id);
            }
            if read > 0 {
                // Confirmations wait for this record.
                redis::record_node(&mut conn, &f.keys, &f.cfg.node, &f.record()).await?;
            }
            if read < BATCH && f.partitioned() && f.set_partitioned(false) {
                info!(node = %f.cfg.node, "fleet: the stream is readable again and this node has caught up");
            }
            Ok::<(), ::redis::RedisError>(())
        }
        .await;
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    warn!(error = %e, failures, "fleet: cannot read the purge stream");
                }
                let pause = Duration::from_millis(50 * u64::from(failures.min(10)));
                drop(f);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Records the node every heartbeat, and watches for a partition: past `max_lag`
/// without a read, everything stored must be revalidated before reuse, again every
/// `max_lag` while it lasts.
pub(super) async fn heartbeat(fleet: Weak<Fleet>) {
    let period = match fleet.upgrade() {
        Some(f) => f.cfg.heartbeat,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut revalidated: Option<Instant> = None;
    let mut beats = 0u64;
    loop {
        tick.tick().await;
        let Some(f) = fleet.upgrade() else { return };
        beats += 1;
        let silent = Duration::from_millis(
            elapsed_ms(f.started).saturating_sub(f.last_read.load(Ordering::Relaxed)),
        );
        if silent > f.cfg.max_lag {
            if !f.set_partitioned(true) {
                warn!(node = %f.cfg.node, ?silent, "fleet: partitioned from the purge stream; stored responses are revalidated before reuse, once per max_lag");
            }
            if revalidated.is_none_or(|t| t.elapsed() >= f.cfg.max_lag) {
                f.purger
                    .require_revalidation("partitioned from the purge stream");
                revalidated = Some(Instant::now());
            }
            f.metrics
                .fleet
                .partitioned_seconds
                .inc_by(period.as_secs_f64());
        } else {
            revalidated = None;
        }
        let mut conn = f.writer.clone();
        if redis::record_node(&mut conn, &f.keys, &f.cfg.node, &f.record())
            .await
            .is_err()
        {
            continue;
        }
        f.recorded.send_if_modified(|r| !std::mem::replace(r, true));
        // The lag: how long the oldest purge this node has not applied has waited.
        if let Ok((_, lag)) = redis::lag_ms(&mut conn, &f.keys, f.applied(), super::unix_ms()).await
        {
            f.metrics
                .fleet
                .lag_ms
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
        // Now and then, nodes gone for `forget_after` leave the list.
        if beats % 64 == 0 {
            if let Ok(records) = redis::nodes(&mut conn, &f.keys).await {
                let now = super::unix_ms();
                let forget = u64::try_from(f.cfg.forget_after.as_millis()).unwrap_or(u64::MAX);
                for (name, r) in records {
                    if now.saturating_sub(r.beat_ms) > forget {
                        let _ = redis::forget_node(&mut conn, &f.keys, &name).await;
                    }
                }
            }
        }
    }
}
