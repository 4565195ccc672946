//! Signed commands from the collector: `Shutdown`, `ResetLatch` and `PushRules`.
//!
//! The uplink's poll task hands every payload received on `edgeloop/v1/{agent}/cmd` to this task
//! over a bounded queue. For each one the task decides, in this order: the payload decodes as a
//! [`SignedCommand`]; commands are enabled (`[commands] public_key` is set); the signature, the
//! addressee, the expiry and the issue time check out ([`VerifyingKey::verify`]); the id was not
//! executed before (a replay). Only then does it act:
//!
//! - `Shutdown`: fires `[commands] shutdown_actions` through the rules stage, as a trip fires a
//!   rule's actions;
//! - `ResetLatch`: asks the rules stage to release the latch (refused while the condition holds);
//! - `PushRules`: validates the text exactly as `edgeloop-agent rules check --config` does, refuses
//!   it if it adds or changes an `exec` action the agent's own config does not allow (see
//!   [`PushedExec`]), writes it over the rule file atomically and reloads it; a refused reload puts
//!   the old file back.
//!
//! Every command, accepted or refused, is appended to the audit log (JSON Lines, fsynced) and
//! answered with a [`CommandResult`] on `edgeloop/v1/{agent}/result` whenever its id can be read.
//! An executed command also becomes an [`EventKind::Command`] event in the buffer, so it reaches
//! the collector's database beside the trips. The ids of verified commands are kept until they
//! expire, and reloaded from the audit log at start, so a restart does not re-open a replay.

use std::{
    collections::HashMap,
    io::{BufRead, Write},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
};

use edgeloop_rules::{
    config::{ActionConfig, Context, RuleFile},
    engine::ResetOutcome,
};
use edgeloop_shared::{
    clock,
    command::{MAX_CLOCK_SKEW_NS, VerifyingKey},
    model::{Command, CommandAction, CommandResult, Event, EventKind, Severity, SignedCommand, from_wire, to_wire},
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    rules::{RuleFilePath, stage::RulesHandle},
    stats::AgentStats,
};

/// Commands waiting between the uplink and this task; more are dropped (logged).
pub const INBOX: usize = 32;

/// What the commands task needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent: String,
    /// The issuer's key; `None`: commands are disabled and every one is refused.
    pub key: Option<VerifyingKey>,
    /// What a `Shutdown` command fires.
    pub shutdown_actions: Vec<String>,
    pub audit_log: PathBuf,
    /// The rule file `PushRules` replaces; `None`: the agent has no rule file, pushes are refused.
    pub rule_file: Option<Arc<RuleFilePath>>,
    /// What a pushed rule file is validated against (the agent's sources and shutdown actions).
    pub rules_context: Context,
    /// Which `exec` actions a pushed rule file may bring.
    pub pushed_exec: PushedExec,
}

/// What a pushed rule file may do with `exec` actions, from `[commands]` in the agent's own
/// config. A signed push proves who sent it, not that they may run programs on the gateway: an
/// `exec` action the file adds or changes needs `allow_pushed_exec` and a program on the
/// allowlist. Actions kept exactly as the running file has them, and removals, always pass.
#[derive(Debug, Clone, Default)]
pub struct PushedExec {
    pub allowed: bool,
    pub allowlist: Vec<PathBuf>,
}

