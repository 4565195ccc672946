//! The embedded MQTT broker (rumqttd 0.20): the collector's broker for agents, and the gateway's
//! local broker for MQTT sensors.
//!
//! rumqttd's router runs on its own thread; the listener runs as a task on the collector's
//! runtime (0.20's public `Server` API), so a listen failure comes back to us as an error instead
//! of a log line in a detached thread. rumqttd keeps messages in memory only and has no shutdown
//! API: when its process dies the broker dies with it; every edgeloop publisher re-sends what was
//! not acknowledged end to end.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::Duration,
};

use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use serde::Deserialize;

use crate::units::ByteSize;

/// Config of an embedded broker (the `[broker]` table of the collector, `broker` of an MQTT source).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedBroker {
    /// Where clients connect. Port 0 picks a free port (tests, the demo).
    pub listen: SocketAddr,
    /// Largest MQTT payload accepted; bigger publishes are refused by the broker.
    pub max_payload: ByteSize,
    pub max_connections: usize,
    /// Client credentials (user → password). Without any, the broker accepts every client.
    pub users: BTreeMap<String, String>,
}

impl Default for EmbeddedBroker {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            max_payload: ByteSize(4 << 20),
            max_connections: 10_000,
            users: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("embedded broker on {addr} did not accept connections within {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
}

/// A running embedded broker.
pub struct BrokerHandle {
    /// The address it listens on (the real port when the config said 0).
    pub addr: SocketAddr,
    /// Where the collector's own client connects (loopback when listening on all interfaces).
    pub connect_addr: SocketAddr,
    listener: tokio::task::JoinHandle<()>,
}

impl BrokerHandle {
    /// Stops accepting connections. Connections already open end with the process.
    pub fn stop_listening(&self) {
        self.listener.abort();
    }
}

/// Starts rumqttd and waits until it accepts connections. `internal` is an extra user/password
/// for the collector's own client, added when agents must authenticate.
pub async fn start(cfg: &EmbeddedBroker, internal: Option<(String, String)>) -> Result<BrokerHandle, BrokerError> {
    let mut addr = cfg.listen;
    if addr.port() == 0 {
        // rumqttd never reports the port it bound, so choose a free one first.
        let probe =
            std::net::TcpListener::bind(addr).map_err(|e| BrokerError::Listen { addr, reason: e.to_string() })?;
        addr = probe.local_addr().map_err(|e| BrokerError::Listen { addr, reason: e.to_string() })?;
    }
    let auth = if cfg.users.is_empty() {
        None
    } else {
        let mut users: HashMap<String, String> = cfg.users.clone().into_iter().collect();
        users.extend(internal.clone());
        Some(users)
    };
    let settings = ServerSettings {
        name: "edgeloop-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: usize::try_from(cfg.max_payload.0).unwrap_or(usize::MAX),
            max_inflight_count: 256,
            auth,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let router = RouterConfig {
        max_connections: cfg.max_connections,
        max_outgoing_packet_count: 256,
        max_segment_size: 16 << 20,
        max_segment_count: 16,
        ..Default::default()
    };
    let router_tx = Router::new(0, router).spawn();
    let mut server = Server::new(settings, router_tx, rumqttd::protocol::v4::V4);
    let (failed_tx, mut failed_rx) = tokio::sync::oneshot::channel();
    let listener = tokio::spawn(async move {
        if let Err(e) = server.start(LinkType::Remote).await {
            let _ = failed_tx.send(e.to_string());
        }
    });

    let connect_addr = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let waited = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + waited;
    loop {
        if let Ok(reason) = failed_rx.try_recv() {
            return Err(BrokerError::Listen { addr, reason });
        }
        if mqtt_handshake(connect_addr, internal.as_ref()).await.is_ok() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            listener.abort();
            return Err(BrokerError::NotReady { addr, waited });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(%addr, "embedded broker listening");
    Ok(BrokerHandle { addr, connect_addr, listener })
}

/// Readiness probe: a complete MQTT 3.1.1 CONNECT / CONNACK / DISCONNECT exchange (a bare TCP
/// connect that hangs up makes rumqttd log an error).
async fn mqtt_handshake(addr: SocketAddr, login: Option<&(String, String)>) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let flags = if login.is_some() { 0xc2 } else { 0x02 }; // clean session (+ user name, password)
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 10];
    string(&mut body, "edgeloop-broker-probe");
    if let Some((user, pass)) = login {
        string(&mut body, user);
        string(&mut body, pass);
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(&packet).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut connack)).await??;
    s.write_all(&[0xe0, 0]).await?;
    Ok(())
}
