//! InfluxDB line protocol for batches.
//!
//! `readings,agent=<agent>,sensor=<sensor> value=<f64> <ts_ns>`: a point is identified by
//! measurement, tags and timestamp, so writing a batch twice leaves one copy of each point.
//! Events: `events,agent=..,subject=..,kind=..,severity=.. message="..",<value names>=.. <ts_ns>`.

use std::fmt::Write;

use edgeloop_shared::{batch::Batch, model::EventKind};

/// Appends the lines of `batch` to `out`.
pub fn encode_batch(out: &mut String, measurement: &str, events_measurement: &str, batch: &Batch) {
    for series in &batch.series {
        // The series key is the same for every point of the series: build it once.
        let start = out.len();
        escape(out, measurement, Kind::Measurement);
        out.push_str(",agent=");
        escape(out, &batch.agent, Kind::Tag);
        push_tags(out, &batch.tags);
        out.push_str(",sensor=");
        escape(out, &series.sensor, Kind::Tag);
        out.push_str(" value=");
        let key_end = out.len();
        for (i, p) in series.points.iter().enumerate() {
            if i > 0 {
                out.extend_from_within(start..key_end);
            }
            let _ = write!(out, "{:?} {}", p.value, p.ts_ns);
            out.push('\n');
        }
    }
    for e in &batch.events {
        escape(out, events_measurement, Kind::Measurement);
        out.push_str(",agent=");
        escape(out, &batch.agent, Kind::Tag);
        push_tags(out, &batch.tags);
        out.push_str(",subject=");
        escape(out, &e.subject, Kind::Tag);
        let _ = write!(out, ",kind={},severity={} message=\"", e.kind.name(), e.severity.name());
        escape(out, &e.message, Kind::StringField);
        out.push('"');
        match e.kind {
            EventKind::Dropped { readings } => {
                let _ = write!(out, ",dropped_readings={readings}i");
            }
            EventKind::ClockSkew { skew_ms } => {
                let _ = write!(out, ",skew_ms={skew_ms}i");
            }
            EventKind::Quarantined { batches } => {
                let _ = write!(out, ",quarantined_batches={batches}i");
            }
            _ => {}
        }
        // A value named like a field written above would make the database refuse the line.
        let reserved = ["message", "dropped_readings", "skew_ms", "quarantined_batches"];
        for (name, value) in &e.values {
            if value.is_finite() && !reserved.contains(&name.as_str()) {
                out.push(',');
                escape(out, name, Kind::Tag);
                let _ = write!(out, "={value:?}");
            }
        }
        let _ = writeln!(out, " {}", e.ts_ns);
    }
}

/// Appends one alert state change: `alerts,rule=..,state=..,severity=..[,agent=..][,sensor=..]
/// [,site=..][,machine=..] fingerprint="..",summary="..",value=..,limit=..,eta_ns=..i,low_ns=..i,
/// high_ns=..i <ts_ns>` (fields only when known).
pub fn encode_alert(out: &mut String, measurement: &str, a: &crate::model::Alert, ts_ns: i64) {
    escape(out, measurement, Kind::Measurement);
    out.push_str(",rule=");
    escape(out, &a.rule, Kind::Tag);
    let _ = write!(out, ",severity={},state={}", a.severity.name(), a.state.name());
    // Tags in key order (InfluxDB's preferred order; any order is accepted).
    for key in ["agent", "machine", "sensor", "site"] {
        if let Some(v) = a.labels.get(key).filter(|v| !v.is_empty()) {
            let _ = write!(out, ",{key}=");
            escape(out, v, Kind::Tag);
        }
    }
    out.push_str(" fingerprint=\"");
    escape(out, &a.fingerprint, Kind::StringField);
    out.push_str("\",summary=\"");
    escape(out, &a.summary, Kind::StringField);
    out.push('"');
    if let Some(v) = a.value.filter(|v| v.is_finite()) {
        let _ = write!(out, ",value={v:?}");
    }
    if let Some(v) = a.limit.filter(|v| v.is_finite()) {
        let _ = write!(out, ",limit={v:?}");
    }
    if let Some(p) = &a.prediction {
        let _ = write!(out, ",eta_ns={}i,low_ns={}i,high_ns={}i", p.eta_ns, p.low_ns, p.high_ns);
    }
    let _ = writeln!(out, " {ts_ns}");
}

/// What one line of [`encode_batch`] is about: the sensor of a reading, the subject of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOf<'a> {
    Reading { sensor: &'a str },
    Event { subject: &'a str },
}

impl LineOf<'_> {
    /// The sensor or the subject.
    pub fn name(&self) -> &str {
        match self {
            LineOf::Reading { sensor } => sensor,
            LineOf::Event { subject } => subject,
        }
    }
}

