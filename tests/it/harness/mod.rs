//! Starts real components for the tests: databases as child processes on free ports in temp
//! dirs, the collector and agents in-process or as binaries. Nothing here uses a fixed port.

pub mod chromium;
pub mod influxdb;
pub mod mosquitto;
pub mod pty;
pub mod smtp;
pub mod tls;
pub mod victoria;
pub mod webhook;

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Once,
    time::Duration,
};

use edgeloop_agent::config::{AgentConfig, AgentSection, BufferConfig, SimulatedConfig, SourceConfig, UplinkConfig};
use edgeloop_collector::config::{BrokerConfig, CollectorConfig, EmbeddedBroker, IngestConfig, StoreConfig};
use edgeloop_shared::units::HumanDuration;

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,rumqttd=off,rumqttc=off".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A port that was free a moment ago (for servers that cannot report the port they bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of one of the workspace's binaries, (re)building the workspace's binaries first so a test
/// never runs a stale one (a no-op after `scripts/test`'s own build).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash>  →  target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins"]);
        // `cargo test` sets per-package variables (CARGO_PKG_*, CARGO_MANIFEST_DIR, ...); inherited,
        // they change build-script fingerprints and force a rebuild of C dependencies.
        for (key, _) in std::env::vars() {
            if key.starts_with("CARGO_") && !matches!(key.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR") {
                cmd.env_remove(key);
            }
        }
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cannot run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A collector config with the embedded broker on `listen` and the given store.
pub fn collector_config(listen: SocketAddr, store: StoreConfig) -> CollectorConfig {
    CollectorConfig {
        broker: BrokerConfig::Embedded(EmbeddedBroker { listen, ..Default::default() }),
        ingest: IngestConfig::default(),
        store,
        fleet: Default::default(),
        api: None,
        automation: None,
        notify: Default::default(),
    }
}

/// An agent with one simulated machine `machine`, uplink to `broker`.
pub fn agent_config(id: &str, data_dir: &Path, broker: SocketAddr, sim: SimulatedConfig) -> AgentConfig {
    AgentConfig {
        agent: AgentSection {
            id: id.into(),
            data_dir: data_dir.into(),
            rules: None,
            rules_check_interval: HumanDuration(Duration::from_secs(1)),
            record: None,
            record_max: edgeloop_shared::units::ByteSize(64 << 20),
            tags: [("site".to_string(), "test-plant".to_string())].into(),
        },
        uplink: UplinkConfig {
            host: broker.ip().to_string(),
            port: broker.port(),
            ack_timeout: HumanDuration(Duration::from_secs(3)),
            reconnect_max: HumanDuration(Duration::from_secs(1)),
            ..Default::default()
        },
        buffer: BufferConfig::default(),
        metrics: None,
        commands: Default::default(),
        sources: BTreeMap::from([("machine".to_string(), SourceConfig::Simulated(sim))]),
    }
}

/// Fast mode: `limit` readings as quickly as the buffer takes them, timestamps `period` apart.
pub fn fast(limit: u64, period: Duration) -> SimulatedConfig {
    SimulatedConfig { period: HumanDuration(period), realtime: false, limit: Some(limit) }
}
