//! Central automation: the fleet's stream in, alerts people can live with and commands to the
//! machines out.
//!
//! ```text
//! ingest (stored batches) ─► engine: fleet rules ─► alert book ─► notifier (webhook, Slack, PagerDuty, SMTP)
//! fleet registry ─────────►  (threshold, absence,     (lifecycle, grouping,
//!                             anomaly, prediction)     silences, inhibition)
//!                                   └─► command requests ─► commander (sign, send, audit) ─► agents
//! ```
//!
//! # Layout
//! - [`rules`]: the fleet rule file (strict TOML, validated, hot-reloaded).
//! - [`engine`]: the rules evaluated on batches and on a clock tick; pure state.
//! - [`detect`]: per-series anomaly detection (robust z-score, CUSUM).
//! - [`predict`]: trend fitting and time-to-limit with its interval.
//! - [`monitor`]: detect + predict for one condition indicator, as the engine runs it.
//! - [`fingerprint`]: the identity of an alert (a stable hash of its rule and labels).
//! - [`muting`]: label matchers, silences and inhibit rules.
//! - [`alerts`]: the alert lifecycle (pending, firing, resolved; ack, silence, inhibit, group).
//! - [`commands`]: signed commands to agents and the audit log.
//! - [`replay`]: a recording through the fleet rules in simulated time (`rules test`).
//! - [`synthetic`]: the synthetic run-to-failure set the tests and benchmarks score against.
//!
//! Only one collector of a fleet should run the automation (set `[automation]` on it alone): its
//! state (alerts, baselines) lives in its `state_dir` and survives its restarts.

