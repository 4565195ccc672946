//! The edgeloop collector: the cloud end. Agents publish batches to its MQTT broker (embedded
//! rumqttd by default); it stores them in InfluxDB and acknowledges each batch to its agent only
//! once the database has it. What it stored feeds the automation (fleet rules, alerts,
//! notifications, commands back to the agents) and the HTTP API.
//!
//! ```text
//! agents ──MQTT──► ingest (decode, check sender, dedup) ──► store (InfluxDB v1/v2, local)
//!  ▲  ▲             │  │ status        │ once stored
//!  │  │             │  └──► fleet      ├──► live (recent windows, latest values, events)
//!  │  │             │                  ▼ stored batches, command results (bounded channels)
//!  │  │             │          automation (fleet rules, alert book) ──► notify (webhook, Slack,
//!  │  └─ signed commands ◄────────┘   └─ alert changes ──► store          PagerDuty, e-mail)
//!  └──── ack on edgeloop/v1/{agent}/ack, once the store has the batch
//!
//! api (HTTP, dashboard, /metrics): reads fleet, live, store and automation; drives the automation
//! ```
//!
//! [`start`] wires the stages: it makes the one MQTT connection (the ingest consumes on it, the
//! automation's commander publishes on a clone of its client) and the bounded channels from the
//! ingest to the automation; no stage reaches into another.
//!
//! # Layout
//! - [`config`]: the TOML config, strict parsing and validation.
//! - [`model`]: what store, automation, notify and api share: alerts, notification groups, predictions.
//! - [`mqtt`]: the MQTT connection in either protocol version (3.1.1 or 5).
//! - [`ingest`]: the consumer, its per-batch pipeline, the dedup window; what it stored goes out on channels.
//! - [`store`]: InfluxDB (both write APIs), the embedded local store, line protocol.
//! - [`fleet`]: the fleet registry (every agent's presence and last report, persisted).
//! - [`live`]: what was just stored (recent windows, latest values, events), in memory for the API.
//! - [`automation`]: fleet rules, anomaly detection and prediction, the alert book, commands to agents.
//! - [`notify`]: after automation: webhook, Slack, PagerDuty and e-mail channels behind a durable outbox.
//! - [`api`]: the HTTP API (tokens, roles, OpenAPI), the dashboard, `/metrics` and `/fleet`.
//! - [`metrics`]: the Prometheus exposition of the collector's counters and the fleet.
//! - [`stats`]: the collector's counters and histograms.

pub mod api;
pub mod automation;
pub mod config;
pub mod fleet;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod notify;
pub mod stats;
pub mod store;

use std::{net::SocketAddr, sync::Arc};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use edgeloop_shared::{
    broker::{self, BrokerError, BrokerHandle},
    secret::Secret,
};

use crate::{
    config::{BrokerConfig, CollectorConfig},
    ingest::IngestSettings,
    stats::CollectorStats,
    store::{Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the collector could not subscribe to its embedded broker within {0:?}")]
    NotConsuming(std::time::Duration),
    #[error(transparent)]
    Automation(#[from] automation::AutomationError),
    #[error("cannot serve the API on {addr}: {error}")]
    Api { addr: SocketAddr, error: String },
    #[error(
        "the embedded broker on {addr} would let anyone on the network connect without a login (forge acks, read every \
         agent's telemetry): add [broker.users], listen on 127.0.0.1, or set broker.allow_anonymous = true"
    )]
    AnonymousBroker { addr: SocketAddr },
}

/// A running collector.
pub struct Collector {
    pub stats: Arc<CollectorStats>,
    pub fleet: Arc<fleet::Fleet>,
    /// What was just stored (recent windows, latest values, events), for the API.
    pub live: Arc<live::Live>,
    /// Fleet rules, alerts, commands, when `[automation]` is configured.
    pub automation: Option<Arc<automation::Automation>>,
    api_addr: Option<SocketAddr>,
    consuming: tokio::sync::watch::Receiver<bool>,
    pub store: Arc<Store>,
    broker: Option<BrokerHandle>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Collector {
    /// The embedded broker's address, when the collector runs one.
    pub fn broker_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref().map(|b| b.addr)
    }

    /// Where `/metrics` and `/fleet` are served, when configured.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Whether the ingest is subscribed and consuming right now.
    pub fn is_consuming(&self) -> bool {
        *self.consuming.borrow()
    }

    pub fn shutdown(&self) {
        self.shutdown.cancel();
        if let Some(b) = &self.broker {
            b.stop_listening();
        }
    }

    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.fleet.save();
    }
}

/// A random secret for the collector's own broker login (no extra dependency: std's hasher keys
/// are randomly seeded per process).
fn random_secret() -> String {
    use std::hash::{BuildHasher, RandomState};
    let s = RandomState::new();
    format!("{:016x}{:016x}", s.hash_one(1u8), s.hash_one(2u8))
}

/// Opens the store, starts the broker (when embedded), the ingest, the automation and the API.
/// On an error everything already started is stopped (`shutdown` is cancelled).
pub async fn start(config: &CollectorConfig, shutdown: CancellationToken) -> Result<Collector, StartError> {
    let started = start_parts(config, shutdown.clone()).await;
    if started.is_err() {
        // Whatever did start (the notifier, the broker's listener) stops with it.
        shutdown.cancel();
    }
    started
}

