//! An embedded store in a local sled database, for the demo and for trying edgeloop without a
//! database server. Points are keyed like InfluxDB identifies them (agent, sensor, timestamp),
//! so a replayed batch overwrites itself here too and the counts are exact.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use edgeloop_shared::batch::Batch;

use super::StoreError;

pub struct LocalStore {
    db: sled::Db,
    points: sled::Tree,
    events: sled::Tree,
    total: AtomicU64,
    per_agent: Mutex<HashMap<String, u64>>,
}

fn key(agent: &str, sensor: &str, ts_ns: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(agent.len() + sensor.len() + 10);
    k.extend_from_slice(agent.as_bytes());
    k.push(0);
    k.extend_from_slice(sensor.as_bytes());
    k.push(0);
    k.extend_from_slice(&ts_ns.to_be_bytes());
    k
}

impl LocalStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let setup =
            |e: sled::Error| StoreError::Setup(format!("cannot open the local store in {}: {e}", path.display()));
        let db = sled::Config::new().path(path).cache_capacity(64 << 20).open().map_err(setup)?;
        let points = db.open_tree("points").map_err(setup)?;
        let events = db.open_tree("events").map_err(setup)?;
        let mut per_agent: HashMap<String, u64> = HashMap::new();
        for k in points.iter().keys() {
            let k = k.map_err(setup)?;
            if let Some(agent) = k.split(|&b| b == 0).next() {
                *per_agent.entry(String::from_utf8_lossy(agent).into_owned()).or_default() += 1;
            }
        }
        let total = per_agent.values().sum();
        Ok(Self { db, points, events, total: AtomicU64::new(total), per_agent: Mutex::new(per_agent) })
    }

    pub async fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        let io = |e: sled::Error| StoreError::Transient { reason: format!("local store: {e}"), retry_after: None };
        let mut new = 0u64;
        for s in &batch.series {
            for p in &s.points {
                if self
                    .points
                    .insert(key(&batch.agent, &s.sensor, p.ts_ns), &p.value.to_le_bytes())
                    .map_err(io)?
                    .is_none()
                {
                    new += 1;
                }
            }
        }
        for e in &batch.events {
            // Keyed like InfluxDB would identify it (agent, subject, kind, time): replays overwrite.
            let value = format!("{} {} {}", e.kind.name(), e.subject, e.message);
            let tag = format!("{}\u{1}{}", e.subject, e.kind.name());
            self.events.insert(key(&batch.agent, &tag, e.ts_ns), value.as_bytes()).map_err(io)?;
        }
        self.db.flush_async().await.map_err(io)?;
        self.total.fetch_add(new, Relaxed);
        if let Ok(mut m) = self.per_agent.lock() {
            *m.entry(batch.agent.clone()).or_default() += new;
        }
        Ok(())
    }

    /// Distinct points stored, over all agents.
    pub fn count(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Distinct points stored for one sensor of `agent`.
    pub fn count_sensor(&self, agent: &str, sensor: &str) -> u64 {
        let mut prefix = key(agent, sensor, 0);
        prefix.truncate(prefix.len() - 8);
        self.points.scan_prefix(prefix).count() as u64
    }

    /// Events stored for `agent`, oldest first, as `"<kind> <subject> <message>"`.
    pub fn events_for(&self, agent: &str) -> Vec<String> {
        let mut prefix = agent.as_bytes().to_vec();
        prefix.push(0);
        let mut events: Vec<(i64, String)> = self
            .events
            .scan_prefix(prefix)
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let ts = i64::from_be_bytes(k.get(k.len().checked_sub(8)?..)?.try_into().ok()?);
                Some((ts, String::from_utf8_lossy(&v).into_owned()))
            })
            .collect();
        events.sort();
        events.into_iter().map(|(_, e)| e).collect()
    }

    /// Distinct points stored for `agent`.
    pub fn count_for(&self, agent: &str) -> u64 {
        self.per_agent.lock().map(|m| m.get(agent).copied().unwrap_or(0)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeloop_shared::model::Reading;

    #[tokio::test]
    async fn a_replayed_batch_is_stored_once_and_counts_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let readings: Vec<Reading> = (0..10).map(|i| Reading { sensor: "s".into(), ts_ns: i, value: 1.0 }).collect();
        let batch = Batch::from_readings("gw", 0, &readings);
        {
            let store = LocalStore::open(dir.path()).unwrap();
            store.write(&batch).await.unwrap();
            store.write(&batch).await.unwrap();
            assert_eq!((store.count(), store.count_for("gw"), store.count_for("other")), (10, 10, 0));
        }
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.count_for("gw"), 10);
    }
}
