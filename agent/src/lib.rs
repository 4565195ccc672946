//! The edgeloop gateway agent: reads sensors, checks local safety rules on the fast path, keeps
//! every reading in a durable buffer, and forwards batches to the collector, removing them only
//! on the collector's end-to-end ack.
//!
//! ```text
//! sources ──mpsc<Observation>──► normalise ──mpsc<Record>──► rules stage ──mpsc<Record>──► buffer intake ──(redb: sealed batches)──► forwarder ──MQTT──► collector
//!   (serial, MQTT, simulated)     (time, health)              (engine, actions)  │                  └──(watch: newest seq)──────┘   ◄── ack ──┘
//!                                                                  │      └──► recorder (JSON Lines, optional)
//!                                                                  ├──► actions (serial trip, MQTT publish, program)
//!                                                                  └──LatchChange──► buffer latches (same redb file)
//! ```
//!
//! # Layout
//! - [`pipeline`]: the types that flow between the stages (`Observation`, `Record`, `LatchChange`).
//! - [`sources`]: where readings come from (one file per kind of source), and sensor health.
//! - [`normalise`]: the stage that stamps time, distrusts far-off device clocks and tracks health.
//! - [`rules`]: the rules stage on the fast path and the rule file's hot reload (the rule format,
//!   engine, features and recordings are the `edgeloop_rules` crate).
//! - [`actions`]: what a firing rule does (serial trip command, MQTT publish, program).
//! - [`buffer`]: the durable buffer (redb, two priority lanes, byte limit), the group-commit
//!   intake task, and the rules' latches in the same database.
//! - [`forwarder`]: the uplink's in-flight windows and its MQTT transport (TLS optional).
//! - [`commands`]: signed commands from the collector (shutdown, latch reset, new rules):
//!   verified, checked against replays, executed, answered and audited.
//! - [`config`]: the TOML config, strict parsing and validation.
//! - [`topic_pattern`]: MQTT topic filters with named wildcards (used by config and the MQTT source).
//! - [`stats`]: the agent's counters.
//! - [`metrics`]: `/metrics` (Prometheus) and `/status` (JSON) over a tiny HTTP server.

pub mod actions;
pub mod buffer;
pub mod commands;
pub mod config;
pub mod forwarder;
pub mod metrics;
pub mod normalise;
pub mod pipeline;
pub mod rules;
pub mod sources;
pub mod stats;
pub mod topic_pattern;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use edgeloop_rules::{
    config::{RuleFile, RuleFileError},
    engine::{Engine, ResetOutcome},
    record::{RecordError, Recorder},
};
use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    buffer::{Buffer, BufferError, IntakeSettings},
    config::{AgentConfig, SourceConfig},
    forwarder::UplinkSettings,
    normalise::{Normaliser, SourcePolicy},
    pipeline::Record,
    sources::{SourceContext, health::SensorHealth, serial::SerialHandle},
    stats::{AgentStats, SourceCounters},
};

