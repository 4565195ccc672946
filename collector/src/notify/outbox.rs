//! The durable outbox and the delivery loop: one JSON file per (notification, channel) in
//! `outbox_dir`, written before [`NotifierHandle::send`](super::NotifierHandle::send) returns, and
//! one task per channel that delivers the oldest entry first, retries with jittered backoff and
//! removes an entry only once the receiver accepted it (or moves it to `failed/` when refused).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use edgeloop_shared::atomic_file::{self, Access, sync_dir};
use edgeloop_shared::backoff::Backoff;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{ChannelConfig, ChannelStats, NotifyError, Outcome, Transport, deliver, render};
use crate::model::Notification;
use edgeloop_shared::clock::now_ns;

/// The outbox file format's version, checked on read.
const OUTBOX_VERSION: u32 = 1;
/// A server may ask for a long pause with `Retry-After`; past this it is more likely a mistake
/// than a plan, and a channel silent for a day hides alerts.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub(super) struct ChannelState {
    /// Outbox entries by sequence number: the first is the next to deliver.
    pub(super) pending: BTreeMap<u64, PathBuf>,
    pub(super) stats: ChannelStats,
}

/// One channel's queue, shared by its delivery task and the handle that fills it.
pub(super) struct Channel {
    pub(super) id: String,
    pub(super) wake: Notify,
    pub(super) state: Mutex<ChannelState>,
}

impl Channel {
    pub(super) fn new(id: &str) -> Self {
        Channel { id: id.to_string(), wake: Notify::new(), state: Mutex::default() }
    }
}

/// A poisoned lock only means another thread panicked mid-update of counters; keep going.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Serialize)]
struct EntryOut<'a> {
    version: u32,
    channel: &'a str,
    queued_ns: i64,
    notification: &'a Notification,
}

#[derive(Deserialize)]
pub(super) struct EntryIn {
    version: u32,
    pub(super) notification: Notification,
}

/// "<20-digit sequence>-<channel>.json": names sort in delivery order.
fn entry_name(seq: u64, channel: &str) -> String {
    format!("{seq:020}-{channel}.json")
}

fn parse_entry_name(name: &str) -> Option<(u64, &str)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, channel) = stem.split_once('-')?;
    if seq.len() != 20 || channel.is_empty() {
        return None;
    }
    Some((seq.parse().ok()?, channel))
}

/// Writes `n` durably as channel `channel`'s entry `seq`; returns its path.
///
/// # Errors
/// When the entry cannot be encoded or written (disk full, directory gone).
pub(super) fn write_entry(dir: &Path, seq: u64, channel: &str, n: &Notification) -> Result<PathBuf, NotifyError> {
    let path = dir.join(entry_name(seq, channel));
    let entry = EntryOut { version: OUTBOX_VERSION, channel, queued_ns: now_ns(), notification: n };
    serde_json::to_vec(&entry)
        .map_err(io::Error::other)
        .and_then(|bytes| atomic_file::write(&path, &bytes, Access::Default))
        .map_err(|source| NotifyError::Outbox { channel: channel.to_string(), path: path.clone(), source })?;
    Ok(path)
}

/// Prepares `dir` (and `failed/` in it) and queues the entries an earlier run left there on their
/// channels; returns the highest sequence number seen.
///
/// # Errors
/// [`NotifyError::OutboxDir`] when the directory cannot be created or read.
pub(super) fn load(dir: &Path, channels: &BTreeMap<String, Arc<Channel>>) -> Result<u64, NotifyError> {
    let dir_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NotifyError::OutboxDir { path, source }
    };
    let failed_dir = dir.join("failed");
    fs::create_dir_all(&failed_dir).map_err(dir_error(&failed_dir))?;
    let mut last_seq = 0;
    for dirent in fs::read_dir(dir).map_err(dir_error(dir))? {
        let dirent = dirent.map_err(dir_error(dir))?;
        let file_name = dirent.file_name();
        let Some(name) = file_name.to_str() else { continue };
        // Temporary files of the atomic write (".<entry>.tmp"; ".tmp-<entry>" from older builds)
        // were never renamed into place, so never acknowledged to the caller.
        if name.starts_with(".tmp-") || name.starts_with('.') && name.ends_with(".tmp") {
            let _ = fs::remove_file(dirent.path());
            continue;
        }
        let Some((seq, channel)) = parse_entry_name(name) else {
            continue;
        };
        last_seq = last_seq.max(seq);
        match channels.get(channel) {
            Some(ch) => {
                lock(&ch.state).pending.insert(seq, dirent.path());
            }
            None => tracing::warn!(
                channel,
                entry = name,
                "outbox entry for a channel that is no longer configured; kept, not delivered"
            ),
        }
    }
    Ok(last_seq)
}

