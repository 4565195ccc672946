//! The first stage every observation passes: time and health.
//!
//! * A reading keeps its device timestamp when the device has a clock within `max_clock_skew` of
//!   the gateway's; otherwise it gets the gateway's receive time and the sensor is flagged once
//!   with a `ClockSkew` event (a device clock that is far off is never silently trusted).
//! * Every observation updates the sensor's health; silence past `stale_after` becomes a
//!   `SensorStale` event, and the next value a `SensorRecovered` event.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use edgeloop_shared::{
    clock::now_ns,
    model::{Event, EventKind, Reading, Severity},
};
use tokio::sync::mpsc;

use crate::{
    pipeline::{Observation, ObservationKind, Record},
    sources::health::{HealthTracker, Seen, SensorHealth},
};

/// Staleness and clock policy of one source.
#[derive(Debug, Clone, Copy)]
pub struct SourcePolicy {
    pub stale_after: Duration,
    pub max_clock_skew: Duration,
}

/// The normalise stage's state, separate from its task so it can be driven with explicit time.
pub struct Normaliser {
    policies: Vec<SourcePolicy>,
    health: HealthTracker,
    skewed: HashSet<String>,
    /// Last gateway-assigned timestamp per sensor: frames read in one chunk share a receive time,
    /// and the database identifies a point by sensor and timestamp, so they must not collide.
    last_gateway_ts: HashMap<String, i64>,
}

impl Normaliser {
    pub fn new(policies: Vec<SourcePolicy>) -> Self {
        Self { policies, health: HealthTracker::default(), skewed: HashSet::new(), last_gateway_ts: HashMap::new() }
    }

    fn policy(&self, source: u16) -> SourcePolicy {
        self.policies
            .get(source as usize)
            .copied()
            .unwrap_or(SourcePolicy { stale_after: Duration::from_secs(5), max_clock_skew: Duration::from_secs(300) })
    }

    /// The gateway's time for a reading of `sensor`, strictly after the previous one.
    fn gateway_ts(&mut self, sensor: &str, received_ns: i64) -> i64 {
        match self.last_gateway_ts.get_mut(sensor) {
            Some(last) => {
                *last = received_ns.max(*last + 1);
                *last
            }
            None => {
                self.last_gateway_ts.insert(sensor.to_owned(), received_ns);
                received_ns
            }
        }
    }

    pub fn expect(&mut self, sensor: &str, source: u16, now: Instant) {
        let p = self.policy(source);
        self.health.expect(sensor, p.stale_after, now);
    }

    /// Turns one observation into the records to pass on (a reading and/or events).
    pub fn observe(&mut self, obs: Observation, now: Instant, out: &mut Vec<Record>) {
        let policy = self.policy(obs.source);
        match obs.kind {
            ObservationKind::Value { value, device_ts_ns, received_ns } => {
                let ts_ns = match device_ts_ns {
                    None => self.gateway_ts(&obs.sensor, received_ns),
                    Some(device) => {
                        let skew_ns = device.saturating_sub(received_ns);
                        if skew_ns.unsigned_abs() as u128 <= policy.max_clock_skew.as_nanos() {
                            if self.skewed.remove(&obs.sensor) {
                                tracing::info!(sensor = %obs.sensor, "device clock back within bounds");
                            }
                            device
                        } else {
                            if self.skewed.insert(obs.sensor.clone()) {
                                let skew_ms = skew_ns / 1_000_000;
                                tracing::warn!(sensor = %obs.sensor, skew_ms, "device clock far off; using the gateway's time");
                                out.push(Record::Event(Event {
                                    ts_ns: received_ns,
                                    kind: EventKind::ClockSkew { skew_ms },
                                    severity: Severity::Warning,
                                    subject: obs.sensor.clone(),
                                    message: format!(
                                        "{}: device clock is {skew_ms} ms off the gateway's (allowed {} ms); readings use the gateway's time",
                                        obs.sensor,
                                        policy.max_clock_skew.as_millis()
                                    ),
                                    values: vec![("skew_ms".into(), skew_ms as f64)],
                                }));
                            }
                            self.gateway_ts(&obs.sensor, received_ns)
                        }
                    }
                };
                if let Some(e) = self.health.observe(&obs.sensor, policy.stale_after, Seen::Value, now, received_ns) {
                    out.push(Record::Event(e));
                }
                out.push(Record::Reading(Reading { sensor: obs.sensor, ts_ns, value }));
            }
            ObservationKind::Alive => {
                if let Some(e) = self.health.observe(&obs.sensor, policy.stale_after, Seen::Alive, now, now_ns()) {
                    out.push(Record::Event(e));
                }
            }
            ObservationKind::Error => {
                self.health.observe(&obs.sensor, policy.stale_after, Seen::Error, now, now_ns());
            }
        }
    }