/// Observations queued between the sources and the normalise stage, and records between it and
/// the buffer intake; a full queue makes the stage before it wait.
const STAGE_QUEUE: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error("source {source_id}: {error}")]
    Broker { source_id: String, error: edgeloop_shared::broker::BrokerError },
    #[error(transparent)]
    Rules(#[from] RuleFileError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("cannot start the recorder thread: {0}")]
    Recorder(String),
    #[error("uplink TLS: {0}")]
    Tls(String),
    #[error("cannot serve metrics on {addr}: {error}")]
    Metrics { addr: SocketAddr, error: String },
    #[error(transparent)]
    Commands(#[from] commands::CommandsError),
    #[error("commands.public_key: {0}")]
    CommandKey(#[from] edgeloop_shared::command::KeyError),
}

/// A running agent.
pub struct Agent {
    pub stats: Arc<AgentStats>,
    buffer: Buffer,
    probe: metrics::Probe,
    metrics_addr: Option<SocketAddr>,
    sources: BTreeMap<String, Arc<SourceCounters>>,
    serial: BTreeMap<String, SerialHandle>,
    brokers: BTreeMap<String, SocketAddr>,
    health: Arc<Mutex<Vec<SensorHealth>>>,
    rules: rules::stage::RulesHandle,
    tasks: TaskTracker,
    stop_sources: CancellationToken,
    shutdown: CancellationToken,
}

impl Agent {
    /// Stops the sources only: the buffer and uplink keep running, so the backlog can drain.
    pub fn stop_sources(&self) {
        self.stop_sources.cancel();
    }

    /// Asks every stage to stop; the intake commits what it holds and the forwarder flushes.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every stage has stopped (after [`Agent::shutdown`], or when the parent token fires).
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The counters of source `id`.
    pub fn source(&self, id: &str) -> Option<&SourceCounters> {
        self.sources.get(id).map(|c| &**c)
    }

    /// Writes commands down serial source `id`'s port.
    pub fn serial(&self, id: &str) -> Option<&SerialHandle> {
        self.serial.get(id)
    }

    /// Where MQTT source `id`'s embedded broker accepts sensors.
    pub fn sensor_broker(&self, id: &str) -> Option<SocketAddr> {
        self.brokers.get(id).copied()
    }

    /// Releases a latched rule; refused while its condition or its sensors are still bad.
    pub async fn reset(&self, rule: &str) -> ResetOutcome {
        self.rules.reset(rule).await
    }

    /// Version of the rule set running (1 at start, +1 per accepted hot reload).
    pub fn rules_version(&self) -> u64 {
        self.stats.rules_version.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The rules latched (tripped until reset) right now.
    pub fn latched(&self) -> Vec<String> {
        self.rules.latched()
    }

    /// The buffer's running totals (persisted: they cover the agent's whole life).
    pub fn buffer(&self) -> buffer::Totals {
        self.buffer.totals()
    }

    /// Timestamp (ns) of the oldest reading or event not yet acknowledged by the collector.
    pub fn oldest_unsent_ns(&self) -> Option<i64> {
        self.buffer.oldest_unsent_ns()
    }

    /// Size of the buffer's file on disk.
    pub fn buffer_disk_bytes(&self) -> u64 {
        self.buffer.disk_bytes()
    }

    /// Where `/metrics` and `/status` are served, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// What `/status` shows.
    pub fn status(&self) -> metrics::Status {
        self.probe.status(self.latched())
    }

    /// Every sensor's health, as of the last quarter second.
    pub fn health(&self) -> Vec<SensorHealth> {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

/// Opens the buffer, starts the sensor brokers, and starts every stage as tasks on the current
/// runtime.
///
/// # Errors
/// When the buffer cannot be opened (another agent holds the directory, or it is unreadable) or
/// an embedded sensor broker cannot listen.
pub async fn start(config: &AgentConfig, shutdown: CancellationToken) -> Result<Agent, StartError> {
    let stats = Arc::new(AgentStats::default());
    let (buffer, recovery) = Buffer::open(&config.agent.data_dir, buffer_settings(config))?;
    if let buffer::Recovery::Salvaged { moved_to, salvaged, reason } = &recovery {
        tracing::error!(agent = %config.agent.id, file = %moved_to.display(), salvaged, %reason, "the buffer was damaged; started on a salvaged copy");
    }
    let tls = match &config.uplink.tls {
        Some(t) => Some(read_tls(t)?),
        None => None,
    };
    let tasks = TaskTracker::new();
    let (obs_tx, obs_rx) = mpsc::channel(STAGE_QUEUE);
    let (normalised_tx, normalised_rx) = mpsc::channel(STAGE_QUEUE);
    let (records_tx, records_rx) = mpsc::channel(STAGE_QUEUE);
    let rule_file = match &config.agent.rules {
        Some(path) => RuleFile::load(path, &config.rules_context())?,
        None => RuleFile::default(),
    };
    let (committed_tx, committed_rx) = watch::channel(0);

    let stop_sources = shutdown.child_token();
    let mut policies = Vec::new();
    let mut normaliser_expect = Vec::new();
    let mut counters = BTreeMap::new();
    let mut serial = BTreeMap::new();
    let mut brokers = BTreeMap::new();
    let mut mqtt_targets = std::collections::HashMap::new();
    for (index, (id, source)) in config.sources.iter().enumerate() {
        let index = index as u16;
        policies.push(SourcePolicy { stale_after: source.stale_after(), max_clock_skew: source.max_clock_skew() });
        let c = Arc::new(SourceCounters::default());
        counters.insert(id.clone(), c.clone());
        let ctx = SourceContext {
            index,
            id: id.clone(),
            out: obs_tx.clone(),
            counters: c,
            stats: stats.clone(),
            shutdown: stop_sources.clone(),
        };
        match source {
            SourceConfig::Simulated(cfg) => {
                let m = sources::simulated::Machine::new(id, cfg.period.0);
                normaliser_expect.extend(m.sensors().map(|s| (s.to_owned(), index)));
                tasks.spawn(sources::simulated::run(ctx, cfg.clone()));
            }
            SourceConfig::Serial(cfg) => {
                let names = sources::serial::ChannelNames::new(id, cfg);
                normaliser_expect.extend(names.configured().into_iter().map(|s| (s, index)));
                let (handle, commands) = sources::serial::command_channel(&cfg.path.display().to_string());
                serial.insert(id.clone(), handle);
                tasks.spawn(sources::serial::run(ctx, cfg.clone(), commands));
            }
            SourceConfig::Mqtt(cfg) => {
                let addr = sources::mqtt::start_broker(id, cfg)
                    .await
                    .map_err(|error| StartError::Broker { source_id: id.clone(), error })?;
                if let Some(addr) = addr {
                    brokers.insert(id.clone(), addr);
                }
                mqtt_targets.insert(id.clone(), actions::target_for(addr, cfg));
                tasks.spawn(sources::mqtt::run(ctx, cfg.clone(), config.agent.id.clone(), addr));
            }
        }
    }
    drop(obs_tx);

    let mut normaliser = Normaliser::new(policies);
    let now = Instant::now();
    for (sensor, index) in &normaliser_expect {
        normaliser.expect(sensor, *index, now);
    }
    let health = Arc::new(Mutex::new(Vec::new()));
    tasks.spawn(normalise::run(normaliser, obs_rx, normalised_tx, health.clone()));

    let restored = buffer.latches()?;
    let latches = buffer::latches::writer(buffer.clone());
    let rule_file = Arc::new(rule_file);
    let engine = Engine::new(&rule_file);
    let make_actions = {
        let (serial, agent, stats, shutdown) =
            (serial.clone(), config.agent.id.clone(), stats.clone(), shutdown.clone());
        Box::new(move |file: &RuleFile| {
            actions::Actions::new(file, &serial, &mqtt_targets, &agent, stats.clone(), &shutdown)
        })
    };
    let actions = make_actions(&rule_file);
    let recording = match &config.agent.record {
        Some(path) => {
            let mut recorder = Recorder::create(path, config.agent.record_max.0)?;
            let (tx, mut rx) = mpsc::channel::<Record>(STAGE_QUEUE * 4);
            // Its own thread: a slow disk delays the recording, never a rule.
            std::thread::Builder::new()
                .name("edgeloop-recorder".into())
                .spawn(move || {
                    while let Some(first) = rx.blocking_recv() {
                        recorder.record(&first);
                        while let Ok(r) = rx.try_recv() {
                            recorder.record(&r);
                        }
                        recorder.flush();
                    }
                    recorder.flush();
                })
                .map_err(|e| StartError::Recorder(e.to_string()))?;
            Some(tx)
        }
        None => None,
    };
    let (rules_handle, control, latched_view) = rules::stage::control_channel();
    let stage = rules::stage::Stage {
        engine,
        file: rule_file,
        actions,
        restored,
        latches,
        latched_view,
        make_actions,
        stats: stats.clone(),
        recording,
    };
    tasks.spawn(rules::stage::run(stage, normalised_rx, records_tx, control));
    let rule_file_path = config.agent.rules.clone().map(|p| Arc::new(rules::RuleFilePath::new(p)));
    if let Some(path) = &rule_file_path {
        tasks.spawn(rules::watch(
            path.clone(),
            config.rules_context(),
            config.agent.rules_check_interval.0,
            rules_handle.clone(),
            stats.clone(),
            shutdown.clone(),
        ));
    }

    let intake = IntakeSettings {
        flush_interval: config.buffer.flush_interval.0,
        batch_max_readings: config.uplink.batch_max_readings,
    };
    let (buf, st, sd) = (buffer.clone(), stats.clone(), shutdown.clone());
    tasks.spawn(async move {
        if let Err(e) = buffer::run_intake(intake, buf, records_rx, committed_tx, st, sd.clone()).await {
            tracing::error!(error = %e, "buffer intake failed; stopping the agent");
            sd.cancel();
        }
    });

    let command_settings = commands::Settings {
        agent: config.agent.id.clone(),
        key: config.commands.public_key.as_deref().map(edgeloop_shared::command::VerifyingKey::from_hex).transpose()?,
        shutdown_actions: config.commands.shutdown_actions.clone(),
        audit_log: config.audit_log(),
        rule_file: rule_file_path,
        rules_context: config.rules_context(),
        pushed_exec: commands::PushedExec {
            allowed: config.commands.allow_pushed_exec,
            allowlist: config.commands.exec_allowlist.clone(),
        },
    };
    let command_task = commands::Commands::open(
        command_settings,
        rules_handle.clone(),
        stats.clone(),
        edgeloop_shared::clock::now_ns(),
    )?;
    let (command_tx, command_rx) = mpsc::channel(commands::INBOX);
    let (result_tx, result_rx) = mpsc::channel(commands::INBOX);
    tasks.spawn(commands::run(command_task, command_rx, result_tx, shutdown.clone()));
    let command_link = forwarder::mqtt::CommandLink { inbox: command_tx, results: result_rx };

    let u = &config.uplink;
    let uplink = UplinkSettings {
        agent: config.agent.id.clone(),
        host: u.host.clone(),
        port: u.port,
        username: u.username.clone(),
        password: u.password.clone(),
        keep_alive: u.keep_alive.0,
        in_flight: u.in_flight,
        ack_timeout: u.ack_timeout.0,
        reconnect_min: u.reconnect_min.0,
        reconnect_max: u.reconnect_max.0,
        tls,
        catch_up: u.catch_up,
    };
    let buffer_view = buffer.clone();
    let probe = metrics::Probe {
        agent: config.agent.id.clone(),
        stats: stats.clone(),
        buffer: buffer_view.clone(),
        sources: counters.clone(),
        health: health.clone(),
    };
    let reporter: forwarder::mqtt::Reporter = {
        let (probe, rules) = (probe.clone(), rules_handle.clone());
        Arc::new(move || probe.report(rules.latched()))
    };
    let (st, sd) = (stats.clone(), shutdown.clone());
    tasks.spawn(async move {
        if let Err(e) = forwarder::run(uplink, buffer, committed_rx, st, reporter, command_link, sd.clone()).await {
            tracing::error!(error = %e, "forwarder failed; stopping the agent");
            sd.cancel();
        }
    });
    let metrics_addr = match &config.metrics {
        Some(m) => {
            let (listener, addr) = metrics::bind(m.listen)
                .await
                .map_err(|e| StartError::Metrics { addr: m.listen, error: e.to_string() })?;
            tracing::info!(agent = %config.agent.id, %addr, "metrics and status on http://{addr}/metrics and /status");
            let view = rules_handle.clone();
            tasks.spawn(metrics::serve(listener, probe.clone(), move || view.latched(), shutdown.clone()));
            Some(addr)
        }
        None => None,
    };
    let agent = Agent {
        stats,
        probe,
        metrics_addr,
        buffer: buffer_view,
        sources: counters,
        serial,
        brokers,
        health,
        rules: rules_handle,
        tasks,
        stop_sources,
        shutdown,
    };
    Ok(agent)
}

fn buffer_settings(config: &AgentConfig) -> buffer::BufferSettings {
    buffer::BufferSettings {
        agent: config.agent.id.clone(),
        tags: config.agent.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        max_bytes: config.buffer.max_bytes.0,
        when_full: config.buffer.when_full,
        cache_bytes: usize::try_from(config.buffer.cache.0).unwrap_or(usize::MAX),
        verify_on_open: config.buffer.verify_on_open,
        drop_report_interval: std::time::Duration::from_secs(10),
    }
}

fn read_tls(t: &config::TlsConfig) -> Result<forwarder::mqtt::TlsFiles, StartError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let client = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    Ok(forwarder::mqtt::TlsFiles { ca: read(&t.ca)?, client })
}
