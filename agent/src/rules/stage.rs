//! The rules stage: between `normalise` and the buffer intake. For every reading it evaluates
//! the rules first and fires their actions inline (handing them off without waiting), and only
//! then passes the reading on to be written: a trip never waits on the disk or the uplink.
//! Latches are persisted in the agent's buffer database, after the actions fired, by a writer
//! task of their own (an fsync never sits on the fast path).

use std::{
    collections::BTreeSet,
    sync::atomic::Ordering::Relaxed,
    sync::{Arc, Mutex},
    time::Instant,
};

use edgeloop_rules::{
    config::RuleFile,
    engine::{Engine, Outcome, ResetOutcome},
};
use edgeloop_shared::{
    clock::now_ns,
    model::{Event, EventKind},
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    actions::Actions,
    pipeline::{LatchChange, Record},
    stats::AgentStats,
};

/// Requests to the rules stage from the rest of the agent.
pub enum Control {
    Reset {
        rule: String,
        reply: oneshot::Sender<ResetOutcome>,
    },
    /// Swap in a validated rule set; answers the new version or why it was refused.
    Reload {
        file: RuleFile,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// A command was executed: fire `actions` (as a trip of rule `subject` would) and record
    /// `event`; answers the actions that could not be handed off.
    Command {
        event: Event,
        actions: Vec<String>,
        reply: oneshot::Sender<Vec<String>>,
    },
}

/// Sends requests to the running rules stage. Cheap to clone.
#[derive(Clone)]
pub struct RulesHandle {
    tx: mpsc::Sender<Control>,
    latched: Arc<Mutex<BTreeSet<String>>>,
}

impl RulesHandle {
    /// Asks to release a latched rule; refused while its condition or sensors are still bad.
    pub async fn reset(&self, rule: &str) -> ResetOutcome {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Control::Reset { rule: rule.to_owned(), reply }).await.is_err() {
            return ResetOutcome::Refused("the agent is stopping".into());
        }
        answer.await.unwrap_or_else(|_| ResetOutcome::Refused("the agent is stopping".into()))
    }
}

impl RulesHandle {
    /// Swaps in a new (already validated) rule set atomically; the state of unchanged rules is
    /// kept. Refused when it would drop a latched rule.
    pub async fn reload(&self, file: RuleFile) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Control::Reload { file, reply }).await.is_err() {
            return Err("the agent is stopping".into());
        }
        answer.await.unwrap_or_else(|_| Err("the agent is stopping".into()))
    }

    /// Fires `actions` of the running rule file (as a trip of rule `event.subject` would fire
    /// them) and records `event` in the buffer, behind every record already in the stage.
    ///
    /// # Errors
    /// The actions that could not be handed off (`"<action>: <why>"`), or that the agent is
    /// stopping; the event is recorded either way unless the agent is stopping.
    pub async fn command(&self, event: Event, actions: Vec<String>) -> Result<(), Vec<String>> {
        let stopping = || vec!["the agent is stopping".to_owned()];
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Control::Command { event, actions, reply }).await.is_err() {
            return Err(stopping());
        }
        match answer.await {
            Ok(failures) if failures.is_empty() => Ok(()),
            Ok(failures) => Err(failures),
            Err(_) => Err(stopping()),
        }
    }

    /// The rules latched right now.
    pub fn latched(&self) -> Vec<String> {
        self.latched.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }
}

/// The handle for the rest of the agent, the receiver and the shared latch view for the stage.
pub fn control_channel() -> (RulesHandle, mpsc::Receiver<Control>, Arc<Mutex<BTreeSet<String>>>) {
    let (tx, rx) = mpsc::channel(16);
    let latched = Arc::new(Mutex::new(BTreeSet::new()));
    (RulesHandle { tx, latched: latched.clone() }, rx, latched)
}

pub struct Stage {
    pub engine: Engine,
    pub file: Arc<RuleFile>,
    pub actions: Actions,
    /// Latched rules found in the buffer at start.
    pub restored: Vec<String>,
    pub latches: mpsc::UnboundedSender<LatchChange>,
    /// What [`RulesHandle::latched`] shows.
    pub latched_view: Arc<Mutex<BTreeSet<String>>>,
    /// Builds the actions of a (reloaded) rule file.
    pub make_actions: Box<dyn Fn(&RuleFile) -> Actions + Send>,
    pub stats: Arc<AgentStats>,
    /// The recorder's queue, when recording: off the fast path, dropped (and counted) when full.
    pub recording: Option<mpsc::Sender<Record>>,
}

