//! The data model both ends share: readings, events, acks, commands and agent status.
//!
//! Ack, signed command and command result travel as versioned messages ([`to_wire`] / [`from_wire`]); readings and events
//! travel inside a [`crate::batch::Batch`].

use alloc::{string::String, vec::Vec};
use serde::{Deserialize, Serialize};

/// Version byte in front of every MQTT payload edgeloop writes (batches, acks, commands).
///
/// Version 2: a batch's series travel as [`crate::codec`] columns.
/// Version 3: a batch carries the identity of the agent buffer that sealed it, and an [`Ack`]
/// names the agent and that buffer.
pub const WIRE_VERSION: u8 = 3;

/// The oldest version still read, so a fleet can be upgraded one gateway at a time. Only the
/// messages whose layout is the same in both are read with [`from_wire`]: a version 2 batch goes
/// through [`crate::batch::Batch::decode`], which knows its older layout, and a version 2 ack is
/// refused by [`Ack::decode`] (it names no agent or buffer, so no version 3 agent may act on it).
pub const OLDEST_WIRE_VERSION: u8 = 2;

/// One value of one sensor at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub sensor: String,
    /// Nanoseconds since the Unix epoch, UTC.
    pub ts_ns: i64,
    pub value: f64,
}

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Trip,
}

/// What happened. New variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A rule fired.
    Trip,
    /// A rule's condition cleared (a latched trip stays tripped until [`EventKind::Reset`]).
    Clear,
    /// A latched trip was reset.
    Reset,
    /// A sensor sent nothing for longer than allowed.
    SensorStale,
    /// A stale sensor is sending again.
    SensorRecovered,
    /// The agent's buffer was full and dropped this many telemetry readings.
    Dropped { readings: u64 },
    /// A device's own clock is further from the gateway's than allowed; its readings are
    /// stamped with the gateway's time instead.
    ClockSkew { skew_ms: i64 },
    /// The agent now runs version `version` of its rule set (start or hot reload).
    RulesLoaded { version: u64 },
    /// The agent found `batches` unreadable batches in its buffer (bad checksum, or a damaged
    /// file) and set them aside instead of sending them.
    Quarantined { batches: u64 },
    /// The agent executed signed command `id` (subject: the action, message: issuer and outcome).
    Command { id: u64 },
}

impl EventKind {
    /// A stable lower-case name, e.g. for a database tag.
    pub const fn name(&self) -> &'static str {
        match self {
            EventKind::Trip => "trip",
            EventKind::Clear => "clear",
            EventKind::Reset => "reset",
            EventKind::SensorStale => "sensor_stale",
            EventKind::SensorRecovered => "sensor_recovered",
            EventKind::Dropped { .. } => "dropped",
            EventKind::ClockSkew { .. } => "clock_skew",
            EventKind::RulesLoaded { .. } => "rules_loaded",
            EventKind::Quarantined { .. } => "quarantined",
            EventKind::Command { .. } => "command",
        }
    }
}

impl Severity {
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Trip => "trip",
        }
    }
}

/// Something the agent noticed, sent ahead of telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ns: i64,
    pub kind: EventKind,
    pub severity: Severity,
    /// The rule or sensor the event is about.
    pub subject: String,
    pub message: String,
    /// The values that caused it, by name.
    pub values: Vec<(String, f64)>,
}

/// What flows through the agent's pipeline and its rule recordings: a reading, or an event that
/// travels with the readings.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Reading(Reading),
    Event(Event),
}

/// The binary MQTT payload a sensor may publish (behind the wire version byte): one value,
/// with the device's own timestamp when it has a clock.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DeviceReading {
    pub ts_ns: Option<i64>,
    pub value: f64,
}

/// The collector's end-to-end answer to a batch, sent on the agent's `ack` topic. It names whom
/// it is for: the agent, and the buffer that sealed the batch (see [`crate::batch::Batch::buffer`]),
/// so an ack can only ever remove the batch it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub agent: String,
    /// `None` only in an answer to a version 2 agent (see [`Ack::encode`]).
    pub buffer: Option<u64>,
    pub seq: u64,
    pub status: AckStatus,
}