async fn start_parts(config: &CollectorConfig, shutdown: CancellationToken) -> Result<Collector, StartError> {
    if let Some(addr) = config.open_broker() {
        return Err(StartError::AnonymousBroker { addr });
    }
    let store = Arc::new(Store::open(&config.store)?);
    let stats = Arc::new(CollectorStats::default());
    let tasks = TaskTracker::new();
    let ing = &config.ingest;
    let (shared_group, version) = match &config.broker {
        BrokerConfig::External(cfg) => (cfg.shared_group.clone(), cfg.protocol),
        // rumqttd embedded speaks 3.1.1 to the collector's own client.
        BrokerConfig::Embedded(_) => (None, config::MqttVersion::V311),
    };
    let (broker, host, port, username, password) = match &config.broker {
        BrokerConfig::Embedded(cfg) => {
            let internal = (!cfg.users.is_empty()).then(|| broker::Internal {
                user: format!("{}-internal", ing.client_id),
                password: Secret::from(random_secret()),
                client_id: ing.client_id.clone(),
            });
            let handle = broker::start(cfg, internal.clone()).await?;
            let _ = stats.broker_acl.set(handle.acl_refusals.clone());
            let (host, port) = (handle.connect_addr.ip().to_string(), handle.connect_addr.port());
            let (u, p) = internal.map(|i| (i.user, i.password)).unzip();
            (Some(handle), host, port, u, p)
        }
        BrokerConfig::External(cfg) => (None, cfg.host.clone(), cfg.port, cfg.username.clone(), cfg.password.clone()),
    };
    let settings = IngestSettings {
        host,
        port,
        username,
        password,
        client_id: ing.client_id.clone(),
        version,
        shared_group,
        max_in_flight: ing.max_in_flight,
        dedup_window: ing.dedup_window,
        write: ingest::WriteBounds {
            concurrency: ing.write_concurrency,
            max_batches: ing.write_max_batches,
            max_points: ing.write_max_points,
            linger: ing.write_linger.0,
            retry_min: ing.retry_min.0,
            retry_max: ing.retry_max.0,
        },
    };
    // Everything that can fail on bad config or a taken port, before any task starts.
    let api = match &config.api {
        Some(api) => {
            let (listener, addr) = edgeloop_shared::http::bind(api.listen)
                .await
                .map_err(|e| StartError::Api { addr: api.listen, error: e.to_string() })?;
            let tokens = api::Tokens::load(api.tokens_file.as_deref())
                .map_err(|e| StartError::Api { addr: api.listen, error: e.to_string() })?;
            Some((listener, addr, tokens))
        }
        None => None,
    };
    let (consuming_tx, mut consuming) = tokio::sync::watch::channel(false);
    let fleet = Arc::new(fleet::Fleet::load(config.fleet.state_file.clone()));
    let live = Arc::new(live::Live::new(std::time::Duration::from_secs(15 * 60), 450));
    // One connection: the ingest consumes on it, the automation publishes its commands on it.
    let connection = mqtt::connect(&settings.connection());
    let mut outputs = ingest::Outputs { live: live.clone(), stored: None, results: None };
    let automation = match &config.automation {
        Some(auto) => {
            let a = automation::start(auto, config.notify.clone(), connection.0.clone(), shutdown.clone())?;
            // Bounded: the ingest waits for a slow automation (see `ingest::Outputs`).
            let (stored_tx, stored) = tokio::sync::mpsc::channel(256);
            let (results_tx, results) = tokio::sync::mpsc::channel(256);
            outputs.stored = Some(stored_tx);
            outputs.results = Some(results_tx);
            let inputs = automation::Inputs { stored, results };
            tasks.spawn(automation::run(
                a.clone(),
                auto.clone(),
                inputs,
                fleet.clone(),
                store.clone(),
                shutdown.clone(),
            ));
            Some(a)
        }
        None => None,
    };
    tasks.spawn(ingest::run(
        settings,
        connection,
        store.clone(),
        stats.clone(),
        fleet.clone(),
        consuming_tx,
        outputs,
        shutdown.clone(),
    ));
    let api_addr = match api {
        Some((listener, addr, tokens)) => {
            let state = api::ApiState::new(api::Parts {
                stats: stats.clone(),
                fleet: fleet.clone(),
                live: live.clone(),
                automation: automation.clone(),
                store: store.clone(),
                tokens,
                shutdown: shutdown.clone(),
            });
            tracing::info!(%addr, "dashboard on http://{addr}/, API on /api/v1 (/api/openapi.json), metrics on /metrics");
            tasks.spawn(api::serve(listener, state, shutdown.clone()));
            Some(addr)
        }
        None => None,
    };
    if broker.is_some() {
        // Our own broker is up: anything published before the subscription would find no
        // consumer, so start() returns only once the collector consumes.
        let limit = std::time::Duration::from_secs(10);
        if !matches!(tokio::time::timeout(limit, consuming.wait_for(|c| *c)).await, Ok(Ok(_))) {
            shutdown.cancel();
            return Err(StartError::NotConsuming(limit));
        }
    }
    Ok(Collector { stats, fleet, live, automation, api_addr, consuming, store, broker, tasks, shutdown })
}
