//! A real Mosquitto broker (Debian's package) on a free port in a temp dir, and `mosquitto_pub`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

fn mosquitto_binary() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" }
}

impl Mosquitto {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("edgeloop-mosquitto-").tempdir().unwrap();
        let port = super::free_port();
        let conf = dir.path().join("mosquitto.conf");
        // Stock limits drop QoS 1 messages under bursts (../shared/CRATES.md §11): raise them.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n\
                 max_queued_messages 100000\nmax_inflight_messages 1000\nlog_dest stderr\n"
            ),
        )
        .unwrap();
        let child = spawn(dir.path());
        let m = Self { port, child, _dir: dir };
        m.wait_ready().await;
        m
    }

    async fn wait_ready(&self) {
        let port = self.port;
        super::wait_for("mosquitto to accept connections", Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port. Persistence is off, so
    /// every session and every message it held is gone, as after a crash of a stock install.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self._dir.path());
        self.wait_ready().await;
    }
}

fn spawn(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("mosquitto.log")).unwrap();
    Command::new(mosquitto_binary())
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("mosquitto not found: install Debian's `mosquitto` package (scripts/test does)")
}

impl Mosquitto {
    /// What the broker logged so far (connections name their protocol: `p2` is MQTT 3.1.1, `p5`
    /// MQTT 5).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes one message with the real `mosquitto_pub` client (QoS 1).
pub fn publish(port: u16, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-m", payload])
        .status()
        .expect("mosquitto_pub not found: install Debian's `mosquitto-clients` package (scripts/test does)");
    assert!(status.success(), "mosquitto_pub to {topic} failed");
}
