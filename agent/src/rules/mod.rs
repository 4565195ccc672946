//! The rules stage of the agent: local safety rules evaluated on the fast path, before a reading
//! is written anywhere. The rule-file format, the engine, features, recordings and replay live in
//! the `edgeloop_rules` crate (the collector shares them); this folder runs them.
//!
//! - [`stage`]: the pipeline stage between `normalise` and the buffer; it fires actions inline
//!   and persists latches.
//! - [`watch`]: hot reload of the rule file (on change or SIGHUP), atomic and versioned.

pub mod stage;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime},
};

use edgeloop_rules::config::{Context, RuleFile};
use edgeloop_shared::atomic_file;
use tokio_util::sync::CancellationToken;

use crate::stats::AgentStats;

/// What tells a changed file from the one last loaded: modification time and length.
type Fingerprint = (SystemTime, u64);

/// The rule file on disk, shared by the hot-reload [`watch`] and the commands task (which
/// replaces it with pushed rules): a replacement is marked as seen in the same critical section,
/// so the watcher does not load it a second time.
#[derive(Debug)]
pub struct RuleFilePath {
    path: PathBuf,
    seen: Mutex<Option<Fingerprint>>,
}

impl RuleFilePath {
    /// The file at `path`, as it is now.
    pub fn new(path: PathBuf) -> Self {
        let seen = Mutex::new(fingerprint(&path));
        Self { path, seen }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file changed since it was last seen; it is seen from now on.
    fn changed(&self) -> bool {
        let now = fingerprint(&self.path);
        match self.seen.lock() {
            Ok(mut seen) => std::mem::replace(&mut *seen, now) != now,
            Err(_) => true,
        }
    }

    /// Replaces the file's content atomically (see [`atomic_file::write`]). Blocking I/O: call it
    /// from a blocking thread.
    ///
    /// # Errors
    /// When the directory is not writable or the disk is full; the old file is then untouched.
    pub fn replace(&self, text: &str) -> std::io::Result<()> {
        // Held across the write so the watcher never sees the new file before it is marked seen.
        let mut seen = self.seen.lock().map_err(|_| std::io::Error::other("rule file lock poisoned"))?;
        let result = atomic_file::write(&self.path, text.as_bytes(), atomic_file::Access::Default);
        *seen = fingerprint(&self.path);
        result
    }
}

fn fingerprint(p: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Hot reload: checks the rule file every `interval` (and at once on SIGHUP); a changed file is
/// validated in full and swapped in atomically, or refused with every problem logged while the
/// old rules keep running.
pub async fn watch(
    file: Arc<RuleFilePath>,
    ctx: Context,
    interval: Duration,
    handle: stage::RulesHandle,
    stats: Arc<AgentStats>,
    shutdown: CancellationToken,
) {
    let path = file.path().to_path_buf();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = shutdown.cancelled() => return,
        };
        if !file.changed() && !forced {
            continue;
        }
        match RuleFile::load(&path, &ctx) {
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