impl PushedExec {
    /// Why `pushed` may not replace `current` (`None`: the agent had no readable rule file), one
    /// line per action; empty when it may.
    pub fn refusals(&self, current: Option<&RuleFile>, pushed: &RuleFile) -> Vec<String> {
        let mut out = Vec::new();
        for (id, action) in &pushed.actions {
            let ActionConfig::Exec(exec) = action else { continue };
            let unchanged = matches!(
                current.and_then(|c| c.actions.get(id)),
                Some(ActionConfig::Exec(old))
                    if old.program == exec.program && old.args == exec.args && old.timeout.0 == exec.timeout.0
            );
            if unchanged {
                continue;
            }
            let program = exec.program.display();
            if !self.allowed {
                out.push(format!(
                    "action {id} runs {program}: a pushed rule file may not add or change exec actions \
                     ([commands] allow_pushed_exec is off on this agent)"
                ));
            } else if !self.allowlist.contains(&exec.program) {
                out.push(format!("action {id} runs {program}, which is not in [commands] exec_allowlist"));
            }
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandsError {
    #[error("cannot open the command audit log {path}: {error}")]
    Audit { path: PathBuf, error: std::io::Error },
}

/// Whether a command was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Verified and carried out.
    Accepted,
    /// Not carried out: unreadable, disabled, not verified, replayed, or its action failed.
    Refused,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the agent decided (ns since the Unix epoch).
    pub ts_ns: i64,
    /// The command's id, when its body could be read (even unverified).
    pub id: Option<u64>,
    pub issuer: Option<String>,
    /// e.g. `reset_latch overtemp`.
    pub action: Option<String>,
    pub key_id: Option<String>,
    /// The signature, addressee and validity checked out: from here on the id is used up.
    pub verified: bool,
    pub expires_ns: Option<i64>,
    pub verdict: Verdict,
    /// What was done, or why not (the `outcome` of the result sent back).
    pub result: String,
}

/// The commands task's state: the audit log and the ids already executed.
pub struct Commands {
    settings: Settings,
    rules: RulesHandle,
    stats: Arc<AgentStats>,
    audit: Arc<Mutex<std::fs::File>>,
    /// Ids of verified commands → their expiry; forgotten a clock allowance after they expired
    /// (a replay is then refused as expired anyway).
    executed: HashMap<u64, i64>,
}

/// Whether a command id that expires at `expires_ns` must still be remembered at `now_ns`. Kept
/// for [`MAX_CLOCK_SKEW_NS`] past its expiry: a gateway clock stepped back (NTP after a drift, an
/// RTC reset) by up to that much would otherwise see the command valid again with its id
/// already forgotten, and execute a replay.
fn still_reserved(expires_ns: i64, now_ns: i64) -> bool {
    expires_ns.saturating_add(MAX_CLOCK_SKEW_NS) >= now_ns
}

impl Commands {
    /// Opens (or creates) the audit log and reloads from it the ids of commands still valid at
    /// `now_ns`.
    ///
    /// # Errors
    /// When the audit log cannot be opened for appending.
    pub fn open(
        settings: Settings,
        rules: RulesHandle,
        stats: Arc<AgentStats>,
        now_ns: i64,
    ) -> Result<Self, CommandsError> {
        let path = settings.audit_log.clone();
        let err = |error| CommandsError::Audit { path: path.clone(), error };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut executed = HashMap::new();
        if let Ok(file) = std::fs::File::open(&path) {
            for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<AuditRecord>(&line) {
                    Ok(AuditRecord { id: Some(id), verified: true, expires_ns: Some(expires), .. })
                        if still_reserved(expires, now_ns) =>
                    {
                        executed.insert(id, expires);
                    }
                    Ok(_) => {}
                    // A line torn by a crash mid-write, or edited by hand: the rest still counts.
                    Err(e) => {
                        tracing::warn!(file = %path.display(), line = n + 1, error = %e, "skipping an unreadable audit record")
                    }
                }
            }
        }
        let audit = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(err)?;
        match &settings.key {
            Some(key) => {
                tracing::info!(agent = %settings.agent, key_id = %key.key_id(), remembered = executed.len(), "signed commands enabled")
            }
            None => {
                tracing::info!(agent = %settings.agent, "signed commands disabled (no [commands] public_key): every command is refused")
            }
        }
        if settings.key.is_some() && settings.shutdown_actions.is_empty() {
            tracing::warn!(agent = %settings.agent, "commands.shutdown_actions is empty: a Shutdown command will be refused");
        }
        Ok(Self { settings, rules, stats, audit: Arc::new(Mutex::new(audit)), executed })
    }

    /// Decides on one payload received on the `cmd` topic, carries the command out when it may,
    /// audits it, and returns the result to send back (`None` when no command id can be read).
    pub async fn handle(&mut self, payload: &[u8], now_ns: i64) -> Option<CommandResult> {
        let mut record = AuditRecord {
            ts_ns: now_ns,
            id: None,
            issuer: None,
            action: None,
            key_id: None,
            verified: false,
            expires_ns: None,
            verdict: Verdict::Refused,
            result: String::new(),
        };
        let (ok, outcome) = self.decide(payload, now_ns, &mut record).await;
        record.verdict = if ok { Verdict::Accepted } else { Verdict::Refused };
        record.result = outcome.clone();
        let counter = if ok { &self.stats.commands_accepted } else { &self.stats.commands_refused };
        counter.fetch_add(1, Relaxed);
        if ok {
            tracing::info!(agent = %self.settings.agent, id = ?record.id, issuer = ?record.issuer, %outcome, "command accepted");
        } else {
            tracing::warn!(agent = %self.settings.agent, id = ?record.id, issuer = ?record.issuer, %outcome, "command refused");
        }
        self.audit(&record).await;
        let id = record.id?;
        Some(CommandResult {
            id,
            agent: self.settings.agent.clone(),
            ok,
            outcome,
            ts_ns: clock::now_ns(),
            rules_version: Some(self.stats.rules_version.load(Relaxed)),
        })
    }

    /// `(ok, outcome)`; fills in what `record` can say about the command.
    async fn decide(&mut self, payload: &[u8], now_ns: i64, record: &mut AuditRecord) -> (bool, String) {
        let signed = match from_wire::<SignedCommand>(payload) {
            Ok(s) => s,
            Err(e) => return (false, format!("refused: malformed command: {e}")),
        };
        record.key_id = Some(signed.key_id.clone());
        // Read before verifying, only to address the answer and the audit record.
        if let Ok(unverified) = from_wire::<Command>(&signed.body) {
            record.id = Some(unverified.id);
            record.issuer = Some(unverified.issuer);
            record.action = Some(unverified.action.summary());
        }
        let Some(key) = &self.settings.key else {
            return (false, "refused: commands disabled".into());
        };
        let command = match key.verify(&signed, &self.settings.agent, now_ns) {
            Ok(c) => c,
            Err(e) => return (false, format!("refused: {e}")),
        };
        record.verified = true;
        record.expires_ns = Some(command.expires_ns);
        self.executed.retain(|_, expires| still_reserved(*expires, now_ns));
        if self.executed.contains_key(&command.id) {
            // Not a new use: the original record keeps the id reserved.
            record.verified = false;
            return (false, format!("refused: replay of command {}, already executed", command.id));
        }
        self.executed.insert(command.id, command.expires_ns);
        self.execute(command).await
    }

    async fn execute(&mut self, command: Command) -> (bool, String) {
        let Command { id, issuer, action, .. } = command;
        let event = |severity, message: String| Event {
            ts_ns: clock::now_ns(),
            kind: EventKind::Command { id },
            severity,
            subject: action.name().into(),
            message,
            values: Vec::new(),
        };
        let (ok, outcome) = match &action {
            CommandAction::Shutdown { reason } => {
                let actions = self.settings.shutdown_actions.clone();
                if actions.is_empty() {
                    return (false, "refused: no commands.shutdown_actions configured on this agent".into());
                }
                let message = format!("shutdown by {issuer}: {reason} (actions {})", actions.join(", "));
                return match self.rules.command(event(Severity::Trip, message), actions.clone()).await {
                    Ok(()) => (true, format!("shutdown: fired {}", actions.join(", "))),
                    Err(failures) => (false, format!("shutdown: could not fire {}", failures.join("; "))),
                };
            }
            CommandAction::ResetLatch { rule } => match self.rules.reset(rule).await {
                ResetOutcome::Released => (true, format!("latch {rule} released")),
                ResetOutcome::NotLatched => (false, format!("refused: rule {rule} is not latched")),
                ResetOutcome::UnknownRule => (false, format!("refused: no rule {rule}")),
                ResetOutcome::Refused(why) => (false, format!("refused: latch {rule} kept: {why}")),
            },
            CommandAction::PushRules { toml } => self.push_rules(toml).await,
        };
        let severity = if ok { Severity::Info } else { Severity::Warning };
        let recorded = event(severity, format!("{} by {issuer}: {outcome}", action.summary()));
        if let Err(why) = self.rules.command(recorded, Vec::new()).await {
            tracing::warn!(id, why = %why.join("; "), "cannot record the command event");
        }
        (ok, outcome)
    }

    async fn push_rules(&self, text: &str) -> (bool, String) {
        let Some(file) = self.settings.rule_file.clone() else {
            return (false, "refused: this agent has no rule file ([agent] rules)".into());
        };
        let parsed = match RuleFile::parse(text, file.path(), &self.settings.rules_context) {
            Ok(f) => f,
            Err(e) => return (false, format!("refused: {e}")),
        };
        let previous = std::fs::read_to_string(file.path()).ok();
        // Compared with the file on disk, which is what runs (a refused reload puts it back).
        let current =
            previous.as_deref().and_then(|t| RuleFile::parse(t, file.path(), &self.settings.rules_context).ok());
        let refusals = self.settings.pushed_exec.refusals(current.as_ref(), &parsed);
        if !refusals.is_empty() {
            tracing::warn!(agent = %self.settings.agent, why = %refusals.join("; "), "pushed rule file refused: exec actions");
            return (false, format!("refused: {}", refusals.join("; ")));
        }
        let (writer, new_text) = (file.clone(), text.to_owned());
        match tokio::task::spawn_blocking(move || writer.replace(&new_text)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (false, format!("refused: cannot write {}: {e}", file.path().display())),
            Err(e) => return (false, format!("refused: cannot write {}: {e}", file.path().display())),
        }
        match self.rules.reload(parsed).await {
            Ok(version) => (true, format!("rules version {version} running")),
            Err(why) => {
                let restored = match previous {
                    Some(old) => {
                        let writer = file.clone();
                        match tokio::task::spawn_blocking(move || writer.replace(&old)).await {
                            Ok(Ok(())) => "the previous file is back".to_owned(),
                            Ok(Err(e)) => format!("the previous file could not be put back: {e}"),
                            Err(e) => format!("the previous file could not be put back: {e}"),
                        }
                    }
                    None => "there was no previous file to put back".to_owned(),
                };
                (false, format!("refused: {why}; {restored}"))
            }
        }
    }

    /// Appends `record` to the audit log and fsyncs it, off the async threads.
    async fn audit(&self, record: &AuditRecord) {
        let line = match serde_json::to_string(record) {
            Ok(l) => l + "\n",
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an audit record");
                return;
            }
        };
        let file = self.audit.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = file.lock().map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(file = %self.settings.audit_log.display(), error = %e, "cannot write the audit log")
            }
            Err(e) => {
                tracing::error!(file = %self.settings.audit_log.display(), error = %e, "the audit writer stopped")
            }
        }
    }
}

