//! The agent's config file: strict TOML, then a validation pass that reports every problem at once.
//!
//! Parse errors (unknown keys, wrong types, bad units) come from the TOML parser with line and
//! column; validation problems name the table key (`sources.press-3.period`) and say how to fix it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use edgeloop_rules::{config::Context as RulesContext, record::Recorder};
use edgeloop_shared::{
    secret::Secret,
    units::{ByteSize, HumanDuration},
};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    #[serde(default)]
    pub uplink: UplinkConfig,
    #[serde(default)]
    pub buffer: BufferConfig,
    /// The agent's `/metrics` and `/status` endpoint; off when absent.
    pub metrics: Option<MetricsConfig>,
    /// Keyed by source id, which becomes the prefix of the source's sensor ids.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Signed commands from the collector (shutdown, latch reset, new rules).
    #[serde(default)]
    pub commands: CommandsConfig,
}

/// Signed commands (`crate::commands`). Without `public_key` every command is refused (and
/// audited as "commands disabled").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// The issuer's Ed25519 public key, 64 hex digits.
    pub public_key: Option<String>,
    /// What a `Shutdown` command fires: action ids of the rule file, fired as a rule trip fires them.
    #[serde(default)]
    pub shutdown_actions: Vec<String>,
    /// Where every command is recorded (JSON Lines, fsynced); `<data_dir>/audit.jsonl` when absent.
    pub audit_log: Option<PathBuf>,
    /// Whether a pushed rule file may add or change `exec` actions (run programs on this
    /// gateway). Off by default: only who edits this file decides what the gateway runs.
    #[serde(default)]
    pub allow_pushed_exec: bool,
    /// With `allow_pushed_exec`, the only programs (absolute paths) a pushed `exec` action may run.
    #[serde(default)]
    pub exec_allowlist: Vec<PathBuf>,
}

impl AgentConfig {
    /// The command audit log's path.
    pub fn audit_log(&self) -> PathBuf {
        self.commands.audit_log.clone().unwrap_or_else(|| self.agent.data_dir.join("audit.jsonl"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// This gateway's id: its MQTT client id, topic level and InfluxDB `agent` tag.
    pub id: String,
    /// Where the durable buffer lives.
    pub data_dir: PathBuf,
    /// The rule file (local safety rules and their actions); no rules when absent. It is
    /// reloaded when it changes (checked every `rules_check_interval`) or on SIGHUP.
    pub rules: Option<PathBuf>,
    #[serde(default = "default_rules_check_interval")]
    pub rules_check_interval: HumanDuration,
    /// Record every reading and health event the rules see to this file (JSON Lines, for
    /// `edgeloop-agent rules test --replay`). Off when absent.
    pub record: Option<PathBuf>,
    /// Disk the recording may use: two files of half this size, the older one rotated out.
    #[serde(default = "default_record_max")]
    pub record_max: ByteSize,
    /// Tags stored with every reading and event of this gateway, e.g. `{ site = "plant-a" }`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keep_alive: HumanDuration,
    /// A batch is sealed when it holds this many readings (or when the flush interval ends).
    pub batch_max_readings: usize,
    /// Batches sent and not yet acknowledged by the collector.
    pub in_flight: usize,
    /// A batch the collector has not acknowledged after this long is sent again.
    pub ack_timeout: HumanDuration,
    pub reconnect_min: HumanDuration,
    pub reconnect_max: HumanDuration,
    /// MQTT over TLS when set.
    pub tls: Option<TlsConfig>,
    pub catch_up: CatchUp,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            username: None,
            password: None,
            keep_alive: secs(15),
            batch_max_readings: 2_000,
            in_flight: 8,
            ack_timeout: secs(15),
            reconnect_min: HumanDuration(std::time::Duration::from_millis(100)),
            reconnect_max: secs(10),
            tls: None,
            catch_up: CatchUp::LiveFirst,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Group commit: readings that arrive within this interval are written and flushed together.
    /// A reading counts as accepted once its group is flushed.
    pub flush_interval: HumanDuration,
    /// The store's page cache.
    pub cache: ByteSize,
    /// The most the buffer holds (batches of both lanes, as stored); see `when_full`.
    pub max_bytes: ByteSize,
    /// When `max_bytes` is reached: `"drop_oldest"` telemetry (keep the newest) or
    /// `"reject_new"` telemetry (keep the oldest). Events are never dropped; every drop is
    /// counted, logged and reported to the collector as a `dropped` event.
    pub when_full: crate::buffer::WhenFull,
    /// Verify every page's checksum when the agent starts (reads the buffer file once); a
    /// damaged file is then moved aside and what reads back intact is salvaged.
    pub verify_on_open: bool,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            flush_interval: HumanDuration(std::time::Duration::from_millis(20)),
            cache: ByteSize(16 << 20),
            max_bytes: ByteSize(1 << 30),
            when_full: crate::buffer::WhenFull::DropOldest,
            verify_on_open: true,
        }
    }
}

/// TLS for the uplink (rustls). The broker's certificate must name `uplink.host`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the collector's certificate.
    pub ca: PathBuf,
    /// Client certificate and key (PEM) when the broker asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Which telemetry goes first after the uplink comes back (events always go first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Readings taken since the uplink returned go ahead of the backlog, so dashboards and
    /// fleet rules see the present while the past fills in.
    #[default]
    LiveFirst,
    /// Strictly oldest first.
    OldestFirst,
}

