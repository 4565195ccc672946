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
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime},
};

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

    /// Replaces the file's content atomically: a temporary file beside it, fsynced, renamed over
    /// it, and the directory fsynced. Blocking I/O: call it from a blocking thread.
    ///
    /// # Errors
    /// When the directory is not writable or the disk is full; the old file is then untouched.
    pub fn replace(&self, text: &str) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.edgeloop-tmp"));
        // Held across the write so the watcher never sees the new file before it is marked seen.
        let mut seen = self.seen.lock().map_err(|_| std::io::Error::other("rule file lock poisoned"))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        let result = write();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
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
    ctx: config::Context,
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