impl Stage {
    fn apply(&mut self, outcomes: &mut Vec<Outcome>, forward: &mut Vec<Record>) {
        for o in outcomes.drain(..) {
            match o {
                Outcome::Fire { rule, actions, sensor, value } => {
                    // Failures are logged and counted by `fire`.
                    let _ = self.actions.fire(&self.file, &actions, &rule, &sensor, value);
                }
                Outcome::Latch { rule, latched } => {
                    if let Ok(mut view) = self.latched_view.lock() {
                        if latched {
                            view.insert(rule.clone());
                        } else {
                            view.remove(&rule);
                        }
                    }
                    let since = latched.then(now_ns);
                    if self.latches.send((rule.clone(), since)).is_err() {
                        tracing::error!(rule, "cannot persist the latch: its writer stopped");
                    }
                }
                Outcome::Event(e) => {
                    match e.kind {
                        EventKind::Trip => tracing::warn!(rule = %e.subject, message = %e.message, "rule tripped"),
                        EventKind::Reset => tracing::info!(rule = %e.subject, message = %e.message, "rule reset"),
                        _ => tracing::info!(rule = %e.subject, message = %e.message, "rule event"),
                    }
                    forward.push(Record::Event(e));
                }
            }
        }
    }
}

fn loaded_event(version: u64, rules: usize) -> Record {
    Record::Event(edgeloop_shared::model::Event {
        ts_ns: now_ns(),
        kind: EventKind::RulesLoaded { version },
        severity: edgeloop_shared::model::Severity::Info,
        subject: "rules".into(),
        message: format!("rule set version {version} running ({rules} rules)"),
        values: vec![("rules".into(), rules as f64)],
    })
}

/// Runs the stage until its input closes.
pub async fn run(
    mut stage: Stage,
    mut input: mpsc::Receiver<Record>,
    out: mpsc::Sender<Record>,
    mut control: mpsc::Receiver<Control>,
) {
    let mut outcomes = Vec::new();
    let mut forward = Vec::with_capacity(1024);
    let mut batch = Vec::with_capacity(1024);
    // Latches from before a restart: the rules start tripped and re-assert their actions.
    for rule in std::mem::take(&mut stage.restored) {
        if stage.engine.restore_latch(&rule, &mut outcomes) {
            tracing::warn!(rule, "rule still latched from before the restart; trip re-asserted");
        } else if stage.latches.send((rule.clone(), None)).is_err() {
            tracing::error!(rule, "cannot drop the latch of a rule that no longer exists");
        }
    }
    stage.apply(&mut outcomes, &mut forward);
    stage.stats.rules_version.store(1, Relaxed);
    forward.push(loaded_event(1, stage.engine.rule_count()));
    let mut tick = tokio::time::interval(stage.engine.tick_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut control_open = true;
    loop {
        tokio::select! {
            n = input.recv_many(&mut batch, 1024) => {
                if n == 0 {
                    break;
                }
                for record in batch.drain(..) {
                    let now = Instant::now();
                    match &record {
                        Record::Reading(r) => {
                            if stage.engine.watches(&r.sensor) {
                                stage.engine.on_reading(&r.sensor, r.ts_ns, r.value, now, now_ns(), &mut outcomes);
                            }
                        }
                        Record::Event(e) => match e.kind {
                            EventKind::SensorStale => stage.engine.on_stale(&e.subject, true, now, now_ns(), &mut outcomes),
                            EventKind::SensorRecovered => stage.engine.on_stale(&e.subject, false, now, now_ns(), &mut outcomes),
                            _ => {}
                        },
                    }
                    // Actions first, then the records: the trip never waits on the buffer.
                    stage.apply(&mut outcomes, &mut forward);
                    if let Some(rec) = &stage.recording
                        && rec.try_send(record.clone()).is_err()
                    {
                        stage.stats.records_not_recorded.fetch_add(1, Relaxed);
                    }
                    forward.push(record);
                }
            }
            _ = tick.tick() => {
                stage.engine.tick(Instant::now(), now_ns(), &mut outcomes);
                stage.apply(&mut outcomes, &mut forward);
            }
            c = control.recv(), if control_open => match c {
                Some(Control::Reset { rule, reply }) => {
                    let answer = stage.engine.reset(&rule, now_ns(), &mut outcomes);
                    stage.apply(&mut outcomes, &mut forward);
                    let _ = reply.send(answer);
                }
                Some(Control::Reload { file, reply }) => {
                    let answer = match stage.engine.reload(&file) {
                        Ok(()) => {
                            stage.actions = (stage.make_actions)(&file);
                            stage.file = Arc::new(file);
                            let version = stage.stats.rules_version.fetch_add(1, Relaxed) + 1;
                            tick = tokio::time::interval(stage.engine.tick_interval());
                            tracing::info!(version, rules = stage.engine.rule_count(), "rule set reloaded");
                            forward.push(loaded_event(version, stage.engine.rule_count()));
                            Ok(version)
                        }
                        Err(latched) => {
                            stage.stats.rules_reload_failures.fetch_add(1, Relaxed);
                            Err(format!("the new rule set drops latched rule(s) {latched:?}; reset them first"))
                        }
                    };
                    let _ = reply.send(answer);
                }
                Some(Control::Command { event, actions, reply }) => {
                    let failures = stage.actions.fire(&stage.file, &actions, &event.subject, "", 0.0);
                    tracing::warn!(subject = %event.subject, message = %event.message, "command executed");
                    forward.push(Record::Event(event));
                    let _ = reply.send(failures);
                }
                None => control_open = false,
            },
        }
        for r in forward.drain(..) {
            if out.send(r).await.is_err() {
                return;
            }
        }
    }
}
