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

use edgeloop_shared::{batch::Batch, secret::Secret};
use reqwest::{StatusCode, header::RETRY_AFTER};

use super::{
    line_protocol,
    outcome::{Failure, Refused, StoreError, Written},
};
use crate::config::{InfluxV1Config, InfluxV2Config};

pub struct InfluxStore {
    http: reqwest::Client,
    url: String,
    query: Vec<(&'static str, String)>,
    auth: Auth,
    measurement: String,
    events_measurement: String,
    alerts_measurement: String,
    gzip: bool,
}

enum Auth {
    None,
    Basic { user: String, password: Secret },
    Token(Secret),
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
        let names = (c.measurement.as_str(), c.events_measurement.as_str(), c.alerts_measurement.as_str());
        Self::new(&c.url, "write", query, auth, names, c.timeout.0, c.gzip)
    }

    pub fn v2(c: &InfluxV2Config) -> Result<Self, StoreError> {
        let query = vec![("org", c.org.clone()), ("bucket", c.bucket.clone()), ("precision", "ns".into())];
        let auth = c.token.clone().map_or(Auth::None, Auth::Token);
        let names = (c.measurement.as_str(), c.events_measurement.as_str(), c.alerts_measurement.as_str());
        Self::new(&c.url, "api/v2/write", query, auth, names, c.timeout.0, c.gzip)
    }

    fn new(
        base: &str,
        path: &str,
        query: Vec<(&'static str, String)>,
        auth: Auth,
        (measurement, events_measurement, alerts_measurement): (&str, &str, &str),
        timeout: Duration,
        gzip: bool,
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
            alerts_measurement: alerts_measurement.into(),
            gzip,
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
        let about: Vec<line_protocol::LineOf> = line_protocol::lines_of(batch).collect();
        let refused = |i: usize, reason: String| Refused {
            line: lines[i].to_owned(),
            reason,
            reading: matches!(about.get(i), Some(line_protocol::LineOf::Reading { .. })),
            name: about.get(i).map_or("-", |a| a.name()).to_owned(),
        };
        let mut rejected = Vec::new();
        // Ranges known to hold at least one refused line.
        let mut suspect = vec![(0, lines.len())];
        while let Some((lo, hi)) = suspect.pop() {
            if hi - lo == 1 {
                rejected.push(refused(lo, first.clone()));
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            for (a, b) in [(lo, mid), (mid, hi)] {
                let mut part = lines[a..b].join("\n");
                part.push('\n');
                match self.post(part).await {
                    Ok(()) => {}
                    Err(StoreError::Rejected(reason)) if b - a == 1 => rejected.push(refused(a, reason)),
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

    /// Writes alert state changes (one line each) to the alerts measurement.
    pub async fn write_alerts(&self, alerts: &[crate::model::Alert], ts_ns: i64) -> Result<(), StoreError> {
        let mut body = String::new();
        for a in alerts {
            line_protocol::encode_alert(&mut body, &self.alerts_measurement, a, ts_ns);
        }
        if body.is_empty() {
            return Ok(());
        }
        self.post(body).await
    }

    async fn post(&self, body: String) -> Result<(), StoreError> {
        let mut req = self.http.post(&self.url).query(&self.query);
        req = if self.gzip {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 8), flate2::Compression::fast());
            let compressed = gz.write_all(body.as_bytes()).and_then(|()| gz.finish());
            match compressed {
                Ok(bytes) => req.header(reqwest::header::CONTENT_ENCODING, "gzip").body(bytes),
                // Compressing into memory does not fail in practice; if it did, send it plain.
                Err(_) => req.body(body),
            }
        } else {
            req.body(body)
        };
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password.expose())),
            Auth::Token(t) => req.header(reqwest::header::AUTHORIZATION, format!("Token {}", t.expose())),
        };
        let resp = req.send().await.map_err(|e| {
            let failure = if e.is_timeout() {
                Failure::Timeout
            } else if e.is_connect() {
                Failure::Connect
            } else {
                Failure::Other
            };
            StoreError::Transient { reason: format!("{}: {e}", self.url), retry_after: None, failure }
        })?;
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
            _ => Err(StoreError::Transient { reason, retry_after, failure: Failure::Status(status.as_u16()) }),
        }
    }
}

/// Why a series could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// This database does not answer InfluxQL queries (or not for this bucket).
    #[error("{0}")]
    Unsupported(String),
    /// The database failed or could not be reached.
    #[error("{0}")]
    Failed(String),
}

