//! The collector's config file: strict TOML, then a validation pass that reports every problem.

use std::path::{Path, PathBuf};

pub use edgeloop_shared::broker::EmbeddedBroker;
use edgeloop_shared::{secret::Secret, units::HumanDuration};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    #[serde(default)]
    pub broker: BrokerConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    pub store: StoreConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    /// `/metrics` (Prometheus) and `/fleet` (JSON); off when absent.
    pub api: Option<ApiConfig>,
    /// Fleet rules, alerts, notifications, commands; off when absent.
    pub automation: Option<AutomationConfig>,
    /// Notification channels by id, named by the fleet rules' `notify`.
    #[serde(default)]
    pub notify: std::collections::BTreeMap<String, crate::notify::ChannelConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutomationConfig {
    /// The fleet rule file (re-read when it changes).
    pub rules: PathBuf,
    /// Alert state, learned baselines, the notification outbox and the audit log live here.
    pub state_dir: PathBuf,
    /// The dashboard's address as people reach it; alerts link to `<dashboard_url>/#/agents/<agent>`.
    pub dashboard_url: Option<String>,
    /// Ed25519 signing key for commands (a file holding the seed as hex; make one with
    /// `edgeloop-collector keygen FILE`). Without it, no command is sent.
    pub signing_key: Option<PathBuf>,
    /// How long a command stays valid for its agent.
    #[serde(default = "default_command_ttl")]
    pub command_ttl: HumanDuration,
    /// How often the rule file is checked for changes.
    #[serde(default = "default_rules_check")]
    pub rules_check_interval: HumanDuration,
    /// An alert changing state this often within `flap_window` is flapping: its notifications are
    /// held until it settles (0: off).
    #[serde(default = "default_flap_threshold")]
    pub flap_threshold: u32,
    #[serde(default = "default_flap_window")]
    pub flap_window: HumanDuration,
    /// Resolved alerts stay visible this long.
    #[serde(default = "default_resolved_retention")]
    pub resolved_retention: HumanDuration,
    /// The longest silence the API accepts; a longer one is refused (400), not shortened.
    #[serde(default = "default_max_silence")]
    pub max_silence: HumanDuration,
}

fn default_command_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}
fn default_rules_check() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(2))
}
fn default_flap_threshold() -> u32 {
    6
}
fn default_flap_window() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1800))
}
fn default_max_silence() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(7 * 24 * 3600))
}

fn default_resolved_retention() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(24 * 3600))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Where the fleet registry is saved (JSON), so a restart remembers every agent.
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// e.g. "0.0.0.0:9465"; port 0 picks a free one.
    pub listen: std::net::SocketAddr,
    /// The API's tokens (JSON, hashes only; `edgeloop-collector token add NAME --role ROLE --tokens
    /// FILE` makes one). Without it, every `/api/v1` route answers 401; `/metrics`, `/fleet`, the
    /// dashboard's files and `/api/openapi.json` need no token.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
}

/// The MQTT broker the agents publish to.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum BrokerConfig {
    /// rumqttd inside the collector process (the default).
    Embedded(EmbeddedBroker),
    /// A broker the site already runs.
    External(ExternalBroker),
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig::Embedded(EmbeddedBroker::default())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalBroker {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// MQTT protocol version: `"5"` (default; shared subscriptions are standard there, a
    /// persistent session expires) or `"3.1.1"` for a broker without MQTT 5.
    #[serde(default)]
    pub protocol: MqttVersion,
    /// Consume through the shared subscription `$share/<group>/edgeloop/v1/+/telemetry`, so the
    /// collectors of one group split the agents' batches between them (each batch goes to one).
    /// Give every collector of the group its own `ingest.client_id`.
    pub shared_group: Option<String>,
}

/// The MQTT protocol version the collector speaks to a site broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum MqttVersion {
    #[serde(rename = "3.1.1")]
    V311,
    #[default]
    #[serde(rename = "5")]
    V5,
}

