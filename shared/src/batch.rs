//! The uplink batch: what an agent sends on `edgeloop/v1/{agent}/telemetry`.
//!
//! A batch is sealed when the agent writes it to its durable buffer and never changes afterwards:
//! `(agent, buffer, seq)` names the same points on every re-send, which is what lets the collector
//! skip a replay and lets InfluxDB overwrite a duplicate (a point is identified by agent, sensor and
//! timestamp). Readings are grouped per sensor, in the order they were taken.
//!
//! `buffer` is the random identity of the agent's buffer file, made when the file is created or
//! salvaged: a new buffer restarts its sequence numbers, and without it the collector would take
//! its batches for replays of the old one's.

use alloc::{
    string::{String, ToString},
    vec::Vec,
};
use serde::{Deserialize, Serialize};

// A series' points are the codec's unit; re-exported here, where a batch's users look for them.
pub use crate::codec::Point;
use crate::{
    codec,
    model::{
        Ack, AckStatus, Event, OLDEST_WIRE_VERSION, Reading, WIRE_VERSION, WireError, from_wire_borrowed, to_wire,
    },
};

/// The most points one batch may carry; a batch claiming more is refused before its points are
/// decoded, so a forged count cannot make the collector allocate without bound.
pub const MAX_BATCH_POINTS: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub agent: String,
    /// The identity of the buffer that sealed the batch; `None` from a version 2 agent, which
    /// had none (and is answered in its own layout, see [`Ack::encode`]). Batches made by hand
    /// (tests, tools) use `Some(0)`.
    pub buffer: Option<u64>,
    /// Sequence number within the buffer, strictly increasing over the buffer's life (it survives
    /// restarts; a new or salvaged buffer may start again at 0, under a new identity).
    pub seq: u64,
    /// Tags the agent puts on everything it sends (e.g. `site`, `line`), besides `agent` itself.
    pub tags: Vec<(String, String)>,
    pub series: Vec<Series>,
    pub events: Vec<Event>,
}

/// A batch as it travels: the same fields, each series' points as one [`codec`] column.
#[derive(Serialize, Deserialize)]
struct WireBatch<'a, E> {
    agent: &'a str,
    /// Always `Some` on the wire; `None` only once a version 2 batch is read.
    buffer: Option<u64>,
    seq: u64,
    #[serde(borrow)]
    tags: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    series: Vec<WireSeries<'a>>,
    events: E,
}

/// The version 2 layout: no buffer identity.
#[derive(Deserialize)]
struct WireBatchV2<'a> {
    agent: &'a str,
    seq: u64,
    #[serde(borrow)]
    tags: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    series: Vec<WireSeries<'a>>,
    events: Vec<Event>,
}

impl<'a> From<WireBatchV2<'a>> for WireBatch<'a, Vec<Event>> {
    fn from(w: WireBatchV2<'a>) -> Self {
        WireBatch { agent: w.agent, buffer: None, seq: w.seq, tags: w.tags, series: w.series, events: w.events }
    }
}

#[derive(Serialize, Deserialize)]
struct WireSeries<'a> {
    sensor: &'a str,
    points: &'a [u8],
}

/// The readings of one sensor, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub sensor: String,
    pub points: Vec<Point>,
}

