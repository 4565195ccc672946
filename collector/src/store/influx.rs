//! Writes line protocol to InfluxDB over HTTP, through either API:
//!
//! - v1: `POST {url}/write?db=&rp=&precision=ns` (basic auth) — InfluxDB 1.x (Debian's 1.6 included),
//!   InfluxDB 2.x's compatibility endpoint, VictoriaMetrics;
//! - v2: `POST {url}/api/v2/write?org=&bucket=&precision=ns` (`Authorization: Token`) — InfluxDB
//!   2.x, 3.x, Cloud, VictoriaMetrics.
//!
//! One maintained HTTP client (reqwest 0.13, rustls) serves both; the `influxdb2` crate was not
//! used: it cannot reach InfluxDB 1.x and drags in a second, outdated HTTP/TLS stack
//! (docs/architecture.md, "Decisions").

use std::time::Duration;

use edgeloop_shared::batch::Batch;
use reqwest::{StatusCode, header::RETRY_AFTER};

use super::{StoreError, Written, line_protocol};
use crate::config::{InfluxV1Config, InfluxV2Config};

pub struct InfluxStore {
    http: reqwest::Client,
    url: String,
    query: Vec<(&'static str, String)>,
    auth: Auth,
    measurement: String,
    events_measurement: String,
}

enum Auth {
    None,
    Basic { user: String, password: String },
    Token(String),
}

impl InfluxStore {
    pub fn v1(c: &InfluxV1Config) -> Result<Self, StoreError> {
        let mut query = vec![("db", c.database.clone()), ("precision", "ns".into())];
        if let Some(rp) = &c.retention_policy {
            query.push(("rp", rp.clone()));
        }
        let auth = match (&c.username, &c.password) {
            (Some(user), Some(password)) => Auth::Basic { user: user.clone(), password: password.clone() },
            _ => Auth::None,
        };
        Self::new(&c.url, "write", query, auth, &c.measurement, &c.events_measurement, c.timeout.0)
    }

    pub fn v2(c: &InfluxV2Config) -> Result<Self, StoreError> {
        let query = vec![("org", c.org.clone()), ("bucket", c.bucket.clone()), ("precision", "ns".into())];
        let auth = c.token.clone().map_or(Auth::None, Auth::Token);
        Self::new(&c.url, "api/v2/write", query, auth, &c.measurement, &c.events_measurement, c.timeout.0)
    }

    fn new(
        base: &str,
        path: &str,
        query: Vec<(&'static str, String)>,
        auth: Auth,
        measurement: &str,
        events_measurement: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| StoreError::Setup(format!("cannot build the HTTP client: {e}")))?;
        // Keep a path prefix (a reverse proxy's) intact: append, don't replace.
        let url = format!("{}/{path}", base.trim_end_matches('/'));
        Ok(Self {
            http,
            url,
            query,
            auth,
            measurement: measurement.into(),
            events_measurement: events_measurement.into(),
        })
    }

    /// Writes the batch. When the database refuses it as bad data (400, 413, 422), the lines are
    /// halved and written again until each refused line stands alone: one bad point (a field
    /// type conflict, say) costs its own line, not the batch, at log2(lines) extra requests.
    pub async fn write(&self, batch: &Batch) -> Result<Written, StoreError> {
        let mut body = String::with_capacity(batch.point_count() * 64);
        line_protocol::encode_batch(&mut body, &self.measurement, &self.events_measurement, batch);
        if body.is_empty() {
            return Ok(Written::default());
        }
        let first = match self.post(body.clone()).await {
            Ok(()) => return Ok(Written::default()),
            Err(StoreError::Rejected(reason)) => reason,
            Err(e) => return Err(e),
        };
        let lines: Vec<&str> = body.lines().collect();
        let mut rejected = Vec::new();
        // Ranges known to hold at least one refused line.
        let mut suspect = vec![(0, lines.len())];
        while let Some((lo, hi)) = suspect.pop() {
            if hi - lo == 1 {
                rejected.push((lines[lo].to_owned(), first.clone()));
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            for (a, b) in [(lo, mid), (mid, hi)] {
                let mut part = lines[a..b].join("\n");
                part.push('\n');
                match self.post(part).await {
                    Ok(()) => {}
                    Err(StoreError::Rejected(reason)) if b - a == 1 => rejected.push((lines[a].to_owned(), reason)),
                    Err(StoreError::Rejected(_)) => suspect.push((a, b)),
                    Err(e) => return Err(e),
                }
            }
        }
        if rejected.len() == lines.len() {
            return Err(StoreError::Rejected(first));
        }
        Ok(Written { rejected })
    }

    /// Writes several batches (from any agents) as one request.
    pub async fn write_all(&self, batches: &[&Batch]) -> Result<(), StoreError> {
        let points: usize = batches.iter().map(|b| b.point_count()).sum();
        let mut body = String::with_capacity(points * 64);
        for batch in batches {
            line_protocol::encode_batch(&mut body, &self.measurement, &self.events_measurement, batch);
        }
        if body.is_empty() {
            return Ok(());
        }
        self.post(body).await
    }

    async fn post(&self, body: String) -> Result<(), StoreError> {
        let mut req = self.http.post(&self.url).query(&self.query).body(body);
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::Token(t) => req.header(reqwest::header::AUTHORIZATION, format!("Token {t}")),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| StoreError::Transient { reason: format!("{}: {e}", self.url), retry_after: None })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.trim().chars().take(300).collect();
        let reason = format!("{} answered {status}: {text}", self.url);
        match status {
            // The data itself is bad (unparseable, type conflict, too large): retrying cannot help.
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNPROCESSABLE_ENTITY => {
                Err(StoreError::Rejected(reason))
            }
            // Everything else (auth, missing database, overload, outage) is fixable on the server
            // side: keep the data and retry.
            _ => Err(StoreError::Transient { reason, retry_after }),
        }
    }
}