impl Ack {
    /// The wire bytes for the agent that sent the batch: version 3, or the version 2 layout
    /// (`seq`, `status`) when the batch came from a version 2 agent (no buffer identity), which
    /// could not read anything newer.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.buffer.is_none() {
            return postcard::to_extend(&(self.seq, &self.status), alloc::vec![OLDEST_WIRE_VERSION])
                .map_err(WireError::Codec);
        }
        to_wire(self)
    }

    /// Reads a version 3 ack only: an older one names no agent or buffer.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        match bytes.first() {
            Some(&WIRE_VERSION) => from_wire(bytes),
            Some(&found) => Err(WireError::Version { found }),
            None => Err(WireError::Empty),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AckStatus {
    /// Every point of the batch is in the database (or already was: a replay).
    Stored { points: u32 },
    /// The database refused the batch for good (it will never be stored); `reason` says why.
    Rejected { reason: String },
}

/// An instruction to one agent. It never travels bare: the wire form is a [`SignedCommand`] whose
/// `body` is this command's [`to_wire`] bytes (see `crate::command`, feature `sign`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Unique per issuer key: the agent refuses an id it has already executed (replay).
    pub id: u64,
    /// The agent it is meant for; an agent refuses a command addressed to another.
    pub agent: String,
    /// Nanoseconds since the Unix epoch, UTC.
    pub issued_ns: i64,
    /// The agent refuses the command after this instant (ns since the Unix epoch).
    pub expires_ns: i64,
    /// Who asked for it: an API user, or `automation:<rule>`.
    pub issuer: String,
    pub action: CommandAction,
}

/// New variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandAction {
    /// Stop the machine behind this agent, as a rule trip would.
    Shutdown { reason: String },
    /// Release the latch of one rule.
    ResetLatch { rule: String },
    /// Replace the agent's rule file with `toml` (validated in full, then hot-reloaded).
    PushRules { toml: String },
}

impl CommandAction {
    /// A stable lower-case name, e.g. for an audit record or a database tag.
    pub const fn name(&self) -> &'static str {
        match self {
            CommandAction::Shutdown { .. } => "shutdown",
            CommandAction::ResetLatch { .. } => "reset_latch",
            CommandAction::PushRules { .. } => "push_rules",
        }
    }

    /// One line for people: `shutdown (reason: ...)`, `reset_latch overtemp`, `push_rules (812 bytes)`.
    pub fn summary(&self) -> String {
        match self {
            CommandAction::Shutdown { reason } => alloc::format!("shutdown (reason: {reason})"),
            CommandAction::ResetLatch { rule } => alloc::format!("reset_latch {rule}"),
            CommandAction::PushRules { toml } => alloc::format!("push_rules ({} bytes)", toml.len()),
        }
    }
}

/// The wire form of a [`Command`], on the agent's `cmd` topic (sent with [`to_wire`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedCommand {
    /// Names the signing key (informative: the signature decides).
    pub key_id: String,
    /// The command's [`to_wire`] bytes, exactly as signed.
    pub body: Vec<u8>,
    /// Ed25519 signature over `body`.
    pub signature: Vec<u8>,
}

/// An agent's answer to a command, on its `result` topic (sent with [`to_wire`]); also sent for a
/// refused command whenever its id and agent could be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub id: u64,
    pub agent: String,
    /// Executed (`true`) or refused / failed (`false`).
    pub ok: bool,
    /// For people: `latch overtemp released`, `refused: bad signature`, `rules version 3 running`.
    pub outcome: String,
    /// When the agent answered (ns since the Unix epoch).
    pub ts_ns: i64,
    /// The rule-set version running after the command.
    pub rules_version: Option<u64>,
}

/// What an agent says about itself on `edgeloop/v1/{agent}/status`, retained, so a collector
/// that starts later learns the fleet at once. `Offline` is also the agent's MQTT last will.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Presence {
    Online(AgentReport),
    /// A clean stop, or (as the last will) a connection the broker saw die.
    Offline,
}

/// An agent's periodic report (every `interval_ms`; missing three in a row means it is gone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub version: String,
    pub sent_ns: i64,
    pub interval_ms: u32,
    pub sensors: Vec<String>,
    pub stale_sensors: Vec<String>,
    /// Readings and events waiting in the agent's buffer for the collector's ack.
    pub backlog_readings: u64,
    pub backlog_bytes: u64,
    /// Time of the oldest reading not yet acknowledged: the consumer lag, seen from the edge.
    pub oldest_unsent_ns: Option<i64>,
    pub accepted_total: u64,
    pub dropped_total: u64,
    pub quarantined_total: u64,
    /// Rules latched (tripped until reset) right now.
    pub latched: Vec<String>,
}

