//! The agent's config file: strict TOML, then a validation pass that reports every problem at once.
//!
//! Parse errors (unknown keys, wrong types, bad units) come from the TOML parser with line and
//! column; validation problems name the table key (`sources.press-3.period`) and say how to fix it.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use edgeloop_shared::units::{ByteSize, HumanDuration};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    #[serde(default)]
    pub uplink: UplinkConfig,
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Keyed by source id, which becomes the prefix of the source's sensor ids.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// This gateway's id: its MQTT client id, topic level and InfluxDB `agent` tag.
    pub id: String,
    /// Where the durable buffer lives.
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: HumanDuration,
    /// A batch is sealed when it holds this many readings (or when the flush interval ends).
    pub batch_max_readings: usize,
    /// Batches sent and not yet acknowledged by the collector.
    pub in_flight: usize,
    /// A batch the collector has not acknowledged after this long is sent again.
    pub ack_timeout: HumanDuration,
    pub reconnect_min: HumanDuration,
    pub reconnect_max: HumanDuration,
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
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Group commit: readings that arrive within this interval are written and flushed together.
    /// A reading counts as accepted once its group is flushed.
    pub flush_interval: HumanDuration,
    /// sled's page cache (its default of 1 GiB is far too much for a gateway).
    pub cache: ByteSize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            flush_interval: HumanDuration(std::time::Duration::from_millis(20)),
            cache: ByteSize(16 << 20),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    Simulated(SimulatedConfig),
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

fn secs(s: u64) -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(s))
}
fn default_sim_period() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(100))
}
fn default_true() -> bool {
    true
}

/// One thing wrong with a config, located by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.into(),
                problems,
            })
        }
    }

    /// Every problem the file has, not just the first.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: &str, message: String| {
            out.push(Problem {
                key: key.into(),
                message,
            })
        };
        if let Err(e) = edgeloop_shared::id::validate(&self.agent.id) {
            problem(
                "agent.id",
                format!("{:?} is not a valid id: {e}", self.agent.id),
            );
        }
        if self.agent.data_dir.as_os_str().is_empty() {
            problem(
                "agent.data_dir",
                "must name a directory for the durable buffer".into(),
            );
        }
        let u = &self.uplink;
        if u.in_flight == 0 {
            problem("uplink.in_flight", "must be at least 1".into());
        }
        if u.batch_max_readings == 0 {
            problem("uplink.batch_max_readings", "must be at least 1".into());
        }
        if u.keep_alive.0 < std::time::Duration::from_secs(1) {
            problem(
                "uplink.keep_alive",
                "must be at least 1s (MQTT counts keep-alive in seconds)".into(),
            );
        }
        if u.reconnect_min.0.is_zero() || u.reconnect_min > u.reconnect_max {
            problem(
                "uplink.reconnect_min",
                "must be above zero and not above uplink.reconnect_max".into(),
            );
        }
        if u.ack_timeout.0 < std::time::Duration::from_millis(100) {
            problem("uplink.ack_timeout", "must be at least 100ms".into());
        }
        if self.buffer.flush_interval.0.is_zero() {
            problem(
                "buffer.flush_interval",
                "must be above zero, e.g. \"20ms\"".into(),
            );
        }
        if self.buffer.cache.0 < 1 << 20 {
            problem("buffer.cache", "must be at least 1MiB".into());
        }
        if self.sources.is_empty() {
            problem(
                "sources",
                "no source is configured; add e.g. [sources.press-3] with kind = \"simulated\""
                    .into(),
            );
        }
        for (id, source) in &self.sources {
            if let Err(e) = edgeloop_shared::id::validate(id) {
                problem(
                    &format!("sources.{id}"),
                    format!("{id:?} is not a valid source id: {e}"),
                );
            }
            match source {
                SourceConfig::Simulated(sim) => {
                    if sim.period.0.is_zero() {
                        problem(&format!("sources.{id}.period"), "must be above zero".into());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
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
        let SourceConfig::Simulated(sim) = &c.sources["press-3"];
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
        let err = parse(&GOOD.replace("\"10ms\"", "\"10 fortnights\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10 fortnights") && err.contains("ms") && err.contains("line 6"),
            "{err}"
        );
    }

    #[test]
    fn validation_reports_every_problem_by_key() {
        let text = GOOD.replace("gw-1", "gw/1").replace("\"10ms\"", "\"0ms\"")
            + "[uplink]\nin_flight = 0\n[buffer]\nflush_interval = \"0s\"\n";
        let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else {
            panic!("must be invalid")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "agent.id",
                "uplink.in_flight",
                "buffer.flush_interval",
                "sources.press-3.period"
            ]
        );
    }

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.example.toml");
        AgentConfig::load(&path).unwrap();
    }
}