/// The agent's own HTTP endpoint: Prometheus `/metrics` and a JSON `/status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// e.g. "127.0.0.1:9464"; port 0 picks a free one (logged at start).
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    Simulated(SimulatedConfig),
    Serial(SerialConfig),
    Mqtt(MqttSourceConfig),
}

impl SourceConfig {
    /// How long a sensor of this source may stay silent before it is stale: `stale_after` when
    /// set, else five expected periods, never under 100 ms.
    pub fn stale_after(&self) -> Duration {
        let (period, explicit) = match self {
            SourceConfig::Simulated(c) => (c.period.0, None),
            SourceConfig::Serial(c) => (c.period.0, c.stale_after),
            SourceConfig::Mqtt(c) => (c.period.0, c.stale_after),
        };
        explicit.map_or_else(|| (period * 5).max(MIN_STALE_AFTER), |d| d.0)
    }

    /// How far a device clock may be from the gateway's before its timestamps are distrusted.
    pub fn max_clock_skew(&self) -> Duration {
        match self {
            SourceConfig::Simulated(_) => Duration::MAX,
            SourceConfig::Serial(c) => c.max_clock_skew.0,
            SourceConfig::Mqtt(c) => c.max_clock_skew.0,
        }
    }
}

/// The shortest staleness timeout: below it, ordinary scheduling jitter would look like a fault.
pub const MIN_STALE_AFTER: Duration = Duration::from_millis(100);

/// A sensor node on a serial port speaking the shared frame (COBS + postcard + CRC-32).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The device, e.g. `/dev/ttyUSB0` or a stable `/dev/serial/by-id/...` link.
    pub path: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Sensor ids are `<prefix>.<channel name>`; the prefix defaults to the source id.
    pub prefix: Option<String>,
    /// Names of the node's channels by number, e.g. `{ 0 = "temperature", 1 = "vibration" }`.
    /// Unnamed channels become `ch<N>`.
    #[serde(default)]
    pub channels: BTreeMap<String, String>,
    /// The node's reading period (per channel); staleness defaults to five periods.
    #[serde(default = "default_period")]
    pub period: HumanDuration,
    pub stale_after: Option<HumanDuration>,
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew: HumanDuration,
    /// Reopen delay after the port vanished: from `reopen_min`, doubling up to `reopen_max`.
    #[serde(default = "default_reopen_min")]
    pub reopen_min: HumanDuration,
    #[serde(default = "default_reopen_max")]
    pub reopen_max: HumanDuration,
    /// Send the node a heartbeat (`Ping`) this often, so a node configured to trip when the
    /// gateway goes silent stays enabled while the agent runs. Off when absent.
    pub heartbeat: Option<HumanDuration>,
}