/// Why an MQTT payload was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("payload is empty")]
    Empty,
    #[error(
        "payload version {found} is not supported (this build reads versions {OLDEST_WIRE_VERSION} to {WIRE_VERSION} and writes {WIRE_VERSION})"
    )]
    Version { found: u8 },
    #[error("payload does not decode: {0}")]
    Codec(postcard::Error),
    #[error("payload has {0} unexpected trailing bytes")]
    Trailing(usize),
    #[error("{what} is invalid: {reason}")]
    Invalid { what: String, reason: String },
}

/// Serialises `msg` behind the wire version byte.
pub fn to_wire<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_extend(msg, alloc::vec![WIRE_VERSION]).map_err(WireError::Codec)
}

/// Checks the version byte (any from [`OLDEST_WIRE_VERSION`] on) and decodes the rest; trailing
/// bytes are an error, not silently ignored.
pub fn from_wire<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    from_wire_borrowed(bytes)
}

/// [`from_wire`] for a message that borrows from `bytes` (strings and byte columns).
pub fn from_wire_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if !(OLDEST_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
        return Err(WireError::Version { found: version });
    }
    let (msg, rest) = postcard::take_from_bytes(body).map_err(WireError::Codec)?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_and_commands_round_trip() {
        let ack = Ack { agent: "gw-1".into(), buffer: Some(9), seq: 42, status: AckStatus::Stored { points: 1000 } };
        assert_eq!(from_wire::<Ack>(&to_wire(&ack).unwrap()), Ok(ack));
        let cmd = Command {
            id: 7,
            agent: "gw-1".into(),
            issued_ns: 1,
            expires_ns: 2,
            issuer: "alice".into(),
            action: CommandAction::ResetLatch { rule: "overtemp".into() },
        };
        assert_eq!(from_wire::<Command>(&to_wire(&cmd).unwrap()), Ok(cmd.clone()));
        let signed = SignedCommand { key_id: "0a1b2c3d".into(), body: to_wire(&cmd).unwrap(), signature: vec![1; 64] };
        assert_eq!(from_wire::<SignedCommand>(&to_wire(&signed).unwrap()), Ok(signed));
        let result = CommandResult {
            id: 7,
            agent: "gw-1".into(),
            ok: true,
            outcome: "latch overtemp released".into(),
            ts_ns: 3,
            rules_version: Some(2),
        };
        assert_eq!(from_wire::<CommandResult>(&to_wire(&result).unwrap()), Ok(result));
    }

    #[test]
    fn malformed_payloads_are_named() {
        assert_eq!(from_wire::<Ack>(&[]), Err(WireError::Empty));
        assert_eq!(from_wire::<Ack>(&[9, 1, 2]), Err(WireError::Version { found: 9 }));
        assert!(matches!(from_wire::<Ack>(&[WIRE_VERSION]), Err(WireError::Codec(_))));
        let mut bytes =
            to_wire(&Ack { agent: "gw-1".into(), buffer: Some(9), seq: 1, status: AckStatus::Stored { points: 1 } })
                .unwrap();
        bytes.push(0);
        assert_eq!(from_wire::<Ack>(&bytes), Err(WireError::Trailing(1)));
    }

    #[test]
    fn an_ack_for_a_previous_version_agent_is_written_in_its_layout_and_never_read_as_current() {
        let status = AckStatus::Stored { points: 5 };
        let legacy = Ack { agent: "gw-1".into(), buffer: None, seq: 7, status: status.clone() };
        let bytes = legacy.encode().unwrap();
        assert_eq!(bytes[0], OLDEST_WIRE_VERSION);
        // What a version 2 agent decodes: its own `Ack { seq, status }`.
        assert_eq!(postcard::from_bytes::<(u64, AckStatus)>(&bytes[1..]).unwrap(), (7, status.clone()));
        assert_eq!(Ack::decode(&bytes), Err(WireError::Version { found: OLDEST_WIRE_VERSION }));
        let current = Ack { buffer: Some(0x1234), ..legacy };
        let bytes = current.encode().unwrap();
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(Ack::decode(&bytes), Ok(current));
    }
}
