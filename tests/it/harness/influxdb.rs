//! A real InfluxDB 1.x (Debian's `influxd`) on free ports in a temp dir.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct Influx1 {
    pub url: String,
    child: Child,
    /// SIGSTOPped by [`Influx1::stop`].
    frozen: bool,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Influx1 {
    /// Starts `influxd` and creates database `db`.
    pub async fn start(db: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("edgeloop-influxd-").tempdir().unwrap();
        let (http_port, rpc_port) = (super::free_port(), super::free_port());
        let d = dir.path().display();
        let config = format!(
            r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"#
        );
        let config_path = dir.path().join("influxdb.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = spawn(dir.path());
        let url = format!("http://127.0.0.1:{http_port}");
        let http = reqwest::Client::new();
        let influx = Self { url, child, frozen: false, _dir: dir, http };
        influx.wait_ready().await;
        influx.query(db, &format!("CREATE DATABASE \"{db}\"")).await;
        influx
    }

    async fn wait_ready(&self) {
        super::wait_for("influxd to answer /ping", Duration::from_secs(30), || async {
            let r = self.http.get(format!("{}/ping", self.url)).send().await.ok()?;
            (r.status().as_u16() == 204).then_some(())
        })
        .await;
    }

    /// Kills the server (SIGKILL); its data stays for [`Influx1::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): a hung database, its sockets open and silent.
    pub fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        self.frozen = true;
    }

    /// Thaws a server frozen by [`Influx1::stop`] (SIGCONT).
    pub fn cont(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.frozen = false;
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Starts the server again on the same ports and data.
    pub async fn restart(&mut self) {
        self.child = spawn(self._dir.path());
        self.wait_ready().await;
    }

    /// Runs an InfluxQL statement and returns the JSON answer.
    pub async fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let resp = self.http.post(format!("{}/query", self.url)).query(&[("db", db), ("q", q)]).send().await.unwrap();
        assert!(resp.status().is_success(), "query {q:?} failed: {}", resp.status());
        serde_json::from_str(&resp.text().await.unwrap()).unwrap()
    }

    /// `SELECT count(<field>) FROM <measurement>`: 0 when the measurement does not exist yet.
    pub async fn count(&self, db: &str, measurement: &str, field: &str) -> u64 {
        let v = self.query(db, &format!("SELECT count(\"{field}\") FROM \"{measurement}\"")).await;
        v["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0)
    }
}

impl Drop for Influx1 {
    fn drop(&mut self) {
        if self.frozen {
            self.cont();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("influxd.log")).unwrap();
    Command::new("influxd")
        .arg("-config")
        .arg(dir.join("influxdb.conf"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("influxd not found: install Debian's `influxdb` package (scripts/test does)")
}

/// The collector's store config for this server's v1 API: database `edgeloop`, measurements
/// `readings` and `events`.
pub fn v1_store(url: &str) -> edgeloop_collector::config::StoreConfig {
    edgeloop_collector::config::StoreConfig::InfluxV1(edgeloop_collector::config::InfluxV1Config {
        url: url.into(),
        database: "edgeloop".into(),
        retention_policy: None,
        username: None,
        password: None,
        measurement: "readings".into(),
        events_measurement: "events".into(),
        alerts_measurement: "alerts".into(),
        timeout: edgeloop_shared::units::HumanDuration(Duration::from_secs(10)),
        gzip: false,
    })
}