pub(super) struct Worker {
    pub(super) channel: Arc<Channel>,
    pub(super) config: ChannelConfig,
    pub(super) transport: Transport,
    pub(super) outbox_dir: PathBuf,
    pub(super) shutdown: CancellationToken,
}

impl Worker {
    pub(super) async fn run(self) {
        let d = self.config.delivery();
        let mut backoff = Backoff::seeded(d.retry_min, d.retry_max);
        let mut current = None;
        let mut attempt: u64 = 0;
        let id = &self.channel.id;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let head = lock(&self.channel.state).pending.first_key_value().map(|(s, p)| (*s, p.clone()));
            let Some((seq, path)) = head else {
                tokio::select! {
                    () = self.channel.wake.notified() => continue,
                    () = self.shutdown.cancelled() => return,
                }
            };
            if current != Some(seq) {
                current = Some(seq);
                attempt = 0;
            }
            attempt += 1;
            let entry = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match self.attempt(&path).await {
                None => {
                    // Removed by someone else (an operator); nothing to send.
                    lock(&self.channel.state).pending.remove(&seq);
                }
                Some(Outcome::Delivered { warning }) => {
                    if let Err(e) = fs::remove_file(&path).and_then(|()| sync_dir(&self.outbox_dir)) {
                        tracing::error!(
                            channel = %id,
                            entry,
                            error = %e,
                            "delivered, but cannot remove the outbox entry; it will be sent again after a restart"
                        );
                    }
                    let mut state = lock(&self.channel.state);
                    state.pending.remove(&seq);
                    state.stats.delivered += 1;
                    state.stats.last_success_ns = Some(now_ns());
                    if let Some(w) = &warning {
                        state.stats.last_error = Some(w.clone());
                        state.stats.last_error_ns = state.stats.last_success_ns;
                    }
                    drop(state);
                    match warning {
                        Some(w) => {
                            tracing::error!(channel = %id, entry, attempt, error = %w, "notification delivered in part")
                        }
                        None => tracing::info!(channel = %id, entry, attempt, "notification delivered"),
                    }
                    backoff.reset();
                }
                Some(Outcome::Refused { error }) => {
                    let moved = self.set_aside(&path, &entry, &error);
                    let mut state = lock(&self.channel.state);
                    state.pending.remove(&seq);
                    state.stats.refused += 1;
                    state.stats.last_error = Some(error.clone());
                    state.stats.last_error_ns = Some(now_ns());
                    drop(state);
                    match moved {
                        Ok(()) => {
                            tracing::error!(
                                channel = %id,
                                entry,
                                attempt,
                                error = %error,
                                "notification refused; moved to failed/ (fix the channel, move it back, restart)"
                            )
                        }
                        Err(e) => {
                            tracing::error!(
                                channel = %id,
                                entry,
                                attempt,
                                error = %error,
                                move_error = %e,
                                "notification refused; cannot move it to failed/, so it is retried after a restart"
                            )
                        }
                    }
                    backoff.reset();
                }
                Some(Outcome::Retry { error, retry_after }) => {
                    let mut delay = backoff.next_delay();
                    if let Some(asked) = retry_after {
                        delay = delay.max(asked.min(MAX_RETRY_AFTER));
                    }
                    {
                        let mut state = lock(&self.channel.state);
                        state.stats.attempts_failed += 1;
                        state.stats.last_error = Some(error.clone());
                        state.stats.last_error_ns = Some(now_ns());
                    }
                    tracing::warn!(
                        channel = %id,
                        entry,
                        attempt,
                        error = %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "notification not delivered; will retry"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One attempt at the entry in `path`; `None` when the file is gone.
    async fn attempt(&self, path: &Path) -> Option<Outcome> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                let error = format!("cannot read outbox entry {}: {e}", path.display());
                return Some(Outcome::Retry { error, retry_after: None });
            }
        };
        let entry: EntryIn = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                return Some(Outcome::Refused { error: format!("outbox entry is not a readable notification: {e}") });
            }
        };
        if entry.version != OUTBOX_VERSION {
            let error = format!("outbox entry has version {}, this build reads {OUTBOX_VERSION}", entry.version);
            return Some(Outcome::Refused { error });
        }
        let rendered = match render(&self.config, &entry.notification) {
            Ok(r) => r,
            Err(e) => return Some(Outcome::Refused { error: e.to_string() }),
        };
        let timeout = self.config.delivery().timeout;
        Some(match tokio::time::timeout(timeout, deliver(&self.transport, &self.config, rendered)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry { error: format!("no answer within {timeout:?}"), retry_after: None },
        })
    }

    /// Moves a refused entry to `failed/` with the reason beside it, so it is kept, not retried.
    fn set_aside(&self, path: &Path, entry: &str, error: &str) -> io::Result<()> {
        let failed = self.outbox_dir.join("failed");
        fs::create_dir_all(&failed)?;
        let _ = fs::write(failed.join(format!("{entry}.reason.txt")), format!("{error}\n"));
        fs::rename(path, failed.join(entry))?;
        sync_dir(&failed)?;
        sync_dir(&self.outbox_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing::{
        dead_url, http_receiver, next, notification, outbox_entries, start, wait_for, webhook,
    };
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn server_errors_are_retried_until_delivered_once() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(500, "", "boom"), (500, "", "boom"), (200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        notifier.send(&notification(&["hook"])).unwrap();
        wait_for("delivery", || notifier.stats()["hook"].delivered == 1).await;
        for _ in 0..3 {
            next(&mut rx).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "nothing is sent after the 200");
        let stats = &notifier.stats()["hook"];
        assert_eq!((stats.delivered, stats.attempts_failed, stats.refused, stats.pending), (1, 2, 0, 0));
        assert!(stats.last_error.as_deref().unwrap().contains("500"));
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(429, "Retry-After: 1\r\n", "slow down"), (200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        notifier.send(&notification(&["hook"])).unwrap();
        next(&mut rx).await;
        let first = tokio::time::Instant::now();
        next(&mut rx).await;
        assert!(first.elapsed() >= Duration::from_millis(900), "retried after {:?}", first.elapsed());
    }

    #[tokio::test]
    async fn a_client_error_is_set_aside_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(404, "", "no such hook"), (200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        notifier.send(&notification(&["hook"])).unwrap();
        wait_for("refusal", || notifier.stats()["hook"].refused == 1).await;
        next(&mut rx).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_err(), "a 404 is not retried");
        let stats = &notifier.stats()["hook"];
        assert_eq!((stats.delivered, stats.attempts_failed, stats.pending), (0, 0, 0));
        let error = stats.last_error.as_deref().unwrap();
        assert!(error.contains("404") && error.contains("no such hook"), "{error}");
        assert!(outbox_entries(dir.path()).is_empty());
        let failed = outbox_entries(&dir.path().join("failed"));
        assert_eq!(failed.len(), 1, "{failed:?}");
        let kept: EntryIn =
            serde_json::from_slice(&fs::read(dir.path().join("failed").join(&failed[0])).unwrap()).unwrap();
        assert_eq!(kept.notification, notification(&["hook"]));
        let reason = fs::read_to_string(dir.path().join("failed").join(format!("{}.reason.txt", failed[0]))).unwrap();
        assert!(reason.contains("404"));
    }

    #[tokio::test]
    async fn the_outbox_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (notifier, shutdown) = start(vec![("hook", webhook(&dead_url().await))], dir.path());
        let n = notification(&["hook"]);
        notifier.send(&n).unwrap();
        wait_for("a failed attempt", || notifier.stats()["hook"].attempts_failed >= 1).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(3), notifier.stopped()).await.unwrap();
        assert_eq!(outbox_entries(dir.path()).len(), 1);

        let (url, mut rx) = http_receiver(vec![(200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        assert_eq!(notifier.stats()["hook"].pending, 1);
        let body = next(&mut rx).await.json();
        assert_eq!(body["id"], n.id.as_str());
        wait_for("delivery", || notifier.stats()["hook"].delivered == 1).await;
        assert!(outbox_entries(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_hanging_channel_does_not_delay_another() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts connections and never answers.
        let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hang_url = format!("http://{}/", hang.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hang.accept().await {
                held.push(s);
            }
        });
        let (url, mut rx) = http_receiver(vec![(200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("down", webhook(&hang_url)), ("up", webhook(&url))], dir.path());
        let first = notification(&["down", "up"]);
        let mut second = first.clone();
        second.id.push_str("-2");
        notifier.send(&first).unwrap();
        notifier.send(&second).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(next(&mut rx).await.json()["id"], first.id.as_str());
        assert_eq!(next(&mut rx).await.json()["id"], second.id.as_str(), "oldest first");
        assert!(started.elapsed() < Duration::from_secs(1));
        wait_for("delivery", || notifier.stats()["up"].delivered == 2).await;
        let stats = notifier.stats();
        assert_eq!((stats["down"].delivered, stats["down"].pending), (0, 2));
    }
}
