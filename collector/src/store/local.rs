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

use super::outcome::{Failure, StoreError};

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
        let io = |e: sled::Error| StoreError::Transient {
            reason: format!("local store: {e}"),
            retry_after: None,
            failure: Failure::Other,
        };
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

    /// The points of one series in `[since_ns, until_ns]`, oldest first, at most about
    /// `max_points`: the range is cut into `max_points / 2` buckets and each keeps its lowest and
    /// highest point (a spike stays visible). Streams the scan: memory is bounded by the buckets,
    /// not the range. Blocking (sled): call it off the runtime's threads.
    pub fn series(
        &self,
        agent: &str,
        sensor: &str,
        since_ns: i64,
        until_ns: i64,
        max_points: usize,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let io = |e: sled::Error| StoreError::Transient {
            reason: format!("local store: {e}"),
            retry_after: None,
            failure: Failure::Other,
        };
        let ts_of = |k: &[u8]| {
            k.get(k.len().saturating_sub(8)..).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(i64::from_be_bytes)
        };
        // Timestamps are keyed big-endian: the scan is in time order for non-negative times.
        let range = || self.points.range(key(agent, sensor, since_ns.max(0))..=key(agent, sensor, until_ns.max(0)));
        // Buckets span the data actually there, not the range asked for (which may be "everything").
        let (Some(first), Some(last)) = (range().next(), range().next_back()) else { return Ok(Vec::new()) };
        let (Some(first), Some(last)) = (ts_of(&first.map_err(io)?.0), ts_of(&last.map_err(io)?.0)) else {
            return Ok(Vec::new());
        };
        let buckets = (max_points / 2).max(1) as i128;
        let span = (i128::from(last) - i128::from(first)).max(0) + 1;
        let width = ((span + buckets - 1) / buckets).max(1);
        type Point = (i64, f64);
        // bucket index, its lowest point, its highest point
        let mut kept: Vec<(i128, Point, Point)> = Vec::new();
        for item in range() {
            let (k, v) = item.map_err(io)?;
            let (Some(ts), Ok(bytes)) = (ts_of(&k), <[u8; 8]>::try_from(v.as_ref())) else { continue };
            let p = (ts, f64::from_le_bytes(bytes));
            let bucket = (i128::from(ts) - i128::from(first)) / width;
            match kept.last_mut() {
                Some((b, lo, hi)) if *b == bucket => {
                    if p.1 < lo.1 {
                        *lo = p;
                    }
                    if p.1 > hi.1 {
                        *hi = p;
                    }
                }
                _ => kept.push((bucket, p, p)),
            }
        }
        let mut out = Vec::with_capacity(kept.len() * 2);
        for (_, lo, hi) in kept {
            let (a, b) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
            out.push(a);
            if b != a {
                out.push(b);
            }
        }
        Ok(out)
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

    #[tokio::test]
    async fn a_series_range_is_read_back_bounded_with_its_spike() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let mut readings: Vec<Reading> =
            (0..10_000).map(|i| Reading { sensor: "s".into(), ts_ns: 1_000 + i, value: 1.0 }).collect();
        readings[5_000].value = 99.0;
        readings.push(Reading { sensor: "other".into(), ts_ns: 1_500, value: 7.0 });
        store.write(&Batch::from_readings("gw", 0, &readings)).await.unwrap();
        let all = store.series("gw", "s", 0, i64::MAX, 100_000).unwrap();
        assert_eq!(all.len(), 10_000);
        let few = store.series("gw", "s", 0, 20_000, 100).unwrap();
        assert!(few.len() <= 100 && few.iter().any(|p| p.1 == 99.0), "{}", few.len());
        assert!(few.windows(2).all(|w| w[0].0 < w[1].0), "oldest first");
        let part = store.series("gw", "s", 2_000, 2_009, 100).unwrap();
        assert_eq!(part.iter().map(|p| p.0).collect::<Vec<_>>(), (2_000..=2_009).collect::<Vec<_>>());
        assert!(store.series("gw", "nope", 0, i64::MAX, 100).unwrap().is_empty());
    }
}