fn default_mqtt_port() -> u16 {
    1883
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// MQTT client id of the collector's consumer. Its session persists across reconnects, so
    /// keep it stable; give each collector of a fleet its own.
    pub client_id: String,
    /// Un-acknowledged telemetry messages the broker may push to this collector at once.
    pub max_in_flight: u16,
    /// Recent batch sequence numbers remembered per agent to answer re-sends without rewriting.
    pub dedup_window: usize,
    pub retry_min: HumanDuration,
    pub retry_max: HumanDuration,
    /// Database writes in flight at once (each may hold batches of several agents).
    pub write_concurrency: usize,
    /// Most batches in one database write.
    pub write_max_batches: usize,
    /// About the most points in one database write (InfluxDB suggests 5,000–10,000 lines per
    /// request for 1.x; larger groups help little and cost memory).
    pub write_max_points: usize,
    /// How long the first batch of a write waits for others to join it; 0 writes what is there.
    pub write_linger: HumanDuration,
    /// How long a stopping collector (SIGTERM, Ctrl-C) waits for its stages to finish before it
    /// exits anyway. The ingest abandons writes in progress at once, un-acked (the agents send
    /// them again), so a hung database never holds the stop.
    pub shutdown_grace: HumanDuration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            client_id: "edgeloop-collector".into(),
            max_in_flight: 64,
            dedup_window: 4096,
            retry_min: HumanDuration(std::time::Duration::from_millis(100)),
            retry_max: HumanDuration(std::time::Duration::from_secs(10)),
            write_concurrency: 4,
            write_max_batches: 32,
            write_max_points: 20_000,
            write_linger: HumanDuration(std::time::Duration::from_millis(5)),
            shutdown_grace: HumanDuration(std::time::Duration::from_secs(10)),
        }
    }
}

/// Where readings are stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoreConfig {
    /// InfluxDB 1.x `/write` API (also InfluxDB 2.x's v1 compatibility endpoint, VictoriaMetrics).
    InfluxV1(InfluxV1Config),
    /// InfluxDB v2 `/api/v2/write` API (InfluxDB 2.x, 3.x, Cloud; VictoriaMetrics).
    InfluxV2(InfluxV2Config),
    /// An embedded store in a local directory: for the demo and for trying edgeloop without a database.
    Local(LocalStoreConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxV1Config {
    pub url: String,
    pub database: String,
    pub retention_policy: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Measurement of readings (tags `agent`, `sensor`; field `value`).
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// Measurement of agent events (trips, stale sensors, drops).
    #[serde(default = "default_events_measurement")]
    pub events_measurement: String,
    /// Measurement of alert state changes (fired, resolved) from the automation.
    #[serde(default = "default_alerts_measurement")]
    pub alerts_measurement: String,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Send write bodies gzip-compressed (`Content-Encoding: gzip`): line protocol shrinks about
    /// tenfold, worth it over a WAN link to a cloud InfluxDB; costs collector CPU.
    #[serde(default)]
    pub gzip: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxV2Config {
    pub url: String,
    pub org: String,
    pub bucket: String,
    pub token: Option<Secret>,
    /// Measurement of readings (tags `agent`, `sensor`; field `value`).
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// Measurement of agent events (trips, stale sensors, drops).
    #[serde(default = "default_events_measurement")]
    pub events_measurement: String,
    /// Measurement of alert state changes (fired, resolved) from the automation.
    #[serde(default = "default_alerts_measurement")]
    pub alerts_measurement: String,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Send write bodies gzip-compressed (`Content-Encoding: gzip`): line protocol shrinks about
    /// tenfold, worth it over a WAN link to a cloud InfluxDB; costs collector CPU.
    #[serde(default)]
    pub gzip: bool,
}

fn default_measurement() -> String {
    "readings".into()
}
fn default_alerts_measurement() -> String {
    "alerts".into()
}
fn default_events_measurement() -> String {
    "events".into()
}
fn default_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalStoreConfig {
    pub path: PathBuf,
}

pub use edgeloop_shared::config::{ConfigError, Problem};

impl CollectorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&edgeloop_shared::config::read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        edgeloop_shared::config::parse(text, path, Self::problems)
    }

    /// The embedded broker's address when it would take anonymous clients from the network: no
    /// `users`, a listener other than loopback, and no `allow_anonymous = true`. `run` refuses to
    /// start and `check` fails on such a config; a parse alone (tests, tools) does not.
    pub fn open_broker(&self) -> Option<std::net::SocketAddr> {
        match &self.broker {
            BrokerConfig::Embedded(b) if b.users.is_empty() && !b.allow_anonymous && !b.listen.ip().is_loopback() => {
                Some(b.listen)
            }
            _ => None,
        }
    }

    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: &str, message: String| out.push(Problem { key: key.into(), message });
        let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        match &self.store {
            StoreConfig::InfluxV1(c) => {
                if !url_ok(&c.url) {
                    problem("store.url", format!("{:?} must start with http:// or https://", c.url));
                }
                if c.database.is_empty() {
                    problem("store.database", "must name the InfluxDB database".into());
                }
                if c.username.is_some() != c.password.is_some() {
                    problem("store.username", "set both username and password, or neither".into());
                }
                check_measurements(&c.measurement, &c.events_measurement, &mut problem);
            }
            StoreConfig::InfluxV2(c) => {
                if !url_ok(&c.url) {
                    problem("store.url", format!("{:?} must start with http:// or https://", c.url));
                }
                if c.bucket.is_empty() {
                    problem("store.bucket", "must name the bucket".into());
                }
                check_measurements(&c.measurement, &c.events_measurement, &mut problem);
            }
            StoreConfig::Local(c) => {
                if c.path.as_os_str().is_empty() {
                    problem("store.path", "must name a directory".into());
                }
            }
        }
        if let BrokerConfig::Embedded(b) = &self.broker
            && b.max_payload.0 < 1024
        {
            problem("broker.max_payload", "must be at least 1KiB".into());
        }
        if let BrokerConfig::External(b) = &self.broker
            && let Some(group) = &b.shared_group
            && (group.is_empty() || group.contains(['/', '+', '#']))
        {
            problem("broker.shared_group", format!("{group:?} must be a non-empty name without '/', '+' or '#'"));
        }
        if let BrokerConfig::Embedded(b) = &self.broker
            && b.users.contains_key(&self.ingest.client_id)
        {
            problem(
                "broker.users",
                format!(
                    "{:?} is the collector's own client id (ingest.client_id); name agents otherwise",
                    self.ingest.client_id
                ),
            );
        }
        if !(1..=64).contains(&self.ingest.write_concurrency) {
            problem("ingest.write_concurrency", format!("{} must be between 1 and 64", self.ingest.write_concurrency));
        }
        if self.ingest.write_max_batches == 0 || self.ingest.write_max_points == 0 {
            problem("ingest.write_max_batches", "write_max_batches and write_max_points must be at least 1".into());
        }
        if self.ingest.max_in_flight == 0 {
            problem("ingest.max_in_flight", "must be at least 1".into());
        }
        if self.ingest.client_id.is_empty() {
            problem("ingest.client_id", "must not be empty".into());
        }
        out
    }
}

