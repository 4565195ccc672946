//! What the collector has just stored, kept in memory for the dashboard and the API: a recent
//! window per series (bounded in points), the latest value per sensor, the latest events, and a
//! broadcast of every stored batch for live views (SSE). Longer ranges come from the database.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use edgeloop_shared::{
    batch::Batch,
    model::{Event, EventKind},
};
use serde::Serialize;
use tokio::sync::broadcast;

/// One event as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub agent: String,
    pub ts_ns: i64,
    pub kind: String,
    pub severity: String,
    pub subject: String,
    pub message: String,
}

impl EventRecord {
    fn of(agent: &str, e: &Event) -> Self {
        Self {
            agent: agent.into(),
            ts_ns: e.ts_ns,
            kind: e.kind.name().into(),
            severity: e.severity.name().into(),
            subject: e.subject.clone(),
            message: e.message.clone(),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// (agent, sensor) → points, oldest first, at least `spacing` apart.
    series: HashMap<(String, String), VecDeque<(i64, f64)>>,
    /// agent → sensor → the latest reading (every reading, not only the kept ones). By agent, so
    /// one agent's sensors are read without walking the whole fleet's.
    latest: HashMap<String, BTreeMap<String, (i64, f64)>>,
    events: VecDeque<EventRecord>,
    /// agent → the rule-set version its last `rules_loaded` event named.
    rules_versions: BTreeMap<String, u64>,
    /// agent → its `site` tag.
    sites: BTreeMap<String, String>,
}

pub struct Live {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Batch>>,
    window_ns: i64,
    spacing_ns: i64,
}

/// Events kept for the API.
const EVENTS_KEPT: usize = 2000;

impl Live {
    /// Keeps `window` of every series, at most `max_points` points each.
    pub fn new(window: Duration, max_points: usize) -> Self {
        let window_ns = window.as_nanos().min(i64::MAX as u128) as i64;
        let (tx, _) = broadcast::channel(1024);
        Self { inner: Mutex::default(), tx, window_ns, spacing_ns: window_ns / max_points.max(1) as i64 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a stored batch.
    pub fn on_batch(&self, batch: &Arc<Batch>) {
        {
            let mut inner = self.lock();
            if let Some((_, site)) = batch.tags.iter().find(|(k, _)| k == "site")
                && inner.sites.get(&batch.agent) != Some(site)
            {
                inner.sites.insert(batch.agent.clone(), site.clone());
            }
            for s in &batch.series {
                let key = (batch.agent.clone(), s.sensor.clone());
                if let Some(p) = s.points.last() {
                    let sensors = inner.latest.entry(batch.agent.clone()).or_default();
                    let latest = sensors.entry(s.sensor.clone()).or_insert((p.ts_ns, p.value));
                    if p.ts_ns >= latest.0 {
                        *latest = (p.ts_ns, p.value);
                    }
                }
                let ring = inner.series.entry(key).or_default();
                for p in &s.points {
                    match ring.back() {
                        // Too close to the last kept point: that one stands for both.
                        Some(&(ts, _)) if p.ts_ns >= ts && p.ts_ns - ts < self.spacing_ns => {}
                        Some(&(ts, _)) if p.ts_ns < ts => {} // out of order: the window is for charts
                        _ => ring.push_back((p.ts_ns, p.value)),
                    }
                }
                if let Some(&(newest, _)) = ring.back() {
                    while ring.front().is_some_and(|&(ts, _)| newest - ts > self.window_ns) {
                        ring.pop_front();
                    }
                }
            }
            for e in &batch.events {
                if let EventKind::RulesLoaded { version } = e.kind {
                    inner.rules_versions.insert(batch.agent.clone(), version);
                }
                inner.events.push_back(EventRecord::of(&batch.agent, e));
                if inner.events.len() > EVENTS_KEPT {
                    inner.events.pop_front();
                }
            }
        }
        // Nobody listening is fine.
        let _ = self.tx.send(batch.clone());
    }

    /// Every stored batch from now on (a slow listener skips ahead: `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.tx.subscribe()
    }

    /// The cached points of a series in `[since_ns, until_ns]`, when the cache reaches back to
    /// `since_ns` (`None`: ask the database).
    pub fn series(&self, agent: &str, sensor: &str, since_ns: i64, until_ns: i64) -> Option<Vec<(i64, f64)>> {
        let inner = self.lock();
        let ring = inner.series.get(&(agent.to_owned(), sensor.to_owned()))?;
        let oldest = ring.front()?.0;
        // Covered when the window reaches back far enough, or the series is younger than the window.
        let newest = ring.back()?.0;
        if since_ns < oldest && newest - oldest >= self.window_ns - self.spacing_ns {
            return None;
        }
        Some(ring.iter().copied().filter(|&(ts, _)| ts >= since_ns && ts <= until_ns).collect())
    }

    /// Each sensor's latest reading of `agent`: (sensor, ts_ns, value), by sensor name.
    pub fn latest(&self, agent: &str) -> Vec<(String, i64, f64)> {
        let inner = self.lock();
        inner
            .latest
            .get(agent)
            .map(|sensors| sensors.iter().map(|(s, &(ts, v))| (s.clone(), ts, v)).collect())
            .unwrap_or_default()
    }

    /// The latest events, newest first.
    pub fn events(&self, agent: Option<&str>, limit: usize) -> Vec<EventRecord> {
        let inner = self.lock();
        inner.events.iter().rev().filter(|e| agent.is_none_or(|a| e.agent == a)).take(limit).cloned().collect()
    }

    /// The `site` tag `agent` puts on its batches.
    pub fn site(&self, agent: &str) -> Option<String> {
        self.lock().sites.get(agent).cloned()
    }

    /// The rule-set version `agent` last reported.
    pub fn rules_version(&self, agent: &str) -> Option<u64> {
        self.lock().rules_versions.get(agent).copied()
    }
}

/// At most `max` points, keeping each bucket's extremes (a spike stays visible in a thumbnail).
pub fn downsample(points: &[(i64, f64)], max: usize) -> Vec<(i64, f64)> {
    if points.len() <= max || max < 4 {
        return points.iter().copied().take(max.max(points.len().min(max))).collect();
    }
    let buckets = max / 2;
    let per = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(max);
    for chunk in points.chunks(per) {
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p.1 < chunk[lo].1 {
                lo = i;
            }
            if p.1 > chunk[hi].1 {
                hi = i;
            }
        }
        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        out.push(chunk[a]);
        if b != a {
            out.push(chunk[b]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use edgeloop_shared::model::Reading;

    use super::*;

    #[test]
    fn the_window_is_bounded_in_time_and_points() {
        let live = Live::new(Duration::from_secs(10), 10);
        let readings: Vec<Reading> =
            (0..1000).map(|i| Reading { sensor: "t".into(), ts_ns: i * 100_000_000, value: i as f64 }).collect();
        live.on_batch(&Arc::new(Batch::from_readings("gw", 1, &readings)));
        let all = live.series("gw", "t", 90_000_000_000, i64::MAX).unwrap();
        assert!(all.len() <= 11, "{}", all.len());
        assert_eq!(live.latest("gw"), vec![("t".to_string(), 99_900_000_000, 999.0)]);
        assert!(live.series("gw", "t", 0, i64::MAX).is_none(), "older than the window: ask the database");
    }

    #[test]
    fn downsampling_keeps_a_spike() {
        let mut pts: Vec<(i64, f64)> = (0..10_000).map(|i| (i, 1.0)).collect();
        pts[5_000].1 = 99.0;
        let d = downsample(&pts, 100);
        assert!(d.len() <= 100);
        assert!(d.iter().any(|p| p.1 == 99.0));
    }
}