pub mod alerts;
pub mod commands;
pub mod detect;
pub mod engine;
pub mod fingerprint;
pub mod monitor;
pub mod muting;
pub mod predict;
pub mod replay;
pub mod rules;
pub mod synthetic;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use edgeloop_shared::{
    atomic_file::{self, Access},
    batch::Batch,
    clock::now_ns,
    model::{CommandAction, CommandResult},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::{
    alerts::{AlertBook, AlertView, AlertsConfig},
    commands::{AuditLog, AuditRecord, AwaitingApproval, CommandError, Commander},
    engine::{Engine, EngineState},
    muting::{Silence, SilenceView},
    rules::{Approval, CommandKind, FleetRules},
};
use crate::{
    config::AutomationConfig,
    fleet::Fleet,
    notify::{self, NotifierHandle},
};

#[derive(Debug, thiserror::Error)]
pub enum AutomationError {
    #[error("cannot load the fleet rules: {0}")]
    Rules(#[from] edgeloop_shared::config::ConfigError),
    #[error("cannot use the state directory {path}: {error}")]
    StateDir { path: PathBuf, error: std::io::Error },
    #[error("the saved alert state {path} does not load: {error}")]
    State { path: PathBuf, error: String },
    #[error(transparent)]
    Alert(#[from] alerts::AlertError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
}

/// The running automation; shared by the task and the HTTP API.
pub struct Automation {
    engine: Mutex<Engine>,
    commander: tokio::sync::Mutex<Commander>,
    notifier: NotifierHandle,
    audit_path: PathBuf,
    state_dir: PathBuf,
    /// Stored batches the engine has taken.
    batches_seen: std::sync::atomic::AtomicU64,
}

impl Automation {
    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every alert the book holds, with its dashboard link and why it is (not) notified.
    /// The notification channels' delivery counters (for `/metrics`).
    pub fn notifier_stats(&self) -> std::collections::BTreeMap<String, notify::ChannelStats> {
        self.notifier.stats()
    }

    pub fn alerts(&self) -> Vec<AlertView> {
        self.engine().alerts()
    }

    pub fn ack(&self, fingerprint: &str, by: &str) -> Result<AlertView, alerts::AlertError> {
        let mut e = self.engine();
        e.book.ack(fingerprint, by, now_ns())?;
        e.alerts()
            .into_iter()
            .find(|v| v.alert.fingerprint == fingerprint)
            .ok_or_else(|| alerts::AlertError::UnknownAlert { fingerprint: fingerprint.into() })
    }

    pub fn silence(&self, silence: Silence) -> Result<String, alerts::AlertError> {
        self.engine().book.silence(silence)
    }

    pub fn expire_silence(&self, id: &str) -> Result<(), alerts::AlertError> {
        self.engine().book.expire_silence(id, now_ns())
    }

    pub fn silences(&self) -> Vec<SilenceView> {
        self.engine().book.silences(now_ns())
    }

    /// Signs and sends a command a person asked for (the API checked their role).
    pub async fn command(&self, agent: &str, action: CommandAction, issuer: &str) -> Result<u64, CommandError> {
        self.commander.lock().await.send(agent, action, issuer, now_ns()).await
    }

    /// Audits a command request refused before signing (e.g. the caller's role).
    pub async fn refuse_command(&self, agent: &str, action: &CommandAction, issuer: &str, why: &str) {
        self.commander.lock().await.refused(agent, issuer, action, why, now_ns());
    }

    pub async fn approvals(&self) -> Vec<AwaitingApproval> {
        self.commander.lock().await.awaiting.clone()
    }

    pub async fn approve(&self, id: u64, by: &str) -> Result<u64, CommandError> {
        self.commander.lock().await.approve(id, by, now_ns()).await
    }

    /// The last `n` audit records, newest first.
    pub fn audit(&self, n: usize) -> Vec<AuditRecord> {
        let log = AuditLog::open(&self.audit_path);
        let mut out = log.map(|l| l.recent(n)).unwrap_or_default();
        out.reverse();
        out
    }

    /// The public key agents must trust, when commands are signed.
    pub async fn public_key_hex(&self) -> Option<String> {
        self.commander.lock().await.public_key_hex()
    }

    /// Stored batches the engine has evaluated since start.
    pub fn batches_seen(&self) -> u64 {
        self.batches_seen.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Series the engine watches.
    pub fn series_count(&self) -> usize {
        self.engine().series_count()
    }

    /// The alert book as saved (JSON).
    fn book_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.engine().book)
    }

    /// Saves the alert book (already encoded), the series' learned state and the commands
    /// awaiting approval.
    fn save(&self, book: Result<Vec<u8>, serde_json::Error>, approvals: &[AwaitingApproval]) {
        let state = serde_json::to_vec(&self.engine().state);
        let approvals = serde_json::to_vec(approvals);
        for (name, bytes) in [("alerts.json", book), ("series.json", state), ("approvals.json", approvals)] {
            match bytes {
                Ok(b) => {
                    if let Err(e) = atomic_file::write(&self.state_dir.join(name), &b, Access::Default) {
                        tracing::error!(file = name, error = %e, "cannot save the automation state");
                    }
                }
                Err(e) => tracing::error!(file = name, error = %e, "cannot encode the automation state"),
            }
        }
    }
}

fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, AutomationError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AutomationError::State { path: path.into(), error: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(AutomationError::StateDir { path: path.into(), error }),
    }
}

/// What the automation task is fed.
pub struct Inputs {
    pub stored: mpsc::Receiver<Arc<Batch>>,
    pub results: mpsc::Receiver<CommandResult>,
}

/// Loads the rules and the saved state and starts the notifier; [`run`] then drives it.
pub fn start(
    config: &AutomationConfig,
    channels: std::collections::BTreeMap<String, notify::ChannelConfig>,
    client: crate::mqtt::Client,
    shutdown: CancellationToken,
) -> Result<Arc<Automation>, AutomationError> {
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir).map_err(|error| AutomationError::StateDir { path: dir.clone(), error })?;
    let channel_ids: Vec<String> = channels.keys().cloned().collect();
    let rules = FleetRules::load(&config.rules)?;
    let problems = rules.problems(Some(&channel_ids));
    if !problems.is_empty() {
        return Err(AutomationError::Rules(edgeloop_shared::config::ConfigError::Invalid {
            path: config.rules.clone(),
            problems,
        }));
    }
    let ns = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
    let alerts_config = AlertsConfig {
        resolved_retention_ns: ns(config.resolved_retention.0),
        flap_window_ns: ns(config.flap_window.0),
        flap_threshold: config.flap_threshold,
        inhibit: engine::inhibit_rules(&rules),
        max_silence_ns: ns(config.max_silence.0),
    };
    let book = match load::<AlertBook>(&dir.join("alerts.json"))? {
        Some(mut book) => {
            book.set_config(alerts_config)?;
            book
        }
        None => AlertBook::new(alerts_config)?,
    };
    let state = load::<EngineState>(&dir.join("series.json"))?.unwrap_or_default();
    let engine = Engine::new(rules, book, state, config.dashboard_url.clone());
    let notifier = notify::Notifier::start(channels, dir.join("outbox"), shutdown)?;
    let audit_path = dir.join("audit.jsonl");
    let mut commander =
        Commander::new(config.signing_key.as_deref(), config.command_ttl.0, AuditLog::open(&audit_path)?, client)?;
    commander.awaiting = load::<Vec<AwaitingApproval>>(&dir.join("approvals.json"))?.unwrap_or_default();
    Ok(Arc::new(Automation {
        engine: Mutex::new(engine),
        commander: tokio::sync::Mutex::new(commander),
        notifier,
        audit_path,
        state_dir: dir.clone(),
        batches_seen: Default::default(),
    }))
}