fn check_measurements(measurement: &str, events: &str, problem: &mut impl FnMut(&str, String)) {
    for (key, name) in [("store.measurement", measurement), ("store.events_measurement", events)] {
        if let Err(e) = edgeloop_shared::id::validate(name) {
            problem(key, format!("{name:?} is not a usable measurement name: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CollectorConfig, ConfigError> {
        CollectorConfig::parse(text, Path::new("collector.toml"))
    }

    #[test]
    fn debug_of_a_config_never_shows_a_credential() {
        let v1 = parse(
            "[broker]\nmode = \"external\"\nhost = \"mqtt.site\"\nusername = \"c\"\npassword = \"mqtt-hunter2\"\n\
             [store]\nkind = \"influx_v1\"\nurl = \"http://db:8086\"\ndatabase = \"plant\"\nusername = \"u\"\n\
             password = \"influx-hunter2\"\n",
        )
        .unwrap();
        let v2 = parse(
            "[store]\nkind = \"influx_v2\"\nurl = \"http://db:8086\"\norg = \"o\"\nbucket = \"b\"\ntoken = \"token-hunter2\"\n",
        )
        .unwrap();
        let StoreConfig::InfluxV1(store) = &v1.store else { panic!("influx v1") };
        assert_eq!(store.password.as_ref().map(Secret::expose), Some("influx-hunter2"));
        let shown = format!("{v1:?}{v2:?}");
        for secret in ["mqtt-hunter2", "influx-hunter2", "token-hunter2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn defaults_to_the_embedded_broker() {
        let c = parse("[store]\nkind = \"local\"\npath = \"/tmp/x\"\n").unwrap();
        let BrokerConfig::Embedded(b) = c.broker else { panic!("embedded by default") };
        assert_eq!(b.listen.port(), 1883);
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            parse("[store]\nkind = \"influx_v1\"\nurl = \"localhost:8086\"\ndatabase = \"\"\nmeasurement = \"a b\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("store.url") && err.contains("store.database") && err.contains("store.measurement"),
            "{err}"
        );
        let err = parse("[store]\nkind = \"influx_v3\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("influx_v3") && err.contains("influx_v1"), "{err}");
    }

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/collector.example.toml");
        CollectorConfig::load(&path).unwrap();
    }
}