/// `"name"`: an InfluxQL identifier, quoted.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `'value'`: an InfluxQL string literal, quoted.
fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The InfluxQL for one series' mean per interval, about `max_points` intervals over the range.
fn series_query(
    measurement: &str,
    agent: &str,
    sensor: &str,
    since_ns: i64,
    until_ns: i64,
    max_points: usize,
) -> String {
    let span_ns = (i128::from(until_ns) - i128::from(since_ns)).max(0) + 1;
    let interval_us = (span_ns / max_points.max(1) as i128).div_euclid(1000).max(1);
    format!(
        "SELECT mean(\"value\") FROM {} WHERE \"agent\" = {} AND \"sensor\" = {} AND time >= {since_ns} AND \
         time <= {until_ns} GROUP BY time({interval_us}u) fill(none)",
        quote_ident(measurement),
        quote_str(agent),
        quote_str(sensor),
    )
}

impl InfluxStore {
    /// One series over `[since_ns, until_ns]`: its mean per interval, about `max_points` of them,
    /// through the InfluxQL `/query` endpoint (InfluxDB 1.x; InfluxDB 2.x's v1 compatibility API,
    /// which needs a DBRP mapping for the bucket — 2.x makes one per bucket, named like it).
    pub async fn series(
        &self,
        agent: &str,
        sensor: &str,
        since_ns: i64,
        until_ns: i64,
        max_points: usize,
    ) -> Result<Vec<(i64, f64)>, QueryError> {
        let param = |k: &str| self.query.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone());
        let (base, db, v2) = if let Some(base) = self.url.strip_suffix("/api/v2/write") {
            (base, param("bucket"), true)
        } else if let Some(base) = self.url.strip_suffix("/write") {
            (base, param("db"), false)
        } else {
            return Err(QueryError::Unsupported(format!("{} is not a write URL this store knows", self.url)));
        };
        let url = format!("{base}/query");
        let mut query = vec![
            ("db", db.unwrap_or_default()),
            ("epoch", "ns".to_string()),
            ("q", series_query(&self.measurement, agent, sensor, since_ns, until_ns, max_points)),
        ];
        if let Some(rp) = param("rp") {
            query.push(("rp", rp));
        }
        let mut req = self.http.get(&url).query(&query);
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password.expose())),
            Auth::Token(t) => req.header(reqwest::header::AUTHORIZATION, format!("Token {}", t.expose())),
        };
        let resp = req.send().await.map_err(|e| QueryError::Failed(format!("{url}: {e}")))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| QueryError::Failed(format!("{url}: {e}")))?;
        let short: String = text.trim().chars().take(300).collect();
        if !status.is_success() {
            let why = format!("{url} answered {status}: {short}");
            // Not an InfluxQL endpoint (VictoriaMetrics), or a 2.x bucket without a DBRP mapping.
            return Err(if v2 || matches!(status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) {
                QueryError::Unsupported(why)
            } else {
                QueryError::Failed(why)
            });
        }
        let body: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| QueryError::Failed(format!("{url}: not InfluxQL JSON ({e}): {short}")))?;
        let result = &body["results"][0];
        if let Some(err) = result["error"].as_str().or(body["error"].as_str()) {
            let why = format!("{url}: {err}");
            return Err(if v2 { QueryError::Unsupported(why) } else { QueryError::Failed(why) });
        }
        let values = result["series"][0]["values"].as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(values.iter().filter_map(|row| Some((row.get(0)?.as_i64()?, row.get(1)?.as_f64()?))).collect())
    }
}

#[cfg(test)]
mod tests {
    use edgeloop_shared::{model::Reading, units::HumanDuration};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// With `gzip`, the body on the wire is gzip (magic 1f 8b) and says so.
    #[tokio::test]
    async fn gzip_bodies_are_compressed_and_labelled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 65536];
            // Read until the head and at least the first body bytes are in.
            while !req.windows(4).any(|w| w == b"\r\n\r\n")
                || req.len() < 2 + req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
            {
                let n = s.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            req
        });
        let store = InfluxStore::v1(&InfluxV1Config {
            url: format!("http://{addr}"),
            database: "edgeloop".into(),
            retention_policy: None,
            username: None,
            password: None,
            measurement: "readings".into(),
            events_measurement: "events".into(),
            alerts_measurement: "alerts".into(),
            timeout: HumanDuration(Duration::from_secs(5)),
            gzip: true,
        })
        .unwrap();
        let readings: Vec<Reading> = (0..100).map(|i| Reading { sensor: "t".into(), ts_ns: i, value: 1.5 }).collect();
        store.write(&Batch::from_readings("gw", 1, &readings)).await.unwrap();
        let req = server.await.unwrap();
        let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&req[..head_end]).to_lowercase();
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert_eq!(&req[head_end..head_end + 2], &[0x1f, 0x8b], "gzip magic");
    }

    #[test]
    fn series_queries_quote_what_they_are_given() {
        let q = series_query("read\"ings", "gw'1", "a\\b", 0, 599_999_999, 600);
        assert_eq!(
            q,
            "SELECT mean(\"value\") FROM \"read\\\"ings\" WHERE \"agent\" = 'gw\\'1' AND \"sensor\" = 'a\\\\b' AND \
             time >= 0 AND time <= 599999999 GROUP BY time(1000u) fill(none)"
        );
    }
}