/// Drives the automation until `shutdown`: batches and results as they come, absence rules and
/// alert timers every second, the rule file re-read when it changes, state saved as it changes.
pub async fn run(
    automation: Arc<Automation>,
    config: AutomationConfig,
    mut inputs: Inputs,
    fleet: Arc<Fleet>,
    store: Arc<crate::store::Store>,
    shutdown: CancellationToken,
) {
    // What the database has been told about each alert (restored alerts are not written again).
    let mut recorded: std::collections::HashMap<String, crate::model::AlertState> =
        automation.alerts().into_iter().map(|v| (v.alert.fingerprint, v.alert.state)).collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rules_check = tokio::time::interval(config.rules_check_interval.0.max(Duration::from_millis(100)));
    let mut rules_mtime = modified(&config.rules);
    let mut last_saved_book = Vec::new();
    let mut last_series_save = tokio::time::Instant::now();
    loop {
        tokio::select! {
            b = inputs.stored.recv() => match b {
                Some(batch) => {
                    automation.engine().on_batch(now_ns(), &batch);
                    automation.batches_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                None => break,
            },
            r = inputs.results.recv() => if let Some(r) = r {
                automation.commander.lock().await.on_result(&r);
            },
            _ = tick.tick() => {
                let (notifications, commands) = automation.engine().tick(now_ns(), &fleet.agents());
                for n in notifications {
                    tracing::info!(group = %n.group_key, status = ?n.status, alerts = n.alerts.len(), "notification");
                    let notifier = automation.notifier.clone();
                    // The outbox write fsyncs: off the runtime's threads.
                    match tokio::task::spawn_blocking(move || notifier.send(&n)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "notification not queued in full"),
                        Err(e) => tracing::error!(error = %e, "notification task failed"),
                    }
                }
                for c in commands {
                    let action = match c.action {
                        CommandKind::Shutdown => CommandAction::Shutdown { reason: c.reason.clone() },
                    };
                    let issuer = format!("automation:{}", c.rule);
                    let mut commander = automation.commander.lock().await;
                    match c.approval {
                        Approval::Auto => {
                            if let Err(e) = commander.send(&c.agent, action, &issuer, now_ns()).await {
                                tracing::error!(agent = %c.agent, rule = %c.rule, error = %e, "automation command not sent");
                            }
                        }
                        Approval::Required => {
                            let id = commander.request_approval(&c.agent, action, &issuer, Some(c.fingerprint), now_ns());
                            tracing::warn!(agent = %c.agent, rule = %c.rule, id, "command awaits a person's approval");
                        }
                    }
                }
                record_changes(&automation, &mut recorded, &store);
                // Encoded once a tick: compared with what was saved last, and saved as is.
                let book = automation.book_json();
                let changed = book.as_ref().map_or(true, |b| *b != last_saved_book);
                if changed || last_series_save.elapsed() > Duration::from_secs(60) {
                    if let Ok(b) = &book {
                        last_saved_book.clone_from(b);
                    }
                    last_series_save = tokio::time::Instant::now();
                    let a = automation.clone();
                    let approvals = automation.commander.lock().await.awaiting.clone();
                    let _ = tokio::task::spawn_blocking(move || a.save(book, &approvals)).await;
                }
            }
            _ = rules_check.tick() => {
                let m = modified(&config.rules);
                if m != rules_mtime {
                    rules_mtime = m;
                    reload(&automation, &config.rules);
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    let a = automation.clone();
    let approvals = automation.commander.lock().await.awaiting.clone();
    let _ = tokio::task::spawn_blocking(move || a.save(a.book_json(), &approvals)).await;
}

/// Writes alerts that fired or resolved since the last tick to the database's alerts measurement
/// (off the automation's path: a slow database delays only this write).
fn record_changes(
    automation: &Automation,
    recorded: &mut std::collections::HashMap<String, crate::model::AlertState>,
    store: &Arc<crate::store::Store>,
) {
    let views = automation.alerts();
    let mut changed = Vec::new();
    for v in &views {
        let state = v.alert.state;
        if state != crate::model::AlertState::Pending && recorded.get(&v.alert.fingerprint) != Some(&state) {
            recorded.insert(v.alert.fingerprint.clone(), state);
            changed.push(v.alert.clone());
        }
    }
    recorded.retain(|fp, _| views.iter().any(|v| &v.alert.fingerprint == fp));
    if !changed.is_empty() {
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.write_alerts(&changed, now_ns()).await {
                tracing::warn!(alerts = changed.len(), error = %e, "alert changes not written to the database");
            }
        });
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-reads the rule file; a file with problems is refused and the running rules stay.
fn reload(automation: &Automation, path: &Path) {
    let channels: Vec<String> = automation.notifier.stats().keys().cloned().collect();
    let rules = match FleetRules::load(path) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "fleet rules not reloaded; the running rules stay");
            return;
        }
    };
    let problems = rules.problems(Some(&channels));
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        tracing::error!(problems = ?list, "fleet rules not reloaded; the running rules stay");
        return;
    }
    let count = rules.rules.len();
    match automation.engine().set_rules(rules, now_ns()) {
        Ok(()) => tracing::info!(rules = count, "fleet rules reloaded"),
        Err(e) => tracing::error!(error = %e, "fleet rules not reloaded; the running rules stay"),
    }
}
