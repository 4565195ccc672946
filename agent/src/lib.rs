//! The edgeloop gateway agent: reads sensors, keeps every reading in a durable buffer, and
//! forwards batches to the collector, removing them only on the collector's end-to-end ack.
//!
//! ```text
//! sources ──(bounded mpsc<Reading>)──► buffer intake ──(sled: sealed batches)──► forwarder ──MQTT──► collector
//!                                                   └──(watch: newest seq)──────┘   ◄── ack ──┘
//! ```
//!
//! # Layout
//! - [`config`]: the TOML config, strict parsing and validation.
//! - [`sources`]: where readings come from (one file per kind of source).
//! - [`buffer`]: the durable sled buffer and the group-commit intake task.
//! - [`forwarder`]: the uplink's in-flight window and its MQTT transport.
//! - [`stats`]: the agent's counters.

pub mod buffer;
pub mod config;
pub mod forwarder;
pub mod sources;
pub mod stats;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    buffer::{Buffer, BufferError, IntakeSettings},
    config::AgentConfig,
    forwarder::UplinkSettings,
    stats::AgentStats,
};

/// Readings queued between the sources and the buffer intake; a full queue makes sources wait.
const INTAKE_QUEUE: usize = 16_384;

/// A running agent.
pub struct Agent {
    pub stats: Arc<AgentStats>,
    tasks: TaskTracker,
    sources: CancellationToken,
    shutdown: CancellationToken,
}

impl Agent {
    /// Stops the sources only: the buffer and uplink keep running, so the backlog can drain.
    pub fn stop_sources(&self) {
        self.sources.cancel();
    }

    /// Asks every stage to stop; the intake commits what it holds and the forwarder flushes.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every stage has stopped (after [`Agent::shutdown`], or when the parent token fires).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Opens the buffer and starts every stage of the agent as tasks on the current runtime.
///
/// # Errors
/// When the buffer cannot be opened (another agent holds the directory, or it is unreadable).
pub fn start(config: &AgentConfig, shutdown: CancellationToken) -> Result<Agent, BufferError> {
    let stats = Arc::new(AgentStats::default());
    let buffer = Buffer::open(&config.agent.data_dir, config.buffer.cache.0)?;
    let tasks = TaskTracker::new();
    let (readings_tx, readings_rx) = mpsc::channel(INTAKE_QUEUE);
    let (committed_tx, committed_rx) = watch::channel(0);

    // Sources stop on their own token so the intake can drain after them.
    let sources = shutdown.child_token();
    for (id, source) in &config.sources {
        tasks.spawn(sources::run(
            id.clone(),
            source.clone(),
            readings_tx.clone(),
            stats.clone(),
            sources.clone(),
        ));
    }
    drop(readings_tx);

    let intake = IntakeSettings {
        agent: config.agent.id.clone(),
        flush_interval: config.buffer.flush_interval.0,
        batch_max_readings: config.uplink.batch_max_readings,
    };
    let (buf, st, sd) = (buffer.clone(), stats.clone(), shutdown.clone());
    tasks.spawn(async move {
        if let Err(e) =
            buffer::run_intake(intake, buf, readings_rx, committed_tx, st, sd.clone()).await
        {
            tracing::error!(error = %e, "buffer intake failed; stopping the agent");
            sd.cancel();
        }
    });

    let u = &config.uplink;
    let uplink = UplinkSettings {
        agent: config.agent.id.clone(),
        host: u.host.clone(),
        port: u.port,
        username: u.username.clone(),
        password: u.password.clone(),
        keep_alive: u.keep_alive.0,
        in_flight: u.in_flight,
        ack_timeout: u.ack_timeout.0,
        reconnect_min: u.reconnect_min.0,
        reconnect_max: u.reconnect_max.0,
    };
    let (st, sd) = (stats.clone(), shutdown.clone());
    tasks.spawn(async move {
        if let Err(e) = forwarder::run(uplink, buffer, committed_rx, st, sd.clone()).await {
            tracing::error!(error = %e, "forwarder failed; stopping the agent");
            sd.cancel();
        }
    });
    Ok(Agent {
        stats,
        tasks,
        sources,
        shutdown,
    })
}
