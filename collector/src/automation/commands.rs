//! Commands to agents: signed here with the collector's Ed25519 key, verified by the agent against
//! the public key in its config, answered with a result; every step is written to the audit log.
//!
//! The audit log is JSON Lines, appended and fsynced per record (who, what, when, verdict), so
//! it survives a crash and reads with `jq`. A command's life in it: `sent` (or
//! `awaiting_approval` → `approved` → `sent`, or `refused` before it was ever sent), then the
//! agent's answer, `executed` or `failed`.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use crate::mqtt::Client;
use edgeloop_shared::{
    command::SigningKey,
    model::{Command, CommandAction, CommandResult, to_wire},
    topic::{self, Channel},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("commands are off: set [automation] signing_key in the collector config")]
    NoKey,
    #[error("cannot read the signing key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{0:?} is not a valid agent id")]
    BadAgent(String),
    #[error("cannot send the command: {0}")]
    Send(String),
    #[error("cannot write the audit log {path}: {error}")]
    Audit { path: PathBuf, error: std::io::Error },
    #[error("no command {0} awaits approval")]
    UnknownApproval(u64),
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub ts_ns: i64,
    /// The command's id (absent for a request refused before it got one).
    pub id: Option<u64>,
    pub agent: String,
    /// Who asked: an API user (`token:<name>`), or `automation:<rule>`.
    pub issuer: String,
    /// `shutdown (reason: ...)`, `reset_latch overtemp`, `push_rules (812 bytes)`.
    pub action: String,
    /// `sent`, `awaiting_approval`, `approved`, `refused`, `executed`, `failed`.
    pub verdict: String,
    /// Why, or what the agent answered.
    pub detail: String,
}

/// The append-only audit log. Cheap to share; writes are serialised.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self, CommandError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|error| CommandError::Audit { path: path.into(), error })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|error| CommandError::Audit { path: path.into(), error })?;
        Ok(Self { path: path.into(), file: Mutex::new(file) })
    }

    /// Appends a record and fsyncs it: a command is never sent without its record on disk.
    pub fn append(&self, record: &AuditRecord) -> Result<(), CommandError> {
        let mut line = serde_json::to_string(record)
            .map_err(|e| CommandError::Audit { path: self.path.clone(), error: std::io::Error::other(e) })?;
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|error| CommandError::Audit { path: self.path.clone(), error })
    }

    /// The last `n` records, oldest first. A line that does not parse (a torn write at a crash)
    /// is skipped.
    pub fn recent(&self, n: usize) -> Vec<AuditRecord> {
        let Ok(file) = File::open(&self.path) else { return Vec::new() };
        let mut out: std::collections::VecDeque<AuditRecord> = std::collections::VecDeque::with_capacity(n + 1);
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Ok(r) = serde_json::from_str(&line) {
                out.push_back(r);
                if out.len() > n {
                    out.pop_front();
                }
            }
        }
        out.into()
    }
}

/// A command waiting for a person to approve it (an automation rule with `approval = "required"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwaitingApproval {
    pub id: u64,
    pub agent: String,
    pub issuer: String,
    pub action: CommandAction,
    pub requested_ns: i64,
    /// The alert that asked for it.
    pub fingerprint: Option<String>,
}

/// Signs, sends and audits commands; matches the agents' results to what was sent.
pub struct Commander {
    key: Option<SigningKey>,
    ttl: Duration,
    pub audit: AuditLog,
    /// The ingest's connection, which commands go out on.
    client: Client,
    last_id: u64,
    /// Sent, not answered yet: id → (agent, issuer, action).
    sent: HashMap<u64, (String, String, String)>,
    pub awaiting: Vec<AwaitingApproval>,
}