/// Runs the commands task until `shutdown` or until the uplink closes its queue: one command at
/// a time, in the order received; results go to the uplink to publish.
pub async fn run(
    mut commands: Commands,
    mut inbox: mpsc::Receiver<Vec<u8>>,
    results: mpsc::Sender<Vec<u8>>,
    shutdown: CancellationToken,
) {
    loop {
        let payload = tokio::select! {
            p = inbox.recv() => match p { Some(p) => p, None => return },
            _ = shutdown.cancelled() => return,
        };
        let Some(result) = commands.handle(&payload, clock::now_ns()).await else {
            continue;
        };
        match to_wire(&result) {
            Ok(bytes) => {
                if results.try_send(bytes).is_err() {
                    tracing::warn!(
                        id = result.id,
                        "the uplink's result queue is full; result not sent (it is in the audit log)"
                    );
                }
            }
            Err(e) => tracing::error!(id = result.id, error = %e, "cannot encode a command result"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, HashMap},
        path::Path,
    };

    use edgeloop_shared::{command::SigningKey, frame::GatewayMessage, model::Reading};

    use super::*;
    use edgeloop_rules::engine::Engine;
    use edgeloop_shared::clock::now_ns;

    use crate::{
        actions::Actions,
        pipeline::{LatchChange, Record},
        rules::stage,
    };

    const RULES: &str = r#"
[rules.overtemp]
sensor = "m.temp"
above = 90.0
clear = 85.0
severity = "trip"
actions = ["relay"]

[actions.relay]
kind = "serial"
source = "node-1"
"#;

    const MINUTE: i64 = 60_000_000_000;

    /// The commands task in front of a real rules stage, with a serial port's command queue.
    struct Rig {
        commands: Commands,
        key: SigningKey,
        readings: mpsc::Sender<Record>,
        records: mpsc::Receiver<Record>,
        port: mpsc::Receiver<GatewayMessage>,
        settings: Settings,
        rules: RulesHandle,
        stats: Arc<AgentStats>,
        dir: tempfile::TempDir,
        next_id: u64,
        _latches: mpsc::UnboundedReceiver<LatchChange>,
    }

    fn context() -> Context {
        Context {
            known: true,
            serial_sources: vec!["node-1".into()],
            mqtt_sources: Vec::new(),
            shutdown_actions: vec!["relay".into()],
        }
    }

    async fn rig(enabled: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let rules_path = dir.path().join("rules.toml");
        std::fs::write(&rules_path, RULES).unwrap();
        let file = RuleFile::parse(RULES, &rules_path, &context()).unwrap();
        let stats = Arc::new(AgentStats::default());
        let (handle, port) = crate::sources::serial::command_channel("/dev/test");
        let serial = BTreeMap::from([("node-1".to_owned(), handle)]);
        let shutdown = CancellationToken::new();
        let make_actions = {
            let stats = stats.clone();
            Box::new(move |f: &RuleFile| Actions::new(f, &serial, &HashMap::new(), "gw-1", stats.clone(), &shutdown))
        };
        // No latch writer: nothing persists in these tests.
        let (latches, latch_rx) = mpsc::unbounded_channel();
        let (rules, control, latched_view) = stage::control_channel();
        let stage = stage::Stage {
            engine: Engine::new(&file),
            actions: make_actions(&file),
            file: Arc::new(file),
            restored: Vec::new(),
            latches,
            latched_view,
            make_actions,
            stats: stats.clone(),
            recording: None,
        };
        let (readings, input) = mpsc::channel(64);
        let (out, records) = mpsc::channel(1024);
        tokio::spawn(stage::run(stage, input, out, control));
        let key = SigningKey::from_seed_hex(&"42".repeat(32)).unwrap();
        let settings = Settings {
            agent: "gw-1".into(),
            key: enabled.then(|| key.verifying_key()),
            shutdown_actions: vec!["relay".into()],
            audit_log: dir.path().join("audit").join("audit.jsonl"),
            rule_file: Some(Arc::new(RuleFilePath::new(rules_path))),
            rules_context: context(),
            pushed_exec: PushedExec::default(),
        };
        let commands = Commands::open(settings.clone(), rules.clone(), stats.clone(), now_ns()).unwrap();
        Rig { commands, key, readings, records, port, settings, rules, stats, dir, next_id: 1, _latches: latch_rx }
    }

    impl Rig {
        fn command(&mut self, action: CommandAction) -> Command {
            self.next_id += 1;
            Command {
                id: self.next_id,
                agent: "gw-1".into(),
                issued_ns: now_ns() - MINUTE,
                expires_ns: now_ns() + MINUTE,
                issuer: "alice".into(),
                action,
            }
        }

        fn signed(&self, command: &Command) -> Vec<u8> {
            to_wire(&self.key.sign(command).unwrap()).unwrap()
        }

        async fn send(&mut self, payload: &[u8]) -> Option<CommandResult> {
            self.commands.handle(payload, now_ns()).await
        }

        /// Feeds one reading through the stage; returns the events it caused.
        async fn reading(&mut self, value: f64) -> Vec<Event> {
            let r = Reading { sensor: "m.temp".into(), ts_ns: now_ns(), value };
            self.readings.send(Record::Reading(r)).await.unwrap();
            let mut events = Vec::new();
            loop {
                match self.records.recv().await.unwrap() {
                    Record::Reading(_) => return events,
                    Record::Event(e) => events.push(e),
                }
            }
        }

        /// The events the stage has passed on so far.
        fn events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.records.try_recv().ok())
                .filter_map(|r| match r {
                    Record::Event(e) => Some(e),
                    Record::Reading(_) => None,
                })
                .collect()
        }

        fn audit(&self) -> Vec<AuditRecord> {
            std::fs::read_to_string(&self.settings.audit_log)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }

        fn rules_text(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("rules.toml")).unwrap()
        }
    }

    #[tokio::test]
    async fn a_bad_signature_is_refused_answered_and_audited() {
        let mut rig = rig(true).await;
        let command = rig.command(CommandAction::Shutdown { reason: "test".into() });
        let mut signed = SigningKey::generate().unwrap().sign(&command).unwrap();
        signed.key_id = rig.key.key_id(); // claiming the trusted key changes nothing
        let result = rig.send(&to_wire(&signed).unwrap()).await.unwrap();
        assert!(!result.ok);
        assert_eq!(
            (result.id, result.agent.as_str(), result.outcome.as_str()),
            (command.id, "gw-1", "refused: bad signature")
        );
        let audit = rig.audit();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].verdict, Verdict::Refused);
        assert!(!audit[0].verified);
        assert_eq!(audit[0].id, Some(command.id));
        assert_eq!(audit[0].action.as_deref(), Some("shutdown (reason: test)"));
        assert_eq!(audit[0].result, "refused: bad signature");
        assert_eq!(rig.stats.commands_refused.load(Relaxed), 1);
        assert!(rig.port.try_recv().is_err(), "nothing was fired");
    }

    #[tokio::test]
    async fn a_shutdown_fires_the_actions_and_records_an_event() {
        let mut rig = rig(true).await;
        let command = rig.command(CommandAction::Shutdown { reason: "coolant leak".into() });
        let result = rig.send(&rig.signed(&command)).await.unwrap();
        assert!(result.ok, "{result:?}");
        assert_eq!(result.outcome, "shutdown: fired relay");
        assert!(matches!(rig.port.try_recv(), Ok(GatewayMessage::Trip { .. })), "a trip went down the serial port");
        let events = rig.events();
        let event = events.iter().find(|e| e.kind == EventKind::Command { id: command.id }).unwrap();
        assert_eq!(event.severity, Severity::Trip);
        assert_eq!(event.subject, "shutdown");
        assert!(event.message.contains("alice") && event.message.contains("coolant leak"), "{}", event.message);
        assert_eq!(rig.stats.commands_accepted.load(Relaxed), 1);
        assert_eq!(rig.audit()[0].verdict, Verdict::Accepted);
    }

    #[tokio::test]
    async fn a_replay_is_refused_also_after_a_restart() {
        let mut rig = rig(true).await;
        let command = rig.command(CommandAction::Shutdown { reason: "once".into() });
        let payload = rig.signed(&command);
        assert!(rig.send(&payload).await.unwrap().ok);
        let again = rig.send(&payload).await.unwrap();
        assert!(!again.ok);
        assert_eq!(again.outcome, format!("refused: replay of command {}, already executed", command.id));
        // A restarted agent reads the executed ids back from its audit log.
        let mut restarted =
            Commands::open(rig.settings.clone(), rig.rules.clone(), rig.stats.clone(), now_ns()).unwrap();
        let after_restart = restarted.handle(&payload, now_ns()).await.unwrap();
        assert!(after_restart.outcome.contains("replay"), "{after_restart:?}");
        assert!(rig.port.try_recv().is_ok());
        assert!(rig.port.try_recv().is_err(), "fired once only");
        let verdicts: Vec<Verdict> = rig.audit().iter().map(|r| r.verdict).collect();
        assert_eq!(verdicts, [Verdict::Accepted, Verdict::Refused, Verdict::Refused]);
    }

    /// The gateway's clock passes a command's expiry (its id could be forgotten), then is stepped
    /// back: the replayed command is valid by the clock again, and still refused as a replay.
    #[tokio::test]
    async fn a_clock_stepped_back_after_expiry_does_not_reopen_a_replay() {
        let mut rig = rig(true).await;
        let command = rig.command(CommandAction::Shutdown { reason: "once".into() });
        let payload = rig.signed(&command);
        let before_expiry = command.expires_ns - 1;
        assert!(rig.commands.handle(&payload, before_expiry).await.unwrap().ok);
        // A minute past its expiry another, valid command arrives: verified, so ids are swept.
        let after_expiry = command.expires_ns + MINUTE;
        let mut other = rig.command(CommandAction::ResetLatch { rule: "overtemp".into() });
        other.expires_ns = after_expiry + MINUTE;
        let other = rig.signed(&other);
        let swept = rig.commands.handle(&other, after_expiry).await.unwrap();
        assert_eq!(swept.outcome, "refused: rule overtemp is not latched", "verified, then refused on its merits");
        let stepped_back = rig.commands.handle(&payload, before_expiry).await.unwrap();
        assert!(!stepped_back.ok);
        assert_eq!(stepped_back.outcome, format!("refused: replay of command {}, already executed", command.id));
        // A restart at that moment reads the id back too.
        let mut restarted =
            Commands::open(rig.settings.clone(), rig.rules.clone(), rig.stats.clone(), after_expiry).unwrap();
        assert!(restarted.handle(&payload, before_expiry).await.unwrap().outcome.contains("replay"));
    }

    #[tokio::test]
    async fn expired_misaddressed_disabled_and_malformed_commands_are_refused() {
        let mut rig = rig(true).await;
        let mut expired = rig.command(CommandAction::ResetLatch { rule: "overtemp".into() });
        expired.expires_ns = now_ns() - 1;
        let result = rig.send(&rig.signed(&expired)).await.unwrap();
        assert!(!result.ok && result.outcome.starts_with("refused: command expired at"), "{result:?}");

        let mut elsewhere = rig.command(CommandAction::ResetLatch { rule: "overtemp".into() });
        elsewhere.agent = "gw-2".into();
        let result = rig.send(&rig.signed(&elsewhere)).await.unwrap();
        assert_eq!(result.outcome, "refused: command is for agent \"gw-2\", this is \"gw-1\"");

        let mut future = rig.command(CommandAction::ResetLatch { rule: "overtemp".into() });
        future.issued_ns = now_ns() + 10 * MINUTE;
        future.expires_ns = now_ns() + 20 * MINUTE;
        let result = rig.send(&rig.signed(&future)).await.unwrap();
        assert!(result.outcome.contains("in the future"), "{result:?}");

        // Nothing to answer when not even the id can be read; still audited and counted.
        assert_eq!(rig.send(&[]).await, None);
        assert_eq!(rig.send(&[2, 0xff, 0xff, 0xff]).await, None);
        assert_eq!(rig.stats.commands_refused.load(Relaxed), 5);
        let audit = rig.audit();
        assert_eq!(audit.len(), 5);
        assert!(audit[3].result.starts_with("refused: malformed command"), "{:?}", audit[3]);

        let mut disabled = super::tests::rig(false).await;
        let command = disabled.command(CommandAction::Shutdown { reason: "x".into() });
        let result = disabled.send(&disabled.signed(&command)).await.unwrap();
        assert_eq!(result.outcome, "refused: commands disabled");
        assert!(disabled.port.try_recv().is_err());
        assert_eq!(disabled.audit()[0].result, "refused: commands disabled");
    }

    #[tokio::test]
    async fn a_latch_is_released_only_once_its_condition_cleared() {
        let mut rig = rig(true).await;
        let reset = |rig: &mut Rig| rig.command(CommandAction::ResetLatch { rule: "overtemp".into() });
        let not_latched = reset(&mut rig);
        let result = rig.send(&rig.signed(&not_latched)).await.unwrap();
        assert_eq!((result.ok, result.outcome.as_str()), (false, "refused: rule overtemp is not latched"));

        let events = rig.reading(95.0).await;
        assert!(events.iter().any(|e| e.kind == EventKind::Trip), "{events:?}");
        let too_early = reset(&mut rig);
        let result = rig.send(&rig.signed(&too_early)).await.unwrap();
        assert!(!result.ok && result.outcome.starts_with("refused: latch overtemp kept"), "{result:?}");
        assert_eq!(rig.rules.latched(), ["overtemp"]);

        rig.reading(80.0).await;
        let command = reset(&mut rig);
        let result = rig.send(&rig.signed(&command)).await.unwrap();
        assert_eq!((result.ok, result.outcome.as_str()), (true, "latch overtemp released"));
        assert!(rig.rules.latched().is_empty());
        let unknown = rig.command(CommandAction::ResetLatch { rule: "nope".into() });
        assert_eq!(rig.send(&rig.signed(&unknown)).await.unwrap().outcome, "refused: no rule nope");
    }

    fn exec_file(actions: &str) -> RuleFile {
        RuleFile::parse(actions, std::path::Path::new("rules.toml"), &Context::default()).unwrap()
    }

    #[test]
    fn a_pushed_file_adds_or_changes_exec_actions_only_as_the_agent_allows() {
        let current = exec_file("[actions.log]\nkind = \"exec\"\nprogram = \"/bin/true\"\n");
        let same = exec_file("[actions.log]\nkind = \"exec\"\nprogram = \"/bin/true\"\n");
        let added = exec_file(
            "[actions.log]\nkind = \"exec\"\nprogram = \"/bin/true\"\n\n\
             [actions.mark]\nkind = \"exec\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"touch /tmp/x\"]\n",
        );
        let changed = exec_file("[actions.log]\nkind = \"exec\"\nprogram = \"/bin/true\"\nargs = [\"x\"]\n");
        let removed = exec_file("");
        let off = PushedExec::default();
        assert!(off.refusals(Some(&current), &same).is_empty(), "kept as it runs");
        assert!(off.refusals(Some(&current), &removed).is_empty(), "removing takes no power");
        let why = off.refusals(Some(&current), &added);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("action mark runs /bin/sh") && why[0].contains("allow_pushed_exec is off"), "{why:?}");
        assert_eq!(off.refusals(Some(&current), &changed).len(), 1, "a changed argument is a change");
        assert_eq!(off.refusals(None, &same).len(), 1, "nothing to compare with: new");

        let listed = PushedExec { allowed: true, allowlist: vec!["/bin/true".into()] };
        assert!(listed.refusals(None, &same).is_empty());
        assert!(listed.refusals(Some(&current), &changed).is_empty(), "an allowed program, other arguments");
        let why = listed.refusals(Some(&current), &added);
        assert!(why.len() == 1 && why[0].contains("/bin/sh, which is not in [commands] exec_allowlist"), "{why:?}");
    }

    #[tokio::test]
    async fn pushed_rules_are_validated_written_and_reloaded() {
        let mut rig = rig(true).await;
        let new_rules = RULES.replace("above = 90.0", "above = 70.0").replace("clear = 85.0", "clear = 65.0");
        let command = rig.command(CommandAction::PushRules { toml: new_rules.clone() });
        let result = rig.send(&rig.signed(&command)).await.unwrap();
        assert_eq!((result.ok, result.outcome.as_str()), (true, "rules version 2 running"));
        assert_eq!(result.rules_version, Some(2));
        assert_eq!(rig.rules_text(), new_rules);
        let mut events = rig.reading(75.0).await;
        assert!(events.iter().any(|e| e.kind == EventKind::Trip), "the new level is in force");

        // Invalid: every problem named, the file untouched.
        let invalid = new_rules.replace("above = 70.0", "above = 70.0\nbelow = 1.0")
            + "\n[actions.relay2]\nkind = \"serial\"\nsource = \"node-9\"\n";
        let command = rig.command(CommandAction::PushRules { toml: invalid });
        let result = rig.send(&rig.signed(&command)).await.unwrap();
        assert!(!result.ok);
        assert!(result.outcome.contains("2 problem(s)"), "{}", result.outcome);
        assert!(
            result.outcome.contains("rules.overtemp.above") && result.outcome.contains("actions.relay2.source"),
            "{}",
            result.outcome
        );
        assert_eq!(rig.rules_text(), new_rules);

        // Without the shutdown action: refused by the same check as `rules check --config`.
        let command = rig.command(CommandAction::PushRules { toml: "".into() });
        let result = rig.send(&rig.signed(&command)).await.unwrap();
        assert!(result.outcome.contains("commands.shutdown_actions"), "{}", result.outcome);

        // Dropping the latched rule: the stage refuses, the previous file is put back.
        let other = "[rules.other]\nsensor = \"m.temp\"\nabove = 1.0\n\n[actions.relay]\nkind = \"serial\"\nsource = \"node-1\"\n";
        let command = rig.command(CommandAction::PushRules { toml: other.into() });
        let result = rig.send(&rig.signed(&command)).await.unwrap();
        assert!(!result.ok);
        assert!(
            result.outcome.contains("latched") && result.outcome.contains("the previous file is back"),
            "{}",
            result.outcome
        );
        assert_eq!(rig.rules_text(), new_rules);
        assert_eq!(rig.stats.rules_version.load(Relaxed), 2);
        events.extend(rig.events());
        assert!(events.iter().any(|e| matches!(e.kind, EventKind::RulesLoaded { version: 2 })), "{events:?}");
        assert_eq!(events.iter().filter(|e| matches!(e.kind, EventKind::Command { .. })).count(), 4, "{events:?}");
    }

    #[test]
    fn the_audit_path_defaults_to_the_data_dir() {
        let text = "[agent]\nid = \"gw-1\"\ndata_dir = \"/var/lib/x\"\n[sources.s]\nkind = \"simulated\"\n";
        let config = crate::config::AgentConfig::parse(text, Path::new("a.toml")).unwrap();
        assert_eq!(config.audit_log(), Path::new("/var/lib/x/audit.jsonl"));
        assert!(config.commands.public_key.is_none());
    }
}