impl Batch {
    /// Groups `readings` per sensor (keeping each sensor's order) into batch `seq`.
    pub fn from_readings<'a>(agent: &str, seq: u64, readings: impl IntoIterator<Item = &'a Reading>) -> Self {
        let mut series: Vec<Series> = Vec::new();
        for r in readings {
            let point = Point { ts_ns: r.ts_ns, value: r.value };
            // A gateway has tens of sensors, not thousands: a linear scan beats hashing here.
            match series.iter_mut().find(|s| s.sensor == r.sensor) {
                Some(s) => s.points.push(point),
                None => series.push(Series { sensor: r.sensor.clone(), points: alloc::vec![point] }),
            }
        }
        Batch { agent: agent.into(), buffer: Some(0), seq, tags: Vec::new(), series, events: Vec::new() }
    }

    /// The answer to this batch, naming its agent and buffer.
    pub fn ack(&self, status: AckStatus) -> Ack {
        Ack { agent: self.agent.clone(), buffer: self.buffer, seq: self.seq, status }
    }

    /// The buffer identity in encoded batch `bytes`, read without decoding the points (`None`
    /// when they are not a current-version batch).
    pub fn peek_buffer(bytes: &[u8]) -> Option<u64> {
        let (&version, body) = bytes.split_first()?;
        if version != WIRE_VERSION {
            return None;
        }
        postcard::take_from_bytes::<(&str, Option<u64>)>(body).ok().and_then(|((_, buffer), _)| buffer)
    }

    /// Number of readings in the batch.
    pub fn point_count(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }

    /// Serialises the batch behind the wire version byte, each series through the columnar
    /// [`codec`] (about 2.6 bytes a reading for a slowly varying sensor).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let columns: Vec<Vec<u8>> = self
            .series
            .iter()
            .map(|s| {
                let mut out = Vec::with_capacity(s.points.len() * 3 + 16);
                codec::encode_series(&s.points, &mut out);
                out
            })
            .collect();
        let wire = WireBatch {
            agent: &self.agent,
            buffer: Some(self.buffer.unwrap_or(0)),
            seq: self.seq,
            tags: self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            series: self
                .series
                .iter()
                .zip(&columns)
                .map(|(s, c)| WireSeries { sensor: &s.sensor, points: c })
                .collect(),
            events: &self.events,
        };
        to_wire(&wire)
    }

    /// Decodes and validates a batch: ids must be valid and values finite, so nothing that
    /// reaches the database can be malformed. A version 2 batch (from an agent not upgraded yet)
    /// is read too, with no buffer identity.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let wire: WireBatch<'_, Vec<Event>> = match bytes.first() {
            Some(&OLDEST_WIRE_VERSION) => from_wire_borrowed::<WireBatchV2<'_>>(bytes)?.into(),
            Some(&WIRE_VERSION) => from_wire_borrowed(bytes)?,
            Some(&found) => return Err(WireError::Version { found }),
            None => return Err(WireError::Empty),
        };
        let mut budget = MAX_BATCH_POINTS;
        let mut series = Vec::with_capacity(wire.series.len());
        for s in wire.series {
            let invalid = |reason: String| WireError::Invalid { what: alloc::format!("series {:?}", s.sensor), reason };
            let (points, used) = codec::decode_series_at_most(s.points, budget).map_err(|e| invalid(e.to_string()))?;
            if used != s.points.len() {
                return Err(invalid(alloc::format!("{} bytes after the series", s.points.len() - used)));
            }
            budget -= points.len();
            series.push(Series { sensor: s.sensor.into(), points });
        }
        let batch = Batch {
            agent: wire.agent.into(),
            buffer: wire.buffer,
            seq: wire.seq,
            tags: wire.tags.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            series,
            events: wire.events,
        };
        batch.validate()?;
        Ok(batch)
    }

    /// Checks ids and values; the error names the offending agent, sensor or event.
    pub fn validate(&self) -> Result<(), WireError> {
        let invalid = |what: String, reason: String| WireError::Invalid { what, reason };
        crate::id::validate(&self.agent)
            .map_err(|e| invalid(alloc::format!("agent id {:?}", self.agent), e.to_string()))?;
        for (k, v) in &self.tags {
            for (what, text) in [("key", k), ("value", v)] {
                crate::id::validate(text).map_err(|e| invalid(alloc::format!("tag {what} {text:?}"), e.to_string()))?;
            }
            if matches!(k.as_str(), "agent" | "sensor" | "subject" | "kind" | "severity") {
                return Err(invalid(alloc::format!("tag key {k:?}"), "is reserved by edgeloop".into()));
            }
        }
        for s in &self.series {
            crate::id::validate(&s.sensor)
                .map_err(|e| invalid(alloc::format!("sensor id {:?}", s.sensor), e.to_string()))?;
            if let Some(p) = s.points.iter().find(|p| !p.value.is_finite()) {
                return Err(invalid(
                    alloc::format!("value of sensor {:?} at {} ns", s.sensor, p.ts_ns),
                    alloc::format!("{} is not a finite number", p.value),
                ));
            }
        }
        for e in &self.events {
            crate::id::validate(&e.subject)
                .map_err(|err| invalid(alloc::format!("event subject {:?}", e.subject), err.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, Severity, WIRE_VERSION};

    fn readings() -> Vec<Reading> {
        (0..10)
            .map(|i| Reading {
                sensor: if i % 2 == 0 { "temp".into() } else { "vib".into() },
                ts_ns: 1_000 + i,
                value: i as f64,
            })
            .collect()
    }

    #[test]
    fn groups_per_sensor_in_order_and_round_trips() {
        let mut b = Batch::from_readings("gw-1", 5, &readings());
        b.events.push(Event {
            ts_ns: 1,
            kind: EventKind::Trip,
            severity: Severity::Trip,
            subject: "overtemp".into(),
            message: "temp 95.0 > 90.0".into(),
            values: vec![("temp".into(), 95.0)],
        });
        assert_eq!(b.series.len(), 2);
        assert_eq!(b.series[0].sensor, "temp");
        assert_eq!(b.series[0].points.iter().map(|p| p.ts_ns).collect::<Vec<_>>(), [1000, 1002, 1004, 1006, 1008]);
        assert_eq!(b.point_count(), 10);
        let bytes = b.encode().unwrap();
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(Batch::decode(&bytes), Ok(b));
    }

    #[test]
    fn a_slowly_varying_sensor_costs_about_three_bytes_a_reading_on_the_wire() {
        // 0.01 °C resolution, 1 s period: what the codec is for.
        let readings: Vec<Reading> = (0..1000)
            .map(|i| Reading {
                sensor: "temp".into(),
                ts_ns: 1_700_000_000_000_000_000 + i * 1_000_000_000,
                value: (2150.0 + ((i as f64) / 40.0).sin() * 30.0).round() / 100.0,
            })
            .collect();
        let batch = Batch::from_readings("gw-1", 9, &readings);
        let bytes = batch.encode().unwrap();
        assert!(bytes.len() <= 3 * readings.len(), "{} bytes for {} readings", bytes.len(), readings.len());
        assert_eq!(Batch::decode(&bytes), Ok(batch));
    }

    #[test]
    fn a_forged_point_count_is_refused_before_decoding() {
        let mut column = Vec::new();
        crate::codec::encode_series(&[Point { ts_ns: 1, value: 1.0 }], &mut column);
        column[0] = 0x7f; // claims 127 points: fine, but truncated
        let forged = |points: &[u8]| {
            to_wire(&WireBatch {
                agent: "gw-1",
                buffer: Some(5),
                seq: 1,
                tags: vec![],
                series: vec![WireSeries { sensor: "temp", points }],
                events: Vec::<Event>::new(),
            })
            .unwrap()
        };
        let err = Batch::decode(&forged(&column)).unwrap_err().to_string();
        assert!(err.contains("series \"temp\" is invalid"), "{err}");
        let mut huge = Vec::new();
        let mut n = (MAX_BATCH_POINTS as u64) + 1;
        while n >= 0x80 {
            huge.push((n as u8) | 0x80);
            n >>= 7;
        }
        huge.push(n as u8);
        let err = Batch::decode(&forged(&huge)).unwrap_err().to_string();
        assert!(err.contains("more than the 1048576 allowed"), "{err}");
    }

    #[test]
    fn a_version_2_batch_is_read_without_a_buffer_identity() {
        #[derive(Serialize)]
        struct V2<'a> {
            agent: &'a str,
            seq: u64,
            tags: Vec<(&'a str, &'a str)>,
            series: Vec<WireSeries<'a>>,
            events: Vec<Event>,
        }
        let mut column = Vec::new();
        crate::codec::encode_series(&[Point { ts_ns: 1, value: 2.0 }], &mut column);
        let v2 = V2 {
            agent: "gw-1",
            seq: 4,
            tags: vec![],
            series: vec![WireSeries { sensor: "temp", points: &column }],
            events: vec![],
        };
        let bytes = postcard::to_extend(&v2, vec![OLDEST_WIRE_VERSION]).unwrap();
        let b = Batch::decode(&bytes).unwrap();
        assert_eq!((b.agent.as_str(), b.buffer, b.seq, b.point_count()), ("gw-1", None, 4, 1));
        assert_eq!(Batch::peek_buffer(&bytes), None, "not a current batch");

        let mut current = Batch::from_readings("gw-1", 4, &readings());
        current.buffer = Some(0xfeed);
        let bytes = current.encode().unwrap();
        assert_eq!(Batch::peek_buffer(&bytes), Some(0xfeed));
        assert_eq!(Batch::decode(&bytes).unwrap().ack(AckStatus::Stored { points: 10 }).buffer, Some(0xfeed));
    }

    #[test]
    fn bad_batches_are_refused_with_the_culprit_named() {
        let mut b = Batch::from_readings("gw-1", 1, &readings());
        b.series[1].points[2].value = f64::NAN;
        let err = Batch::decode(&b.encode().unwrap()).unwrap_err().to_string();
        assert!(err.contains("\"vib\"") && err.contains("not a finite number"), "{err}");

        let b = Batch::from_readings("gw/1", 1, &readings());
        let err = Batch::decode(&b.encode().unwrap()).unwrap_err().to_string();
        assert!(err.contains("agent id \"gw/1\""), "{err}");

        let bytes = Batch::from_readings("gw-1", 1, &readings()).encode().unwrap();
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(Batch::decode(&padded), Err(WireError::Trailing(1)));
        for cut in 0..bytes.len() {
            assert!(Batch::decode(&bytes[..cut]).is_err(), "a batch cut at {cut} bytes must not decode");
        }
    }
}
