//! What a rule does when it fires, on the fast path: every action is handed off without waiting
//! (a bounded queue per target), so a slow or failing action never delays the trip or the others.
//!
//! - serial: a `Trip` command down a serial source's port (queued while the port is down, sent
//!   the moment it reopens);
//! - mqtt: a publish on the gateway's broker (rumqttc keeps it until the broker has it);
//! - exec: a program run by a worker with a timeout, retried and reported when it fails.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use edgeloop_rules::config::{ActionConfig, RuleFile};
use edgeloop_shared::{frame::GatewayMessage, secret::Secret};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{sources::serial::SerialHandle, stats::AgentStats};

enum Action {
    Serial { port: SerialHandle },
    Mqtt { client: AsyncClient, topic: String, payload: String, retain: bool },
    Exec { jobs: mpsc::Sender<ExecJob> },
}

struct ExecJob {
    action: String,
    rule: String,
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
}

/// Where an MQTT action publishes: an MQTT source's broker.
#[derive(Debug, Clone)]
pub struct MqttTarget {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// The agent's actions, by id.
pub struct Actions {
    actions: HashMap<String, Action>,
    stats: Arc<AgentStats>,
    /// Stops this set's actuator connections when it is replaced (a hot reload builds a new set
    /// with the same client ids; the old connections must not fight the new ones for them).
    retired: CancellationToken,
}

impl Drop for Actions {
    fn drop(&mut self) {
        self.retired.cancel();
    }
}

/// A rule's number on the serial wire (`GatewayMessage::Trip { rule }`): a stable hash of its id.
pub fn wire_rule_id(rule: &str) -> u16 {
    let h = rule.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
    (h ^ (h >> 16)) as u16
}

impl Actions {
    /// Builds the actions of `file`. MQTT actions get their own client to the source's broker;
    /// exec actions share one worker task.
    pub fn new(
        file: &RuleFile,
        serial: &std::collections::BTreeMap<String, SerialHandle>,
        mqtt: &HashMap<String, MqttTarget>,
        agent: &str,
        stats: Arc<AgentStats>,
        shutdown: &CancellationToken,
    ) -> Self {
        let mut actions = HashMap::new();
        let mut exec_tx = None;
        let retired = shutdown.child_token();
        for (id, cfg) in &file.actions {
            let action = match cfg {
                ActionConfig::Serial(s) => match serial.get(&s.source) {
                    Some(port) => Action::Serial { port: port.clone() },
                    None => {
                        tracing::error!(action = %id, source = %s.source, "serial action's source does not exist; action disabled");
                        continue;
                    }
                },
                ActionConfig::Mqtt(m) => match mqtt.get(&m.source) {
                    Some(target) => Action::Mqtt {
                        client: actuator_client(&format!("{agent}-actions-{id}"), target, &retired),
                        topic: m.topic.clone(),
                        payload: m.payload.clone(),
                        retain: m.retain,
                    },
                    None => {
                        tracing::error!(action = %id, source = %m.source, "MQTT action's source does not exist; action disabled");
                        continue;
                    }
                },
                ActionConfig::Exec(_) => Action::Exec {
                    jobs: exec_tx
                        .get_or_insert_with(|| {
                            let (tx, rx) = mpsc::channel(256);
                            tokio::spawn(exec_worker(rx, stats.clone(), shutdown.clone()));
                            tx
                        })
                        .clone(),
                },
            };
            actions.insert(id.clone(), action);
        }
        Self { actions, stats, retired }
    }

    /// Fires `ids` for `rule`; never waits. A failure to hand off is logged and counted, and
    /// returned (`"<action>: <why>"`, empty when every action was handed off).
    pub fn fire(&self, file: &RuleFile, ids: &[String], rule: &str, sensor: &str, value: f64) -> Vec<String> {
        let mut failures = Vec::new();
        for id in ids {
            let handed_off = match self.actions.get(id) {
                Some(Action::Serial { port }) => {
                    port.send(GatewayMessage::Trip { rule: wire_rule_id(rule) }).map_err(|e| e.to_string())
                }
                Some(Action::Mqtt { client, topic, payload, retain }) => {
                    let body = payload
                        .replace("{rule}", rule)
                        .replace("{sensor}", sensor)
                        .replace("{value}", &format!("{value}"));
                    client.try_publish(topic.clone(), QoS::AtLeastOnce, *retain, body).map_err(|e| e.to_string())
                }
                Some(Action::Exec { jobs }) => match file.actions.get(id) {
                    Some(ActionConfig::Exec(e)) => jobs
                        .try_send(ExecJob {
                            action: id.clone(),
                            rule: rule.to_owned(),
                            program: e.program.clone(),
                            args: e.args.clone(),
                            timeout: e.timeout.0,
                        })
                        .map_err(|e| e.to_string()),
                    _ => Err("exec action without its config".into()),
                },
                None => Err("no such action (disabled at start)".into()),
            };
            match handed_off {
                Ok(()) => {
                    self.stats.actions_fired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.action_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(action = %id, rule, error = %e, "action could not be started");
                    failures.push(format!("{id}: {e}"));
                }
            }
        }
        failures
    }
}

fn actuator_client(client_id: &str, t: &MqttTarget, shutdown: &CancellationToken) -> AsyncClient {
    let mut opts = MqttOptions::new(client_id, t.host.clone(), t.port);
    opts.set_keep_alive(Duration::from_secs(15));
    if let (Some(u), Some(p)) = (&t.username, &t.password) {
        opts.set_credentials(u, p.expose());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let shutdown = shutdown.clone();
    let id = client_id.to_owned();
    tokio::spawn(async move {
        let mut backoff = edgeloop_shared::backoff::Backoff::seeded(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            tokio::select! {
                e = eventloop.poll() => match e {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => backoff.reset(),
                    Ok(_) => {}
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(client = %id, error = %e, retry_in = ?delay, "actuator connection down");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.cancelled() => break,
                        }
                    }
                },
                _ = shutdown.cancelled() => break,
            }
        }
    });
    client
}

/// Runs exec actions one after another, each with its timeout, retrying a failure twice.
async fn exec_worker(mut jobs: mpsc::Receiver<ExecJob>, stats: Arc<AgentStats>, shutdown: CancellationToken) {
    loop {
        let job = tokio::select! {
            j = jobs.recv() => match j { Some(j) => j, None => return },
            _ = shutdown.cancelled() => return,
        };
        for attempt in 1..=3 {
            let run = tokio::process::Command::new(&job.program)
                .args(&job.args)
                .env("EDGELOOP_RULE", &job.rule)
                .kill_on_drop(true)
                .status();
            let outcome = match tokio::time::timeout(job.timeout, run).await {
                Ok(Ok(status)) if status.success() => Ok(()),
                Ok(Ok(status)) => Err(format!("exited with {status}")),
                Ok(Err(e)) => Err(format!("cannot start {}: {e}", job.program.display())),
                Err(_) => Err(format!("timed out after {:?}", job.timeout)),
            };
            match outcome {
                Ok(()) => break,
                Err(e) => {
                    stats.action_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(action = %job.action, rule = %job.rule, attempt, error = %e, "exec action failed");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }
}

/// The broker address an MQTT source's actions publish to.
pub fn target_for(addr: Option<SocketAddr>, cfg: &crate::config::MqttSourceConfig) -> MqttTarget {
    match addr {
        Some(a) => MqttTarget { host: a.ip().to_string(), port: a.port(), username: None, password: None },
        None => MqttTarget {
            host: cfg.host.clone().unwrap_or_default(),
            port: cfg.port.unwrap_or(1883),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
        },
    }
}
