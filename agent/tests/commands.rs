//! Signed commands through the real agent: `edgeloop_agent::start` against an embedded broker,
//! commands published on the agent's `cmd` topic by an MQTT client, results read back from its
//! `result` topic.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{net::SocketAddr, path::Path, time::Duration};

use edgeloop_agent::config::AgentConfig;
use edgeloop_shared::{
    broker::{self, EmbeddedBroker},
    command::SigningKey,
    model::{Command, CommandAction, CommandResult, from_wire, to_wire},
    topic::{Channel, topic},
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const AGENT: &str = "gw-cmd";

const RULES: &str = r#"
[rules.hot]
sensor = "machine.temperature"
above = 1000.0
severity = "warning"
"#;

fn config(dir: &Path, broker: SocketAddr, key: &SigningKey) -> AgentConfig {
    let text = format!(
        r#"
[agent]
id = "{AGENT}"
data_dir = "{data}"
rules = "{rules}"
rules_check_interval = "100ms"

[uplink]
host = "127.0.0.1"
port = {port}
reconnect_min = "50ms"
reconnect_max = "200ms"

[sources.machine]
kind = "simulated"
period = "50ms"

[metrics]
listen = "127.0.0.1:0"

[commands]
public_key = "{public}"
"#,
        data = dir.join("data").display(),
        rules = dir.join("rules.toml").display(),
        port = broker.port(),
        public = key.public_key_hex(),
    );
    AgentConfig::parse(&text, Path::new("agent.toml")).unwrap()
}

/// An operator's MQTT client: publishes commands, hands back the results it receives.
async fn operator(broker: SocketAddr) -> (AsyncClient, mpsc::Receiver<CommandResult>) {
    let mut opts = MqttOptions::new("operator", broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client.subscribe(topic(AGENT, Channel::Result), QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(from_wire::<CommandResult>(&p.payload).unwrap()).await;
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    (client, rx)
}

/// Publishes `payload` on the agent's `cmd` topic until a result for `id` comes back (the agent
/// subscribes when its uplink connects; a repeat after that is refused as a replay).
async fn exchange(
    client: &AsyncClient,
    results: &mut mpsc::Receiver<CommandResult>,
    id: u64,
    payload: Vec<u8>,
) -> CommandResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no result for command {id}");
        client.publish(topic(AGENT, Channel::Cmd), QoS::AtLeastOnce, false, payload.clone()).await.unwrap();
        let wait = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                r = results.recv() => {
                    let r = r.unwrap();
                    if r.id == id {
                        return r;
                    }
                }
                _ = &mut wait => break,
            }
        }
    }
}

async fn get_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

fn command(id: u64, action: CommandAction) -> Command {
    let now = edgeloop_shared::clock::now_ns();
    Command {
        id,
        agent: AGENT.into(),
        issued_ns: now,
        expires_ns: now + 60_000_000_000,
        issuer: "alice".into(),
        action,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_reloads_the_rules_and_a_forged_command_is_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    let broker =
        broker::start(&EmbeddedBroker { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..Default::default() }, None)
            .await
            .unwrap();
    let key = SigningKey::generate().unwrap();
    let config = config(dir.path(), broker.addr, &key);
    let agent = edgeloop_agent::start(&config, CancellationToken::new()).await.unwrap();
    let (client, mut results) = operator(broker.addr).await;

    // A signed PushRules: validated, written over the rule file, reloaded.
    let new_rules = RULES.replace("1000.0", "900.0");
    let push = command(1, CommandAction::PushRules { toml: new_rules.clone() });
    let result = exchange(&client, &mut results, 1, to_wire(&key.sign(&push).unwrap()).unwrap()).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.agent, AGENT);
    assert_eq!(result.outcome, "rules version 2 running");
    assert_eq!(result.rules_version, Some(2));
    assert_eq!(agent.rules_version(), 2);
    assert_eq!(std::fs::read_to_string(dir.path().join("rules.toml")).unwrap(), new_rules);

    // Signed by another key: refused, answered, audited; the rules stay.
    let forged = command(2, CommandAction::PushRules { toml: RULES.into() });
    let mut signed = SigningKey::generate().unwrap().sign(&forged).unwrap();
    signed.key_id = key.key_id();
    let result = exchange(&client, &mut results, 2, to_wire(&signed).unwrap()).await;
    assert!(!result.ok);
    assert_eq!(result.outcome, "refused: bad signature");
    assert_eq!(agent.rules_version(), 2);
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["id"], 1);
    assert_eq!(lines[0]["verdict"], "accepted");
    assert_eq!(lines[0]["issuer"], "alice");
    let forged_line = lines.iter().find(|l| l["id"] == 2).unwrap();
    assert_eq!(forged_line["verdict"], "refused");
    assert_eq!(forged_line["result"], "refused: bad signature");
    let metrics = get_metrics(agent.metrics_addr().unwrap()).await;
    assert!(
        metrics.contains(&format!("edgeloop_agent_commands_total{{agent=\"{AGENT}\",result=\"accepted\"}} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("result=\"refused\"}"), "{metrics}");

    agent.shutdown();
    tokio::time::timeout(Duration::from_secs(10), agent.wait()).await.unwrap();
}