/// MQTT sensors: the gateway's own embedded broker (default) or the site's broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    #[serde(default)]
    pub broker: BrokerMode,
    /// `embedded`: where sensors connect (default `0.0.0.0:1883`).
    pub listen: Option<std::net::SocketAddr>,
    /// `external`: the site broker.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Larger payloads are rejected (counted, logged) before anything is buffered.
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    #[serde(default = "default_period")]
    pub period: HumanDuration,
    pub stale_after: Option<HumanDuration>,
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew: HumanDuration,
    /// Subscriptions, keyed by a name of your choice.
    pub topics: BTreeMap<String, TopicMapping>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerMode {
    #[default]
    Embedded,
    External,
}

/// How the messages of one topic filter become readings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMapping {
    /// MQTT filter with named wildcards: `sensors/{machine}/{sensor}` (a `{name}` is one level,
    /// like `+`; `#` may end the filter).
    pub filter: String,
    /// Sensor id template using the filter's names, e.g. `{machine}.{sensor}`.
    pub sensor: String,
    #[serde(default)]
    pub format: PayloadFormat,
    /// `json`: path of the value, e.g. `ENERGY.Power` or `values[0]`.
    pub value: Option<String>,
    /// `json`: several values in one message, sensor id suffix → path, e.g.
    /// `{ temperature = "temperature", humidity = "humidity" }` gives `<sensor>.temperature`, ...
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// `json`: path of the device's timestamp (epoch s/ms/µs/ns or RFC 3339); the gateway's
    /// clock when absent.
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A plain number (`21.5`), or `ON`/`OFF`/`true`/`false` as 1/0.
    #[default]
    Number,
    /// JSON with field paths (Tasmota, Shelly, zigbee2mqtt and the like).
    Json,
    /// The shared binary reading (`edgeloop_shared::model::DeviceReading` behind its version byte).
    Binary,
}

/// A simulated machine: a spindle temperature and a vibration signal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Time between two readings of one sensor.
    #[serde(default = "default_sim_period")]
    pub period: HumanDuration,
    /// `true`: one reading per period of wall-clock time. `false`: as fast as the buffer takes them,
    /// timestamps still one period apart (ending at the moment the run started), for load tests.
    #[serde(default = "default_true")]
    pub realtime: bool,
    /// Stop after this many readings (all sensors together); unlimited when absent.
    pub limit: Option<u64>,
}

fn default_record_max() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_rules_check_interval() -> HumanDuration {
    secs(1)
}
fn default_baud() -> u32 {
    115_200
}
fn default_period() -> HumanDuration {
    secs(1)
}
fn default_max_clock_skew() -> HumanDuration {
    secs(300)
}
fn default_reopen_min() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
fn default_reopen_max() -> HumanDuration {
    secs(5)
}
fn default_max_payload() -> ByteSize {
    ByteSize(64 << 10)
}
fn secs(s: u64) -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(s))
}
fn default_sim_period() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(100))
}
fn default_true() -> bool {
    true
}

