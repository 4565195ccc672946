//! The durable buffer between the sources and the uplink.
//!
//! Readings are sealed into batches and written to disk before anything is sent: a reading is
//! **accepted** once the group commit that holds it is flushed, and its batch leaves the buffer
//! only when the collector acknowledges that the batch is stored in the database.
//!
//! - [`sled`]: the store itself (sled 0.34), batches keyed by their sequence number.
//! - [`run_intake`]: the task that groups readings, seals batches and commits them.

pub mod sled;

pub use self::sled::{Buffer, BufferError, Lane, StoredBatch};

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use edgeloop_shared::model::{Event, Reading};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::stats::AgentStats;

/// What the intake takes: a reading, or an event that travels with the readings.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Reading(Reading),
    Event(Event),
}

/// How the intake groups readings.
#[derive(Debug, Clone)]
pub struct IntakeSettings {
    pub agent: String,
    /// Tags put on every batch.
    pub tags: Vec<(String, String)>,
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
    while !closed {
        tokio::select! {
            n = input.recv_many(&mut pending, group_max) => closed = n == 0,
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
    Ok(())
}

async fn commit(
    settings: &IntakeSettings,
    buffer: &Buffer,
    pending: &mut Vec<Record>,
    committed: &watch::Sender<u64>,
    stats: &AgentStats,
) -> Result<(), BufferError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut readings = Vec::with_capacity(pending.len());
    let mut events = Vec::new();
    for r in pending.drain(..) {
        match r {
            Record::Reading(r) => readings.push(r),
            Record::Event(e) => events.push(e),
        }
    }
    let n_events = events.len() as u64;
    let last_seq =
        buffer.append(&settings.agent, &settings.tags, &readings, events, settings.batch_max_readings).await?;
    let n = readings.len() as u64;
    stats.accepted.fetch_add(n, Relaxed);
    stats.events_accepted.fetch_add(n_events, Relaxed);
    stats.backlog.fetch_add(n, Relaxed);
    committed.send_replace(last_seq);
    Ok(())
}
