//! A real VictoriaMetrics (Debian's `victoria-metrics`) on a free port in a temp dir. It takes
//! InfluxDB line protocol on `/api/v2/write`, so it is the test target of the collector's v2 API.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct Victoria {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Victoria {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("edgeloop-vm-").tempdir().unwrap();
        let port = super::free_port();
        let log = std::fs::File::create(dir.path().join("victoria-metrics.log")).unwrap();
        let child = Command::new("victoria-metrics")
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
            .arg("-retentionPeriod=100y")
            .arg("-search.latencyOffset=0s")
            // A replayed point has the same series and timestamp: keep one copy, as InfluxDB does.
            .arg("-dedup.minScrapeInterval=1ms")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("victoria-metrics not found: install Debian's `victoria-metrics` package (scripts/test does)");
        let url = format!("http://127.0.0.1:{port}");
        let vm = Self { url, child, _dir: dir, http: reqwest::Client::new() };
        super::wait_for("victoria-metrics to answer /health", Duration::from_secs(30), || async {
            let r = vm.http.get(format!("{}/health", vm.url)).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        vm
    }

    /// Number of samples stored for metric `name` (line protocol `m` + field `f` is `m_f`).
    pub async fn count(&self, name: &str) -> u64 {
        let _ = self.http.get(format!("{}/internal/force_flush", self.url)).send().await;
        let body = self
            .http
            .get(format!("{}/api/v1/export", self.url))
            .query(&[("match[]", format!("{{__name__=\"{name}\"}}"))])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["timestamps"].as_array().map_or(0, |a| a.len() as u64)
            })
            .sum()
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