pub use edgeloop_shared::config::{ConfigError, Problem};

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&edgeloop_shared::config::read(path)?, path)
    }

    /// Parses and validates config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        edgeloop_shared::config::parse(text, path, Self::problems)
    }

    /// What a rule file may refer to in this config: its serial and MQTT sources, and the
    /// actions `commands.shutdown_actions` fires.
    pub fn rules_context(&self) -> RulesContext {
        let ids = |f: fn(&SourceConfig) -> bool| {
            self.sources.iter().filter(|(_, s)| f(s)).map(|(id, _)| id.clone()).collect()
        };
        RulesContext {
            known: true,
            serial_sources: ids(|s| matches!(s, SourceConfig::Serial(_))),
            mqtt_sources: ids(|s| matches!(s, SourceConfig::Mqtt(_))),
            shutdown_actions: self.commands.shutdown_actions.clone(),
        }
    }

    /// Every problem the file has, not just the first.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: &str, message: String| out.push(Problem { key: key.into(), message });
        if let Err(e) = edgeloop_shared::id::validate(&self.agent.id) {
            problem("agent.id", format!("{:?} is not a valid id: {e}", self.agent.id));
        }
        for (k, v) in &self.agent.tags {
            if let Err(e) = edgeloop_shared::id::validate(k).and_then(|_| edgeloop_shared::id::validate(v)) {
                problem(&format!("agent.tags.{k}"), format!("{k:?} = {v:?}: {e}"));
            }
            if matches!(k.as_str(), "agent" | "sensor" | "subject" | "kind" | "severity") {
                problem(&format!("agent.tags.{k}"), "this tag name is reserved by edgeloop; choose another".into());
            }
        }
        if self.agent.record_max.0 < Recorder::MIN_BYTES {
            problem("agent.record_max", format!("must be at least {} bytes", Recorder::MIN_BYTES));
        }
        if self.agent.data_dir.as_os_str().is_empty() {
            problem("agent.data_dir", "must name a directory for the durable buffer".into());
        }
        let u = &self.uplink;
        if u.in_flight == 0 {
            problem("uplink.in_flight", "must be at least 1".into());
        }
        if u.batch_max_readings == 0 {
            problem("uplink.batch_max_readings", "must be at least 1".into());
        }
        if u.keep_alive.0 < std::time::Duration::from_secs(1) {
            problem("uplink.keep_alive", "must be at least 1s (MQTT counts keep-alive in seconds)".into());
        }
        if u.reconnect_min.0.is_zero() || u.reconnect_min > u.reconnect_max {
            problem("uplink.reconnect_min", "must be above zero and not above uplink.reconnect_max".into());
        }
        if u.ack_timeout.0 < std::time::Duration::from_millis(100) {
            problem("uplink.ack_timeout", "must be at least 100ms".into());
        }
        if self.buffer.flush_interval.0.is_zero() {
            problem("buffer.flush_interval", "must be above zero, e.g. \"20ms\"".into());
        }
        if self.buffer.cache.0 < 1 << 20 {
            problem("buffer.cache", "must be at least 1MiB".into());
        }
        if self.buffer.max_bytes.0 < 1 << 20 {
            problem("buffer.max_bytes", "must be at least 1MiB".into());
        }
        if let Some(tls) = &u.tls {
            let files = [
                ("uplink.tls.ca", Some(&tls.ca)),
                ("uplink.tls.cert", tls.cert.as_ref()),
                ("uplink.tls.key", tls.key.as_ref()),
            ];
            for (key, path) in files {
                if let Some(path) = path
                    && !path.is_file()
                {
                    problem(key, format!("{} is not a readable file", path.display()));
                }
            }
            if tls.cert.is_some() != tls.key.is_some() {
                problem("uplink.tls.cert", "cert and key go together: set both or neither".into());
            }
        }
        let c = &self.commands;
        if let Some(key) = &c.public_key
            && let Err(e) = edgeloop_shared::command::VerifyingKey::from_hex(key)
        {
            problem("commands.public_key", format!("not an Ed25519 public key: {e}"));
        }
        for (i, action) in c.shutdown_actions.iter().enumerate() {
            if c.shutdown_actions[..i].contains(action) {
                problem("commands.shutdown_actions", format!("{action:?} is listed twice"));
            }
        }
        if !c.shutdown_actions.is_empty() && self.agent.rules.is_none() {
            problem(
                "commands.shutdown_actions",
                "names actions of the rule file, but [agent] rules is not set; set it or empty this list".into(),
            );
        }
        if c.audit_log.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            problem("commands.audit_log", "must name a file, or be left out for <data_dir>/audit.jsonl".into());
        }
        for program in self.commands.exec_allowlist.iter().filter(|p| !p.is_absolute()) {
            problem(
                "commands.exec_allowlist",
                format!("{} is not an absolute path: a pushed action must name exactly the program", program.display()),
            );
        }
        if !self.commands.exec_allowlist.is_empty() && !self.commands.allow_pushed_exec {
            problem(
                "commands.exec_allowlist",
                "has no effect while commands.allow_pushed_exec is false: set it to true, or remove the list".into(),
            );
        }
        if self.sources.is_empty() {
            problem("sources", "no source is configured; add e.g. [sources.press-3] with kind = \"simulated\"".into());
        }
        for (id, source) in &self.sources {
            if let Err(e) = edgeloop_shared::id::validate(id) {
                problem(&format!("sources.{id}"), format!("{id:?} is not a valid source id: {e}"));
            }
            let key = |k: &str| format!("sources.{id}.{k}");
            match source {
                SourceConfig::Simulated(sim) => {
                    if sim.period.0.is_zero() {
                        problem(&key("period"), "must be above zero".into());
                    }
                }
                SourceConfig::Serial(c) => {
                    if c.baud == 0 {
                        problem(&key("baud"), "must be above zero, e.g. 115200".into());
                    }
                    if let Some(prefix) = &c.prefix
                        && let Err(e) = edgeloop_shared::id::validate(prefix)
                    {
                        problem(&key("prefix"), format!("{prefix:?} is not a valid id prefix: {e}"));
                    }
                    for (number, name) in &c.channels {
                        if number.parse::<u16>().is_err() {
                            problem(&key("channels"), format!("{number:?} is not a channel number (0-65535)"));
                        }
                        if let Err(e) = edgeloop_shared::id::validate(name) {
                            problem(&key("channels"), format!("channel {number} name {name:?}: {e}"));
                        }
                    }
                    if c.heartbeat.is_some_and(|h| h.0 < Duration::from_millis(10)) {
                        problem(&key("heartbeat"), "must be at least 10ms (it is a liveness signal, not data)".into());
                    }
                    if c.reopen_min.0.is_zero() || c.reopen_min > c.reopen_max {
                        problem(&key("reopen_min"), "must be above zero and not above reopen_max".into());
                    }
                }
                SourceConfig::Mqtt(c) => {
                    match (c.broker, &c.host) {
                        (BrokerMode::External, None) => {
                            problem(&key("host"), "broker = \"external\" needs the site broker's host".into())
                        }
                        (BrokerMode::Embedded, Some(_)) => problem(
                            &key("host"),
                            "only for broker = \"external\"; the embedded broker takes `listen`".into(),
                        ),
                        _ => {}
                    }
                    if c.broker == BrokerMode::External && c.listen.is_some() {
                        problem(&key("listen"), "only for broker = \"embedded\"".into());
                    }
                    if c.topics.is_empty() {
                        problem(
                            &key("topics"),
                            "no topic is mapped; add [sources.<id>.topics.<name>] with filter and sensor".into(),
                        );
                    }
                    for (name, t) in &c.topics {
                        let tkey = |k: &str| format!("sources.{id}.topics.{name}.{k}");
                        if let Err(e) = crate::topic_pattern::TopicPattern::parse(&t.filter, &t.sensor) {
                            problem(&tkey("filter"), e);
                        }
                        match t.format {
                            PayloadFormat::Json => {
                                if t.value.is_none() == t.fields.is_empty() {
                                    problem(&tkey("value"), "format = \"json\" needs either `value` (one path) or `fields` (several), not both".into());
                                }
                                for suffix in t.fields.keys() {
                                    if let Err(e) = edgeloop_shared::id::validate(suffix) {
                                        problem(&tkey("fields"), format!("{suffix:?}: {e}"));
                                    }
                                }
                            }
                            PayloadFormat::Number | PayloadFormat::Binary => {
                                if t.value.is_some() || !t.fields.is_empty() || t.timestamp.is_some() {
                                    problem(
                                        &tkey("format"),
                                        "`value`, `fields` and `timestamp` are only for format = \"json\"".into(),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use edgeloop_rules::{
        config::RuleFile,
        record::read_recording,
        replay::{Expectations, replay, table},
    };

    use super::*;

    const GOOD: &str = r#"
[agent]
id = "gw-1"
data_dir = "/tmp/x"

[sources.press-3]
kind = "simulated"
period = "10ms"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("agent.toml"))
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.uplink.port, 1883);
        assert_eq!(c.buffer.cache, ByteSize(16 << 20));
        let SourceConfig::Simulated(sim) = &c.sources["press-3"] else { panic!("simulated") };
        assert_eq!(sim.period.0, std::time::Duration::from_millis(10));
        assert!(sim.realtime);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let text = GOOD.replace("period = \"10ms\"", "period = \"10ms\"\nperiode = \"5ms\"");
        let err = parse(&text).unwrap_err().to_string();
        // Inside an internally tagged table the parser can only point at the table's header line.
        assert!(
            err.contains("agent.toml")
                && err.contains("line 6")
                && err.contains("[sources.press-3]")
                && err.contains("periode"),
            "{err}"
        );
        let text = GOOD.replace("[agent]", "[agent]\nflavour = 1");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("flavour"), "{err}");
    }

    #[test]
    fn bad_units_say_what_was_expected() {
        let err = parse(&GOOD.replace("\"10ms\"", "\"10 fortnights\"")).unwrap_err().to_string();
        assert!(err.contains("10 fortnights") && err.contains("ms") && err.contains("line 6"), "{err}");
    }

    #[test]
    fn validation_reports_every_problem_by_key() {
        let text = GOOD.replace("gw-1", "gw/1").replace("\"10ms\"", "\"0ms\"")
            + "[uplink]\nin_flight = 0\n[buffer]\nflush_interval = \"0s\"\n";
        let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else { panic!("must be invalid") };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["agent.id", "uplink.in_flight", "buffer.flush_interval", "sources.press-3.period"]);
    }

    #[test]
    fn the_commands_table_is_checked_by_key() {
        let text = format!(
            "{GOOD}[commands]\npublic_key = \"{}\"\nshutdown_actions = [\"relay\", \"relay\"]\naudit_log = \"\"\n",
            "ab".repeat(31)
        );
        let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else { panic!("must be invalid") };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["commands.public_key", "commands.shutdown_actions", "commands.shutdown_actions", "commands.audit_log"]
        );
        assert!(problems[0].message.contains("64 hex digits"), "{}", problems[0].message);
        assert!(problems[2].message.contains("[agent] rules"), "{}", problems[2].message);
        let text = format!("{GOOD}[commands]\npublic_key = \"{}\"\n", "ab".repeat(32));
        let c = parse(&text).unwrap();
        assert_eq!(c.audit_log(), Path::new("/tmp/x/audit.jsonl"));
    }

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.example.toml");
        AgentConfig::load(&path).unwrap();
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let text = format!("{GOOD}[uplink]\nusername = \"gw-1\"\npassword = \"hunter2\"\n");
        let c = parse(&text).unwrap();
        assert_eq!(c.uplink.password.as_ref().map(Secret::expose), Some("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    // The rule-file examples are checked here, where they can be read against the example
    // agent config (the rules crate knows no agent config).
    #[test]
    fn the_example_rule_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/rules.example.toml");
        let config = crate::config::AgentConfig::load(&path.with_file_name("agent.example.toml")).unwrap();
        let ctx = config.rules_context();
        RuleFile::load(&path, &ctx).unwrap();
    }

    /// The examples in `config/` replay and meet their expectations, so they can never rot.
    #[test]
    fn the_example_recording_meets_the_example_expectations() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let config = crate::config::AgentConfig::load(&dir.join("agent.example.toml")).unwrap();
        let file = RuleFile::load(&dir.join("rules.example.toml"), &config.rules_context()).unwrap();
        let records = read_recording(&dir.join("recording.example.jsonl")).unwrap();
        let first = records[0].ts_ns();
        let expectations = Expectations::load(&dir.join("rules.example.expect.toml"), &file).unwrap();
        let transitions = replay(&file, records.into_iter());
        let report = expectations.check(&transitions, first);
        assert!(report.passed(), "{}\n{:#?}", table(&transitions), report.mismatches);
        assert_eq!(report.met, expectations.len());
        assert_eq!(report.unchecked, 0, "the example expectations cover every transition");
    }
}