/// What each line [`encode_batch`] writes for `batch` is about, in the order it writes them (one
/// line per point, then one per event), so a line the database refuses is named from the batch
/// instead of being parsed back.
pub fn lines_of(batch: &Batch) -> impl Iterator<Item = LineOf<'_>> {
    let readings = batch.series.iter().flat_map(|s| s.points.iter().map(|_| LineOf::Reading { sensor: &s.sensor }));
    readings.chain(batch.events.iter().map(|e| LineOf::Event { subject: &e.subject }))
}

fn push_tags(out: &mut String, tags: &[(String, String)]) {
    for (k, v) in tags {
        out.push(',');
        escape(out, k, Kind::Tag);
        out.push('=');
        escape(out, v, Kind::Tag);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Measurement,
    /// Tag keys, tag values and field keys share one escaping rule.
    Tag,
    StringField,
}

fn escape(out: &mut String, s: &str, kind: Kind) {
    for c in s.chars() {
        let needs = match kind {
            Kind::Measurement => matches!(c, ',' | ' '),
            Kind::Tag => matches!(c, ',' | ' ' | '='),
            Kind::StringField => matches!(c, '"' | '\\'),
        };
        if needs {
            out.push('\\');
        }
        match c {
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeloop_shared::{
        batch::{Point, Series},
        model::{Event, Severity},
    };

    #[test]
    fn readings_and_events_become_lines() {
        let batch = Batch {
            agent: "gw-1".into(),
            buffer: Some(0),
            seq: 1,
            tags: vec![("site".into(), "plant-a".into())],
            series: vec![Series {
                sensor: "press-3.temp".into(),
                points: vec![Point { ts_ns: 1_700_000_000_000_000_001, value: 21.5 }, Point { ts_ns: 2, value: 3.0 }],
            }],
            events: vec![Event {
                ts_ns: 5,
                kind: EventKind::Dropped { readings: 12 },
                severity: Severity::Warning,
                subject: "buffer".into(),
                message: "full, \"oldest\" dropped".into(),
                values: vec![("fill ratio".into(), 1.0), ("nan".into(), f64::NAN)],
            }],
        };
        let mut out = String::new();
        encode_batch(&mut out, "readings", "events", &batch);
        assert_eq!(
            out,
            "readings,agent=gw-1,site=plant-a,sensor=press-3.temp value=21.5 1700000000000000001\n\
             readings,agent=gw-1,site=plant-a,sensor=press-3.temp value=3.0 2\n\
             events,agent=gw-1,site=plant-a,subject=buffer,kind=dropped,severity=warning message=\"full, \\\"oldest\\\" dropped\",dropped_readings=12i,fill\\ ratio=1.0 5\n"
        );
    }

    #[test]
    fn extreme_floats_stay_parseable() {
        let mut out = String::new();
        let batch = Batch {
            agent: "a".into(),
            buffer: Some(0),
            seq: 0,
            tags: vec![],
            series: vec![Series {
                sensor: "s".into(),
                points: vec![Point { ts_ns: 1, value: 1e300 }, Point { ts_ns: 2, value: -1e-300 }],
            }],
            events: vec![],
        };
        encode_batch(&mut out, "m", "e", &batch);
        assert_eq!(out, "m,agent=a,sensor=s value=1e300 1\nm,agent=a,sensor=s value=-1e-300 2\n");
    }

    #[test]
    fn each_line_is_named_by_its_sensor_or_subject() {
        let mut out = String::new();
        let batch = Batch {
            agent: "gw-1".into(),
            buffer: Some(0),
            seq: 0,
            tags: vec![("site".into(), "plant a".into())],
            series: vec![
                Series { sensor: "press-3.temp".into(), points: vec![Point { ts_ns: 1, value: 1.5 }; 2] },
                Series { sensor: "press 4".into(), points: vec![Point { ts_ns: 1, value: 2.5 }] },
            ],
            events: vec![Event {
                ts_ns: 5,
                kind: EventKind::Dropped { readings: 1 },
                severity: Severity::Warning,
                subject: "buffer".into(),
                message: "two\nlines".into(),
                values: vec![],
            }],
        };
        encode_batch(&mut out, "readings", "events", &batch);
        let named: Vec<LineOf> = lines_of(&batch).collect();
        assert_eq!(out.lines().count(), named.len(), "one name per line written");
        assert_eq!(
            named,
            [
                LineOf::Reading { sensor: "press-3.temp" },
                LineOf::Reading { sensor: "press-3.temp" },
                LineOf::Reading { sensor: "press 4" },
                LineOf::Event { subject: "buffer" },
            ]
        );
        assert_eq!(named[2].name(), "press 4");
    }
}
