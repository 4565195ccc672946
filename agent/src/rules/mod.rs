//! Local safety rules: evaluated on the fast path, before a reading is written anywhere.
//!
//! - [`config`]: the rule file (rules and actions keyed by id), strict parsing and validation.
//! - [`engine`]: the pure rule state machines (hysteresis, delays, k-of-n, rate, voting, latch).
//! - [`stage`]: the pipeline stage between `normalise` and the buffer; it fires actions inline
//!   and persists latches.
//! - [`record`]: recordings of the rules' input (JSON Lines) and the bounded recorder that writes them.
//! - [`replay`]: runs a recording through the rules on simulated time and checks expected trips
//!   (`edgeloop-agent rules test`).
//! - [`watch`]: hot reload of the rule file (on change or SIGHUP), atomic and versioned.

pub mod config;
pub mod engine;
pub mod record;
pub mod replay;
pub mod stage;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

use crate::stats::AgentStats;

/// Hot reload: checks the rule file every `interval` (and at once on SIGHUP); a changed file is
/// validated in full and swapped in atomically, or refused with every problem logged while the
/// old rules keep running.
pub async fn watch(
    path: PathBuf,
    ctx: config::Context,
    interval: Duration,
    handle: stage::RulesHandle,
    stats: Arc<AgentStats>,
    shutdown: CancellationToken,
) {
    let fingerprint = |p: &PathBuf| -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut seen = fingerprint(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = shutdown.cancelled() => return,
        };
        let now = fingerprint(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match config::RuleFile::load(&path, &ctx) {
            Err(e) => {
                stats.rules_reload_failures.fetch_add(1, Relaxed);
                tracing::error!(file = %path.display(), error = %e, "rule file refused; the previous rules keep running");
            }
            Ok(file) => match handle.reload(file).await {
                Ok(version) => tracing::info!(file = %path.display(), version, "rule file reloaded"),
                Err(why) => {
                    tracing::error!(file = %path.display(), %why, "rule reload refused; the previous rules keep running")
                }
            },
        }
    }
}
