//! Where batches end up.
//!
//! - [`influx`]: InfluxDB over HTTP, v1 and v2 write APIs.
//! - [`local`]: an embedded sled store, for the demo and for trying edgeloop without a database.
//! - [`line_protocol`]: the InfluxDB line protocol encoder.

pub mod influx;
pub mod line_protocol;
pub mod local;

use std::time::Duration;

use edgeloop_shared::batch::Batch;

use crate::config::StoreConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: the database is down, slow, overloaded or misconfigured on its side.
    #[error("write failed, will retry: {reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// The database refused the data itself; retrying cannot help.
    #[error("write refused: {0}")]
    Rejected(String),
    #[error("{0}")]
    Setup(String),
}

/// What a write left out: lines the database refused one by one, the rest of the batch stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub rejected: Vec<Refused>,
}

/// One line the database refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The line as sent.
    pub line: String,
    /// The database's reason.
    pub reason: String,
    /// A reading's line (counted as a lost point), not an event's.
    pub reading: bool,
    /// The reading's sensor or the event's subject.
    pub name: String,
}

pub enum Store {
    Influx(influx::InfluxStore),
    Local(local::LocalStore),
}

impl Store {
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        Ok(match config {
            StoreConfig::InfluxV1(c) => Store::Influx(influx::InfluxStore::v1(c)?),
            StoreConfig::InfluxV2(c) => Store::Influx(influx::InfluxStore::v2(c)?),
            StoreConfig::Local(c) => Store::Local(local::LocalStore::open(&c.path)?),
        })
    }

    /// Writes every point and event of `batch`, except points the database refuses on their own
    /// (returned). Idempotent: writing a batch twice stores it once.
    pub async fn write(&self, batch: &Batch) -> Result<Written, StoreError> {
        match self {
            Store::Influx(s) => s.write(batch).await,
            Store::Local(s) => s.write(batch).await.map(|()| Written::default()),
        }
    }

    /// Writes several batches in one request when the store can (`Ok(false)`: it cannot, write
    /// them one by one). All or nothing: a refusal says nothing about which point was bad.
    pub async fn write_all(&self, batches: &[&Batch]) -> Result<bool, StoreError> {
        match self {
            Store::Influx(s) => s.write_all(batches).await.map(|()| true),
            Store::Local(_) => Ok(false),
        }
    }

    /// Records alert state changes (fired, resolved) next to the data, for Grafana and history.
    /// The embedded store keeps none: the automation's own state has them.
    pub async fn write_alerts(&self, alerts: &[crate::model::Alert], ts_ns: i64) -> Result<(), StoreError> {
        match self {
            Store::Influx(s) => s.write_alerts(alerts, ts_ns).await,
            Store::Local(_) => Ok(()),
        }
    }

    /// The embedded store, when that is what runs (the demo counts from it).
    pub fn local(&self) -> Option<&local::LocalStore> {
        match self {
            Store::Local(s) => Some(s),
            Store::Influx(_) => None,
        }
    }
}
