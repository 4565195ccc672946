//! The durable buffer between the sources and the uplink.
//!
//! Readings are sealed into batches and written to disk before anything is sent: a reading is
//! **accepted** once the group commit that holds it is durable (fsync), and its batch leaves the
//! buffer only when the collector acknowledges that the batch is stored in the database.
//!
//! - [`redb`]: the store itself (redb), batches keyed by their sequence number, in two lanes.
//! - [`latches`]: the rules' latched trips, in the same database, and the task that writes them.
//! - [`run_intake`]: the task that groups readings, seals batches and commits them.

pub mod latches;
pub mod redb;

pub use self::redb::{Appended, Buffer, BufferError, BufferSettings, Lane, Recovery, StoredBatch, Totals, WhenFull};

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{pipeline::Record, stats::AgentStats};

/// How the intake groups readings.
#[derive(Debug, Clone)]
pub struct IntakeSettings {
    pub flush_interval: Duration,
    pub batch_max_readings: usize,
}

/// Takes readings from the sources, commits them to `buffer` in groups, and publishes the newest
/// durable sequence number on `committed` so the forwarder can send it.
///
/// On shutdown it commits what is already queued, then returns.
pub async fn run_intake(
    settings: IntakeSettings,
    buffer: Buffer,
    mut input: mpsc::Receiver<Record>,
    committed: watch::Sender<u64>,
    stats: Arc<AgentStats>,
    shutdown: CancellationToken,
) -> Result<(), BufferError> {
    // A group holds at most this many readings, so one commit stays short and memory bounded.
    let group_max = settings.batch_max_readings.saturating_mul(8).max(1);
    let mut pending: Vec<Record> = Vec::with_capacity(group_max);
    let mut closed = false;
    // Even with nothing coming in, drops still unreported go out within a second or so.
    let mut report = tokio::time::interval(Duration::from_secs(1));
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !closed {
        tokio::select! {
            n = input.recv_many(&mut pending, group_max) => closed = n == 0,
            _ = report.tick() => {}
            _ = shutdown.cancelled() => {
                input.close();
                while let Some(r) = input.recv().await {
                    pending.push(r);
                    if pending.len() >= group_max {
                        commit(&settings, &buffer, &mut pending, &committed, &stats).await?;
                    }
                }
                closed = true;
            }
        }
        if !closed {
            let deadline = tokio::time::Instant::now() + settings.flush_interval;
            while pending.len() < group_max {
                let room = group_max - pending.len();
                tokio::select! {
                    n = input.recv_many(&mut pending, room) => if n == 0 { closed = true; break },
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        commit(&settings, &buffer, &mut pending, &committed, &stats).await?;
    }
    // The input is done (sources finished, or shutdown): report any drop right away.
    let done = buffer.report_drops().await?;
    if done.events > 0 {
        stats.events_accepted.fetch_add(done.events, Relaxed);
        committed.send_replace(done.last_seq);
    }
    Ok(())
}

async fn commit(
    settings: &IntakeSettings,
    buffer: &Buffer,
    pending: &mut Vec<Record>,
    committed: &watch::Sender<u64>,
    stats: &AgentStats,
) -> Result<(), BufferError> {
    let mut readings = Vec::with_capacity(pending.len());
    let mut events = Vec::new();
    for r in pending.drain(..) {
        match r {
            Record::Reading(r) => readings.push(r),
            Record::Event(e) => events.push(e),
        }
    }
    let done = buffer.append(readings, events, settings.batch_max_readings).await?;
    stats.accepted.fetch_add(done.readings, Relaxed);
    stats.events_accepted.fetch_add(done.events, Relaxed);
    stats.dropped.fetch_add(done.dropped_readings, Relaxed);
    stats.refused.fetch_add(done.refused_readings, Relaxed);
    stats.backlog.store(buffer.totals().held_readings, Relaxed);
    if done.readings + done.events > 0 {
        committed.send_replace(done.last_seq);
    }
    Ok(())
}