impl Commander {
    pub fn new(key_file: Option<&Path>, ttl: Duration, audit: AuditLog, client: Client) -> Result<Self, CommandError> {
        let key = match key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| CommandError::Key { path: path.into(), reason: e.to_string() })?;
                let key = SigningKey::from_seed_hex(text.trim())
                    .map_err(|e| CommandError::Key { path: path.into(), reason: e.to_string() })?;
                tracing::info!(key_id = %key.key_id(), public_key = %key.public_key_hex(), "commands are signed");
                Some(key)
            }
            None => None,
        };
        Ok(Self { key, ttl, audit, client, last_id: 0, sent: HashMap::new(), awaiting: Vec::new() })
    }

    /// The public key agents must trust (`[commands] public_key`), when commands are on.
    pub fn public_key_hex(&self) -> Option<String> {
        self.key.as_ref().map(SigningKey::public_key_hex)
    }

    /// Ids are unique per key: the issue time in ns, bumped past the last one.
    fn next_id(&mut self, now_ns: i64) -> u64 {
        self.last_id = (now_ns.max(0) as u64).max(self.last_id + 1);
        self.last_id
    }

    /// Signs and sends a command; audited as `sent` before it leaves.
    pub async fn send(
        &mut self,
        agent: &str,
        action: CommandAction,
        issuer: &str,
        now_ns: i64,
    ) -> Result<u64, CommandError> {
        let id = self.next_id(now_ns);
        self.send_with_id(id, agent, action, issuer, now_ns).await
    }

    async fn send_with_id(
        &mut self,
        id: u64,
        agent: &str,
        action: CommandAction,
        issuer: &str,
        now_ns: i64,
    ) -> Result<u64, CommandError> {
        let summary = action.summary();
        let refuse = |this: &Self, e: CommandError| {
            this.record(Some(id), agent, issuer, &summary, "refused", &e.to_string(), now_ns);
            Err(e)
        };
        if edgeloop_shared::id::validate(agent).is_err() {
            return refuse(self, CommandError::BadAgent(agent.into()));
        }
        let Some(key) = &self.key else { return refuse(self, CommandError::NoKey) };
        let command = Command {
            id,
            agent: agent.into(),
            issued_ns: now_ns,
            expires_ns: now_ns.saturating_add(self.ttl.as_nanos() as i64),
            issuer: issuer.into(),
            action,
        };
        let signed = match key.sign(&command).and_then(|s| to_wire(&s)) {
            Ok(s) => s,
            Err(e) => return refuse(self, CommandError::Send(e.to_string())),
        };
        self.audit.append(&AuditRecord {
            ts_ns: now_ns,
            id: Some(id),
            agent: agent.into(),
            issuer: issuer.into(),
            action: summary.clone(),
            verdict: "sent".into(),
            detail: format!("signed with key {}, expires in {:?}", key.key_id(), self.ttl),
        })?;
        self.client.publish(topic::topic(agent, Channel::Cmd), signed).await.map_err(CommandError::Send)?;
        tracing::info!(agent, id, issuer, action = %summary, "command sent");
        self.sent.insert(id, (agent.into(), issuer.into(), summary));
        Ok(id)
    }

    /// Records a refusal that never reached the signing step (e.g. the API refused the caller).
    pub fn refused(&self, agent: &str, issuer: &str, action: &CommandAction, why: &str, now_ns: i64) {
        self.record(None, agent, issuer, &action.summary(), "refused", why, now_ns);
    }

    #[allow(clippy::too_many_arguments)]
    fn record(&self, id: Option<u64>, agent: &str, issuer: &str, action: &str, verdict: &str, detail: &str, now: i64) {
        let r = AuditRecord {
            ts_ns: now,
            id,
            agent: agent.into(),
            issuer: issuer.into(),
            action: action.into(),
            verdict: verdict.into(),
            detail: detail.into(),
        };
        if let Err(e) = self.audit.append(&r) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// Holds a command for a person's approval.
    pub fn request_approval(
        &mut self,
        agent: &str,
        action: CommandAction,
        issuer: &str,
        fingerprint: Option<String>,
        now_ns: i64,
    ) -> u64 {
        let id = self.next_id(now_ns);
        self.record(
            Some(id),
            agent,
            issuer,
            &action.summary(),
            "awaiting_approval",
            "needs a person's approval",
            now_ns,
        );
        self.awaiting.push(AwaitingApproval {
            id,
            agent: agent.into(),
            issuer: issuer.into(),
            action,
            requested_ns: now_ns,
            fingerprint,
        });
        id
    }

    /// A person approved a held command: it is signed and sent now.
    pub async fn approve(&mut self, id: u64, by: &str, now_ns: i64) -> Result<u64, CommandError> {
        let Some(pos) = self.awaiting.iter().position(|a| a.id == id) else {
            return Err(CommandError::UnknownApproval(id));
        };
        let a = self.awaiting.remove(pos);
        self.record(
            Some(id),
            &a.agent,
            by,
            &a.action.summary(),
            "approved",
            &format!("requested by {}", a.issuer),
            now_ns,
        );
        self.send_with_id(id, &a.agent, a.action, &format!("{by} (approving {})", a.issuer), now_ns).await
    }

    /// An agent's answer. `false` when this collector did not send that command (another did).
    pub fn on_result(&mut self, r: &CommandResult) -> bool {
        let Some((agent, issuer, action)) = self.sent.remove(&r.id) else { return false };
        if agent != r.agent {
            self.sent.insert(r.id, (agent, issuer, action));
            return false;
        }
        let verdict = if r.ok { "executed" } else { "failed" };
        tracing::info!(agent, id = r.id, ok = r.ok, outcome = %r.outcome, "command result");
        self.record(Some(r.id), &agent, &issuer, &action, verdict, &r.outcome, r.ts_ns);
        true
    }
}

