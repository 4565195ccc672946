//! Sensor health: when each sensor was last heard from, how fast it reports, how often it sends
//! garbage, and whether it has gone **stale** (silent for longer than its source allows).
//!
//! Pure state, driven with explicit instants so its boundaries are testable without sleeping.
//! Stale and recovered are returned as [`Event`]s: they travel through the buffer and uplink like
//! readings, and the rules can trip on them.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use edgeloop_shared::model::{Event, EventKind, Severity};

/// A sensor's health, as shown in status output and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorHealth {
    pub sensor: String,
    /// Time since the last good value or sign of life (`None`: never heard from).
    pub silent_for: Option<Duration>,
    pub readings: u64,
    pub errors: u64,
    /// Readings per second (exponentially weighted).
    pub rate_hz: f64,
    pub stale: bool,
}

#[derive(Debug)]
struct Entry {
    sensor: String,
    stale_after: Duration,
    /// Last good value or sign of life; the registration time for a sensor never heard from.
    last: Instant,
    heard: bool,
    readings: u64,
    errors: u64,
    rate_hz: f64,
    stale: bool,
}

/// What an observation was, for health purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Value,
    Alive,
    Error,
}

#[derive(Debug, Default)]
pub struct HealthTracker {
    index: HashMap<String, usize>,
    entries: Vec<Entry>,
}

impl HealthTracker {
    /// Declares a sensor that should report (e.g. a configured serial channel): it goes stale if
    /// it never does.
    pub fn expect(&mut self, sensor: &str, stale_after: Duration, now: Instant) {
        self.entry(sensor, stale_after, now);
    }

    fn entry(&mut self, sensor: &str, stale_after: Duration, now: Instant) -> &mut Entry {
        let i = match self.index.get(sensor) {
            Some(&i) => i,
            None => {
                self.entries.push(Entry {
                    sensor: sensor.to_owned(),
                    stale_after,
                    last: now,
                    heard: false,
                    readings: 0,
                    errors: 0,
                    rate_hz: 0.0,
                    stale: false,
                });
                self.index.insert(sensor.to_owned(), self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        &mut self.entries[i]
    }

    /// Records an observation; returns a `SensorRecovered` event when a stale sensor is back.
    pub fn observe(
        &mut self,
        sensor: &str,
        stale_after: Duration,
        seen: Seen,
        now: Instant,
        wall_ns: i64,
    ) -> Option<Event> {
        let e = self.entry(sensor, stale_after, now);
        if seen == Seen::Error {
            e.errors += 1;
            return None;
        }
        if seen == Seen::Value {
            if e.heard && e.readings > 0 {
                let dt = now.saturating_duration_since(e.last).as_secs_f64();
                if dt > 0.0 {
                    let inst = 1.0 / dt;
                    e.rate_hz = if e.rate_hz == 0.0 { inst } else { 0.9 * e.rate_hz + 0.1 * inst };
                }
            }
            e.readings += 1;
        }
        let silent = now.saturating_duration_since(e.last);
        e.last = now;
        e.heard = true;
        if !e.stale {
            return None;
        }
        e.stale = false;
        Some(Event {
            ts_ns: wall_ns,
            kind: EventKind::SensorRecovered,
            severity: Severity::Info,
            subject: e.sensor.clone(),
            message: format!("{} reports again after {} ms of silence", e.sensor, silent.as_millis()),
            values: vec![("silent_ms".into(), silent.as_millis() as f64)],
        })
    }

    /// Sensors that became stale since the last check, as `SensorStale` events.
    pub fn check(&mut self, now: Instant, wall_ns: i64) -> Vec<Event> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            let silent = now.saturating_duration_since(e.last);
            if !e.stale && silent > e.stale_after {
                e.stale = true;
                let what = if e.heard { "no reading" } else { "never reported" };
                out.push(Event {
                    ts_ns: wall_ns,
                    kind: EventKind::SensorStale,
                    severity: Severity::Warning,
                    subject: e.sensor.clone(),
                    message: format!(
                        "{}: {what} for {} ms (allowed {} ms)",
                        e.sensor,
                        silent.as_millis(),
                        e.stale_after.as_millis()
                    ),
                    values: vec![
                        ("silent_ms".into(), silent.as_millis() as f64),
                        ("stale_after_ms".into(), e.stale_after.as_millis() as f64),
                    ],
                });
            }
        }
        out
    }

    pub fn is_stale(&self, sensor: &str) -> Option<bool> {
        self.index.get(sensor).map(|&i| self.entries[i].stale)
    }

    pub fn snapshot(&self, now: Instant) -> Vec<SensorHealth> {
        self.entries
            .iter()
            .map(|e| SensorHealth {
                sensor: e.sensor.clone(),
                silent_for: e.heard.then(|| now.saturating_duration_since(e.last)),
                readings: e.readings,
                errors: e.errors,
                rate_hz: e.rate_hz,
                stale: e.stale,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(500);

    #[test]
    fn stale_exactly_after_the_limit_and_recovered_on_the_next_value() {
        let t0 = Instant::now();
        let mut h = HealthTracker::default();
        assert_eq!(h.observe("temp", LIMIT, Seen::Value, t0, 1), None);
        assert!(h.check(t0 + LIMIT, 2).is_empty(), "silent for exactly the limit is not stale yet");
        let events = h.check(t0 + LIMIT + Duration::from_millis(1), 3);
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].kind.clone(), events[0].subject.as_str()), (EventKind::SensorStale, "temp"));
        assert!(h.check(t0 + LIMIT * 3, 4).is_empty(), "stale is reported once");
        assert_eq!(h.is_stale("temp"), Some(true));
        let back = h.observe("temp", LIMIT, Seen::Value, t0 + LIMIT * 4, 5).unwrap();
        assert_eq!(back.kind, EventKind::SensorRecovered);
        assert_eq!(h.is_stale("temp"), Some(false));
    }

    #[test]
    fn garbage_does_not_keep_a_sensor_alive_but_a_heartbeat_does() {
        let t0 = Instant::now();
        let mut h = HealthTracker::default();
        h.expect("node", LIMIT, t0);
        h.expect("temp", LIMIT, t0);
        for i in 1..=10 {
            let t = t0 + Duration::from_millis(100 * i);
            h.observe("temp", LIMIT, Seen::Error, t, 0);
            h.observe("node", LIMIT, Seen::Alive, t, 0);
        }
        let stale: Vec<String> = h.check(t0 + Duration::from_millis(1001), 0).into_iter().map(|e| e.subject).collect();
        assert_eq!(stale, ["temp"], "a sensor that only sends garbage and never reported is stale");
        let snap = h.snapshot(t0 + Duration::from_millis(1001));
        let temp = snap.iter().find(|s| s.sensor == "temp").unwrap();
        assert_eq!((temp.errors, temp.readings, temp.silent_for), (10, 0, None));
    }

    #[test]
    fn rate_follows_the_reading_interval() {
        let t0 = Instant::now();
        let mut h = HealthTracker::default();
        for i in 0..200 {
            h.observe("vib", LIMIT, Seen::Value, t0 + Duration::from_millis(10 * i), 0);
        }
        let rate = h.snapshot(t0 + Duration::from_secs(2))[0].rate_hz;
        assert!((rate - 100.0).abs() < 1.0, "{rate}");
    }
}