    /// Stale sensors since the last call.
    pub fn check(&mut self, now: Instant, out: &mut Vec<Record>) {
        out.extend(self.health.check(now, now_ns()).into_iter().map(Record::Event));
    }

    pub fn health(&self, now: Instant) -> Vec<SensorHealth> {
        self.health.snapshot(now)
    }

    /// How often staleness must be checked to catch the tightest limit promptly.
    pub fn tick(&self) -> Duration {
        let tightest = self.policies.iter().map(|p| p.stale_after).min().unwrap_or(Duration::from_secs(1));
        (tightest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Runs the stage until every source has stopped (its input closes) or the output is gone.
pub async fn run(
    mut normaliser: Normaliser,
    mut input: mpsc::Receiver<Observation>,
    out: mpsc::Sender<Record>,
    health_view: Arc<Mutex<Vec<SensorHealth>>>,
) {
    let mut tick = tokio::time::interval(normaliser.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_view = Instant::now();
    let mut batch = Vec::with_capacity(1024);
    let mut records = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            n = input.recv_many(&mut batch, 1024) => {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for obs in batch.drain(..) {
                    normaliser.observe(obs, now, &mut records);
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                normaliser.check(now, &mut records);
                if now.duration_since(last_view) >= Duration::from_millis(250) {
                    last_view = now;
                    if let Ok(mut view) = health_view.lock() {
                        *view = normaliser.health(now);
                    }
                }
            }
        }
        for r in records.drain(..) {
            if out.send(r).await.is_err() {
                return;
            }
        }
    }
    if let Ok(mut view) = health_view.lock() {
        *view = normaliser.health(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(sensor: &str, device_ts_ns: Option<i64>, received_ns: i64) -> Observation {
        Observation {
            source: 0,
            sensor: sensor.into(),
            kind: ObservationKind::Value { value: 1.0, device_ts_ns, received_ns },
        }
    }

    #[test]
    fn device_time_is_kept_within_bounds_and_replaced_once_flagged_outside() {
        let mut n = Normaliser::new(vec![SourcePolicy {
            stale_after: Duration::from_secs(1),
            max_clock_skew: Duration::from_secs(60),
        }]);
        let now = Instant::now();
        let recv = 1_700_000_000_000_000_000;
        let mut out = Vec::new();
        n.observe(value("t", Some(recv - 59_000_000_000), recv), now, &mut out);
        assert_eq!(
            out,
            vec![Record::Reading(Reading { sensor: "t".into(), ts_ns: recv - 59_000_000_000, value: 1.0 })]
        );

        out.clear();
        let an_hour = 3_600_000_000_000;
        n.observe(value("t", Some(recv + an_hour), recv), now, &mut out);
        n.observe(value("t", Some(recv + an_hour), recv + 1), now, &mut out);
        let Record::Event(e) = &out[0] else { panic!("first the flag: {out:?}") };
        assert_eq!(e.kind, EventKind::ClockSkew { skew_ms: 3_600_000 });
        assert_eq!(out[1], Record::Reading(Reading { sensor: "t".into(), ts_ns: recv, value: 1.0 }));
        assert_eq!(
            out[2],
            Record::Reading(Reading { sensor: "t".into(), ts_ns: recv + 1, value: 1.0 }),
            "flagged once"
        );
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn readings_received_together_get_distinct_gateway_timestamps() {
        let mut n = Normaliser::new(vec![SourcePolicy {
            stale_after: Duration::from_secs(1),
            max_clock_skew: Duration::from_secs(60),
        }]);
        let mut out = Vec::new();
        for _ in 0..3 {
            n.observe(value("a", None, 1_000), Instant::now(), &mut out);
        }
        n.observe(value("b", None, 1_000), Instant::now(), &mut out);
        let ts: Vec<(String, i64)> = out
            .into_iter()
            .filter_map(|r| match r {
                Record::Reading(r) => Some((r.sensor, r.ts_ns)),
                Record::Event(_) => None,
            })
            .collect();
        assert_eq!(ts, [("a".into(), 1_000), ("a".into(), 1_001), ("a".into(), 1_002), ("b".into(), 1_000)]);
    }

    #[test]
    fn tick_follows_the_tightest_staleness_limit() {
        let p = |ms| SourcePolicy { stale_after: Duration::from_millis(ms), max_clock_skew: Duration::MAX };
        assert_eq!(Normaliser::new(vec![p(2000), p(200)]).tick(), Duration::from_millis(50));
        assert_eq!(Normaliser::new(vec![p(20)]).tick(), Duration::from_millis(10));
    }
}