/// Writes a new signing key (seed as hex, readable by the owner only) and returns it.
pub fn generate_key(path: &Path) -> Result<SigningKey, CommandError> {
    let key = SigningKey::generate().map_err(|e| CommandError::Key { path: path.into(), reason: e.to_string() })?;
    let io = |e: std::io::Error| CommandError::Key { path: path.into(), reason: e.to_string() };
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(format!("{}\n", key.seed_hex()).as_bytes()).and_then(|()| f.sync_all()).map_err(io)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_log_keeps_records_across_opens_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let rec = |id| AuditRecord {
            ts_ns: id as i64,
            id: Some(id),
            agent: "gw-1".into(),
            issuer: "token:alice".into(),
            action: "shutdown (reason: test)".into(),
            verdict: "sent".into(),
            detail: String::new(),
        };
        log.append(&rec(1)).unwrap();
        log.append(&rec(2)).unwrap();
        drop(log);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"ts_ns\": 3, \"id\"").unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.append(&rec(4)).unwrap();
        let ids: Vec<_> = log.recent(10).iter().map(|r| r.id).collect();
        // The torn line and the record appended after it share a line; only whole records count.
        assert!(ids.starts_with(&[Some(1), Some(2)]), "{ids:?}");
        assert_eq!(log.recent(1).len(), 1);
    }

    #[tokio::test]
    async fn without_a_key_a_command_is_refused_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        // A client whose event loop is never polled: nothing reaches a broker.
        let (client, _eventloop) = rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 4);
        let mut c = Commander::new(
            None,
            Duration::from_secs(60),
            AuditLog::open(&dir.path().join("a.jsonl")).unwrap(),
            Client::V4(client),
        )
        .unwrap();
        let err = c.send("gw-1", CommandAction::Shutdown { reason: "x".into() }, "token:bob", 5).await.unwrap_err();
        assert!(matches!(err, CommandError::NoKey), "{err}");
        let log = c.audit.recent(5);
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].verdict, "refused");
        assert!(log[0].detail.contains("signing_key"), "{:?}", log[0]);
    }

    #[test]
    fn a_generated_key_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("command.key");
        let key = generate_key(&path).unwrap();
        let again = SigningKey::from_seed_hex(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(key.public_key_hex(), again.public_key_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(generate_key(&path).is_err(), "an existing key is never overwritten");
    }
}
