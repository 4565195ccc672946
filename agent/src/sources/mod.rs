//! Where readings come from. Each source is a task that sends [`Reading`]s into the pipeline's
//! bounded channel; when the channel is full the source waits (explicit backpressure).
//!
//! - [`simulated`]: a simulated machine (temperature + vibration), for the demo and load tests.

pub mod simulated;

use edgeloop_shared::model::Reading;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{config::SourceConfig, stats::AgentStats};
use std::sync::Arc;

/// Runs the source `id` until it is exhausted or `shutdown` fires.
pub async fn run(
    id: String,
    config: SourceConfig,
    out: mpsc::Sender<Reading>,
    stats: Arc<AgentStats>,
    shutdown: CancellationToken,
) {
    match config {
        SourceConfig::Simulated(cfg) => simulated::run(&id, &cfg, out, &stats, shutdown).await,
    }
}
