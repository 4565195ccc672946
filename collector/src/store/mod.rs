//! Where batches end up.
//!
//! - [`influx`]: InfluxDB over HTTP, v1 and v2 write APIs.
//! - [`local`]: an embedded sled store, for the demo and for trying edgeloop without a database.
//! - [`line_protocol`]: the InfluxDB line protocol encoder.
//! - [`outcome`]: what a write comes back with (refused lines, errors), whichever store ran it.

pub mod influx;
pub mod line_protocol;
pub mod local;
pub mod outcome;

use edgeloop_shared::batch::Batch;

pub use self::outcome::{Failure, Refused, StoreError, Written};
use crate::config::StoreConfig;

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
