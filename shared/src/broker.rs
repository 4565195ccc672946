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
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

pub use rumqttd::AclRefusals;
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings, TlsConfig};
use serde::Deserialize;

use crate::{secret::Secret, units::ByteSize};

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
    /// With them, a client must log in as the user its client id names: an agent connects as
    /// itself (client id = agent id = user) or not at all.
    pub users: BTreeMap<String, Secret>,
    /// Accept clients without a login on a listener other than loopback (no `users`). Off by
    /// default: the collector refuses to start (and `check` fails) rather than let anyone on the
    /// network forge acks or read every agent's telemetry.
    pub allow_anonymous: bool,
    /// Serve MQTT over TLS on `listen`. The collector's own client then uses a plain listener
    /// of its own on loopback.
    pub tls: Option<BrokerTls>,
}

/// The broker's certificate chain and key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for EmbeddedBroker {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            max_payload: ByteSize(4 << 20),
            max_connections: 10_000,
            users: BTreeMap::new(),
            allow_anonymous: false,
            tls: None,
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
    /// What the topic ACL refused (publishes, subscriptions, connections with a foreign will);
    /// always zero without logins, where there is no ACL.
    pub acl_refusals: Arc<AclRefusals>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl BrokerHandle {
    /// Stops accepting connections. Connections already open end with the process.
    pub fn stop_listening(&self) {
        self.listeners.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// The embedding process's own login (the collector's consumer): any client id may use it, and
/// `client_id` may publish on every agent's topics (acks, commands).
#[derive(Debug, Clone)]
pub struct Internal {
    pub user: String,
    pub password: Secret,
    pub client_id: String,
}

/// Starts rumqttd and waits until it accepts connections. `internal` is an extra user/password
/// for the collector's own client, added when agents must authenticate.
pub async fn start(cfg: &EmbeddedBroker, internal: Option<Internal>) -> Result<BrokerHandle, BrokerError> {
    let mut addr = cfg.listen;
    if addr.port() == 0 {
        // rumqttd never reports the port it bound, so choose a free one first.
        let probe =
            std::net::TcpListener::bind(addr).map_err(|e| BrokerError::Listen { addr, reason: e.to_string() })?;
        addr = probe.local_addr().map_err(|e| BrokerError::Listen { addr, reason: e.to_string() })?;
    }
    // Each user may connect only with its own name as client id (the collector's own client
    // excepted), so no agent can take another's session.
    let auth: Option<rumqttd::AuthHandler> = if cfg.users.is_empty() {
        None
    } else {
        let users: Arc<HashMap<String, Secret>> = Arc::new(cfg.users.clone().into_iter().collect());
        let internal = internal.clone();
        Some(Arc::new(move |client_id: String, user: String, pass: String| {
            let ok = match &internal {
                Some(i) if i.user == user => same_secret(i.password.expose(), &pass),
                _ => client_id == user && users.get(&user).is_some_and(|p| same_secret(p.expose(), &pass)),
            };
            if !ok {
                tracing::warn!(client_id, user, "broker refused a login");
            }
            Box::pin(std::future::ready(ok))
        }))
    };
    // With logins, a client also publishes only under its own topics: an agent cannot send as
    // another or forge another's acks and commands (only the collector's client may). The same
    // ACL checks a client's last will at CONNECT, or a will could do what a publish may not.
    let acl_refusals = Arc::new(AclRefusals::default());
    let publish_acl = internal.as_ref().filter(|_| !cfg.users.is_empty()).map(|i| rumqttd::PublishAcl {
        prefix: format!("{}/", crate::topic::PREFIX),
        owner_channels: ["telemetry", "events", "status", "result"].map(String::from).to_vec(),
        privileged: vec![i.client_id.clone()],
        refused: acl_refusals.clone(),
    });
    let connections = |max_payload: &ByteSize| ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: usize::try_from(max_payload.0).unwrap_or(usize::MAX),
        max_inflight_count: 256,
        auth: None,
        external_auth: auth.clone(),
        dynamic_filters: true,
        publish_acl: publish_acl.clone(),
    };
    let router = RouterConfig {
        max_connections: cfg.max_connections,
        max_outgoing_packet_count: 256,
        max_segment_size: 16 << 20,
        max_segment_count: 16,
        publish_acl: publish_acl.clone(),
        ..Default::default()
    };
    let router_tx = Router::new(0, router).spawn();
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<(SocketAddr, String)>(2);
    let mut listeners = Vec::new();
    let mut serve = |name: &str, listen: SocketAddr, tls: Option<TlsConfig>| {
        let settings = ServerSettings {
            name: name.into(),
            listen,
            tls,
            next_connection_delay_ms: 0,
            connections: connections(&cfg.max_payload),
        };
        let mut server = Server::new(settings, router_tx.clone(), rumqttd::protocol::v4::V4);
        let failed = failed_tx.clone();
        listeners.push(tokio::spawn(async move {
            if let Err(e) = server.start(LinkType::Remote).await {
                let _ = failed.send((listen, e.to_string())).await;
            }
        }));
    };
    let connect_addr = match &cfg.tls {
        None => {
            serve("edgeloop-v4", addr, None);
            if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr }
        }
        Some(tls) => {
            let path = |p: &PathBuf| p.display().to_string();
            for file in [&tls.cert, &tls.key] {
                if !file.is_file() {
                    return Err(BrokerError::Listen {
                        addr,
                        reason: format!("TLS file {} is not readable", file.display()),
                    });
                }
            }
            let config = TlsConfig::Rustls { capath: None, certpath: path(&tls.cert), keypath: path(&tls.key) };
            serve("edgeloop-v4-tls", addr, Some(config));
            let internal_addr = free_loopback(addr)?;
            serve("edgeloop-v4-internal", internal_addr, None);
            internal_addr
        }
    };

    let waited = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + waited;
    let mut attempt = 0u32;
    loop {
        if let Ok((at, reason)) = failed_rx.try_recv() {
            listeners.iter().for_each(tokio::task::JoinHandle::abort);
            return Err(BrokerError::Listen { addr: at, reason });
        }
        attempt += 1;
        let tls_up = cfg.tls.is_none() || tokio::net::TcpStream::connect(local(addr)).await.is_ok();
        let login = internal.as_ref().map(|i| (i.user.clone(), i.password.expose().to_owned()));
        if tls_up && mqtt_handshake(connect_addr, login.as_ref(), attempt).await.is_ok() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            listeners.iter().for_each(tokio::task::JoinHandle::abort);
            return Err(BrokerError::NotReady { addr, waited });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(%addr, tls = cfg.tls.is_some(), "embedded broker listening");
    Ok(BrokerHandle { addr, connect_addr, acl_refusals, listeners })
}

/// Compares a password in constant time (for equal lengths), so response timing does not leak
/// how much of a guess was right.
fn same_secret(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

fn local(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr }
}

fn free_loopback(public: SocketAddr) -> Result<SocketAddr, BrokerError> {
    std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map_err(|e| BrokerError::Listen {
        addr: public,
        reason: format!("no loopback port for the collector's own client: {e}"),
    })
}

/// Readiness probe: a complete MQTT 3.1.1 CONNECT / CONNACK / DISCONNECT exchange (a bare TCP
/// connect that hangs up makes rumqttd log an error).
async fn mqtt_handshake(addr: SocketAddr, login: Option<&(String, String)>, attempt: u32) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let flags = if login.is_some() { 0xc2 } else { 0x02 }; // clean session (+ user name, password)
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 10];
    // A fresh client id per attempt: an attempt that timed out must not meet its own ghost.
    let (probe_id, login) = match login {
        // The internal user may log in with any client id.
        Some(l) => (format!("edgeloop-broker-probe-{attempt}"), Some(l)),
        None => (format!("edgeloop-broker-probe-{attempt}"), None),
    };
    string(&mut body, &probe_id);
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
