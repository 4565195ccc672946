//! Recordings of what the rules saw, for `edgeloop-agent rules test --replay`: JSON Lines, one
//! record a line, in the order the rules stage received them.
//!
//! ```text
//! {"ts_ns":1700000000000000000,"sensor":"press-4.temperature","value":91.2}
//! {"ts_ns":1700000000500000000,"stale":"press-4.vibration"}
//! {"ts_ns":1700000002000000000,"recovered":"press-4.vibration"}
//! ```
//!
//! `ts_ns` is nanoseconds since the Unix epoch (UTC): the reading's own timestamp, or the time of
//! the health event. JSON has no NaN or infinity, so such values are written as the strings
//! `"NaN"`, `"inf"` and `"-inf"`. Blank lines are ignored. Only readings and sensor health
//! events are recorded: the rules' own events are what a replay recomputes.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
};

use edgeloop_shared::model::{EventKind, Record};
use serde::{Deserialize, Serialize, Serializer};

/// One line of a recording.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordedItem {
    Reading {
        ts_ns: i64,
        sensor: String,
        value: f64,
    },
    /// The sensor went silent for longer than its source allows.
    Stale {
        ts_ns: i64,
        sensor: String,
    },
    /// A stale sensor reports again.
    Recovered {
        ts_ns: i64,
        sensor: String,
    },
}

impl RecordedItem {
    pub fn ts_ns(&self) -> i64 {
        match self {
            RecordedItem::Reading { ts_ns, .. }
            | RecordedItem::Stale { ts_ns, .. }
            | RecordedItem::Recovered { ts_ns, .. } => *ts_ns,
        }
    }

    pub fn sensor(&self) -> &str {
        match self {
            RecordedItem::Reading { sensor, .. }
            | RecordedItem::Stale { sensor, .. }
            | RecordedItem::Recovered { sensor, .. } => sensor,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot open recording {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read recording {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}, line {line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
    #[error("recording {path}: max_bytes {max_bytes} is too small; use at least {min} bytes", min = Recorder::MIN_BYTES)]
    TooSmall { path: PathBuf, max_bytes: u64 },
    #[error("cannot move the previous recording {path} aside")]
    Rotate { path: PathBuf, source: io::Error },
}

/// A value as written: a JSON number, or a string for what JSON cannot hold.
struct Value(f64);

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }
}

#[derive(Serialize)]
struct ReadingLine<'a> {
    ts_ns: i64,
    sensor: &'a str,
    value: Value,
}

#[derive(Serialize)]
struct StaleLine<'a> {
    ts_ns: i64,
    stale: &'a str,
}

#[derive(Serialize)]
struct RecoveredLine<'a> {
    ts_ns: i64,
    recovered: &'a str,
}

/// Writes `record` as one line (with its `\n`): readings, `SensorStale` and `SensorRecovered`
/// events. Other events (the rules' own trips, dropped readings, clock skew) are skipped: a replay
/// recomputes the rules' events, and the others do not reach the engine.
///
/// # Errors
/// Only those of `out`.
pub fn write_record(out: &mut impl Write, record: &Record) -> io::Result<()> {
    let written = match record {
        Record::Reading(r) => {
            serde_json::to_writer(&mut *out, &ReadingLine { ts_ns: r.ts_ns, sensor: &r.sensor, value: Value(r.value) })
        }
        Record::Event(e) => match e.kind {
            EventKind::SensorStale => {
                serde_json::to_writer(&mut *out, &StaleLine { ts_ns: e.ts_ns, stale: &e.subject })
            }
            EventKind::SensorRecovered => {
                serde_json::to_writer(&mut *out, &RecoveredLine { ts_ns: e.ts_ns, recovered: &e.subject })
            }
            _ => return Ok(()),
        },
    };
    written.map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// A line as parsed, before its shape is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    ts_ns: i64,
    sensor: Option<String>,
    value: Option<serde_json::Value>,
    stale: Option<String>,
    recovered: Option<String>,
}

const SHAPES: &str = "a line is a reading {\"ts_ns\", \"sensor\", \"value\"} or a health event \
                      {\"ts_ns\", \"stale\"} or {\"ts_ns\", \"recovered\"}";

/// Parses one line of a recording; `Ok(None)` for a blank line.
///
/// # Errors
/// What is wrong with the line, without its number.
pub fn parse_line(text: &str) -> Result<Option<RecordedItem>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let line: Line = serde_json::from_str(text).map_err(|e| {
        // The position inside a single line: the column is what helps, its line is always 1.
        let full = e.to_string();
        let message = full.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).unwrap_or(&full);
        format!("column {}: {message}", e.column())
    })?;
    let Line { ts_ns, sensor, value, stale, recovered } = line;
    let item = match (sensor, value, stale, recovered) {
        (Some(sensor), Some(value), None, None) => RecordedItem::Reading {
            ts_ns,
            value: number(&value).map_err(|m| format!("sensor {sensor:?}: {m}"))?,
            sensor,
        },
        (None, None, Some(sensor), None) => RecordedItem::Stale { ts_ns, sensor },
        (None, None, None, Some(sensor)) => RecordedItem::Recovered { ts_ns, sensor },
        (Some(_), None, None, None) => return Err(format!("a reading needs a \"value\"; {SHAPES}")),
        (None, Some(_), None, None) => return Err(format!("a reading needs a \"sensor\"; {SHAPES}")),
        (None, None, None, None) => return Err(format!("only a \"ts_ns\"; {SHAPES}")),
        _ => return Err(format!("mixes the fields of different kinds of line; {SHAPES}")),
    };
    if let Err(e) = edgeloop_shared::id::validate(item.sensor()) {
        return Err(format!("sensor {:?}: {e}", item.sensor()));
    }
    Ok(Some(item))
}

fn number(value: &serde_json::Value) -> Result<f64, String> {
    match value {
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        serde_json::Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            _ => Err(format!("value {s:?} is not a number (only \"NaN\", \"inf\" and \"-inf\" may be strings)")),
        },
        other => Err(format!("value {other} is not a number")),
    }
}

/// Reads a recording line by line. Stops after the first error.
pub struct RecordingReader<R> {
    input: R,
    path: PathBuf,
    line: usize,
    buf: Vec<u8>,
    done: bool,
}

impl<R: BufRead> RecordingReader<R> {
    /// `path` names the input in errors.
    pub fn new(input: R, path: &Path) -> Self {
        RecordingReader { input, path: path.into(), line: 0, buf: Vec::new(), done: false }
    }

    fn error(&mut self, message: String) -> Option<Result<RecordedItem, RecordError>> {
        self.done = true;
        Some(Err(RecordError::Line { path: self.path.clone(), line: self.line, message }))
    }
}

impl<R: BufRead> Iterator for RecordingReader<R> {
    type Item = Result<RecordedItem, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    self.line += 1;
                    let Ok(text) = std::str::from_utf8(&self.buf) else {
                        return self.error("not UTF-8 text".into());
                    };
                    match parse_line(text) {
                        Ok(Some(item)) => return Some(Ok(item)),
                        Ok(None) => {}
                        Err(message) => return self.error(message),
                    }
                }
                Err(source) => {
                    self.done = true;
                    return Some(Err(RecordError::Read { path: self.path.clone(), source }));
                }
            }
        }
        None
    }
}

/// Reads a whole recording file.
///
/// # Errors
/// When the file cannot be read, or at its first bad line (named by number).
pub fn read_recording(path: &Path) -> Result<Vec<RecordedItem>, RecordError> {
    let file = File::open(path).map_err(|source| RecordError::Open { path: path.into(), source })?;
    RecordingReader::new(BufReader::new(file), path).collect()
}

/// Records what the rules stage sees into a bounded pair of files.
///
/// It **rotates**: the current file `PATH` and the one before it, `PATH.1`, each hold at most
/// `max_bytes / 2`, so the recording never takes more than `max_bytes` of disk and always holds
/// the most recent records (what led up to a trip). Lines are never split across files; replay
/// `PATH.1` then `PATH` (`cat PATH.1 PATH`) for the longest history. A previous run's `PATH` is
/// moved to `PATH.1` at [`Recorder::create`], so a restart neither appends to nor destroys it.
///
/// Writes are buffered (64 KiB): call [`Recorder::flush`] to make the tail readable, e.g. on
/// the rules stage's tick; dropping the recorder flushes too. On a write error the recorder logs
/// it once and **stops** (the agent carries on without a recording).
pub struct Recorder {
    path: PathBuf,
    rotated: PathBuf,
    out: Option<BufWriter<File>>,
    /// Bytes in the current file, including those still buffered.
    written: u64,
    /// The limit of one file.
    half: u64,
    line: Vec<u8>,
}

impl Recorder {
    /// The smallest `max_bytes` accepted: room for many lines of the longest ids in each file.
    pub const MIN_BYTES: u64 = 16 * 1024;

    /// Opens `path` for a new recording, moving a previous one to `PATH.1`.
    ///
    /// # Errors
    /// When `max_bytes` is below [`Recorder::MIN_BYTES`] or the file cannot be created.
    pub fn create(path: &Path, max_bytes: u64) -> Result<Recorder, RecordError> {
        if max_bytes < Self::MIN_BYTES {
            return Err(RecordError::TooSmall { path: path.into(), max_bytes });
        }
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        let rotated = PathBuf::from(rotated);
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            std::fs::rename(path, &rotated).map_err(|source| RecordError::Rotate { path: path.into(), source })?;
        }
        let file = File::create(path).map_err(|source| RecordError::Open { path: path.into(), source })?;
        Ok(Recorder {
            path: path.into(),
            rotated,
            out: Some(BufWriter::with_capacity(64 * 1024, file)),
            written: 0,
            half: max_bytes / 2,
            line: Vec::with_capacity(256),
        })
    }

    /// Appends `record` (if it is a kind that is recorded), rotating first when the line would
    /// take the current file past its half of `max_bytes`.
    pub fn record(&mut self, record: &Record) {
        if self.out.is_none() {
            return;
        }
        self.line.clear();
        if write_record(&mut self.line, record).is_err() || self.line.is_empty() {
            return;
        }
        let len = self.line.len() as u64;
        if len > self.half {
            // Cannot happen with valid ids (a line is under 200 bytes); never break the bound for it.
            return;
        }
        if self.written + len > self.half
            && let Err(e) = self.rotate()
        {
            self.stop(&e, "cannot rotate the recording");
            return;
        }
        let result = match &mut self.out {
            Some(out) => out.write_all(&self.line),
            None => return,
        };
        match result {
            Ok(()) => self.written += len,
            Err(e) => self.stop(&e, "cannot write the recording"),
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        if let Some(Err(e)) = self.out.as_mut().map(Write::flush) {
            self.stop(&e, "cannot write the recording");
        }
    }

    /// Whether an error stopped the recording.
    pub fn is_stopped(&self) -> bool {
        self.out.is_none()
    }

    /// Where the records before the current file's are (`PATH.1`).
    pub fn rotated_path(&self) -> &Path {
        &self.rotated
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush()?;
        }
        std::fs::rename(&self.path, &self.rotated)?;
        self.out = Some(BufWriter::with_capacity(64 * 1024, File::create(&self.path)?));
        self.written = 0;
        Ok(())
    }

    fn stop(&mut self, error: &io::Error, message: &str) {
        tracing::error!(path = %self.path.display(), %error, "{message}; recording stopped");
        self.out = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeloop_shared::model::{Event, Reading, Severity};

    fn reading(sensor: &str, ts_ns: i64, value: f64) -> Record {
        Record::Reading(Reading { sensor: sensor.into(), ts_ns, value })
    }

    fn event(kind: EventKind, subject: &str, ts_ns: i64) -> Record {
        Record::Event(Event {
            ts_ns,
            kind,
            severity: Severity::Warning,
            subject: subject.into(),
            message: "m".into(),
            values: vec![],
        })
    }

    fn read(text: &str) -> Result<Vec<RecordedItem>, RecordError> {
        RecordingReader::new(text.as_bytes(), Path::new("rec.jsonl")).collect()
    }

    #[test]
    fn reads_readings_and_health_events() {
        let text = "{\"ts_ns\":1700000000000000000,\"sensor\":\"press-4.temperature\",\"value\":91.2}\n\
                    \n\
                    {\"ts_ns\":1700000000500000000,\"stale\":\"press-4.vibration\"}\n\
                    {\"recovered\":\"press-4.vibration\",\"ts_ns\":1700000002000000000}";
        assert_eq!(
            read(text).unwrap(),
            [
                RecordedItem::Reading {
                    ts_ns: 1_700_000_000_000_000_000,
                    sensor: "press-4.temperature".into(),
                    value: 91.2
                },
                RecordedItem::Stale { ts_ns: 1_700_000_000_500_000_000, sensor: "press-4.vibration".into() },
                RecordedItem::Recovered { ts_ns: 1_700_000_002_000_000_000, sensor: "press-4.vibration".into() },
            ]
        );
    }

    #[test]
    fn a_bad_json_line_is_named_by_number() {
        let text = "{\"ts_ns\":1,\"sensor\":\"a\",\"value\":1}\n\n{\"ts_ns\":2,\"sensor\":\"a\",\"value\":}\n";
        let err = read(text).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RecordError::Line { line: 3, .. }), "{msg}");
        assert!(msg.starts_with("rec.jsonl, line 3: column "), "{msg}");
        assert!(!msg.contains("line 1"), "the position inside the line must not read as a line number: {msg}");
    }

    #[test]
    fn an_unknown_shape_says_what_a_line_may_be() {
        for (text, wanted) in [
            ("{\"ts_ns\":1,\"sensor\":\"a\"}", "needs a \"value\""),
            ("{\"ts_ns\":1,\"sensor\":\"a\",\"value\":1,\"stale\":\"a\"}", "mixes"),
            ("{\"ts_ns\":1,\"temperature\":3}", "unknown field `temperature`"),
            ("{\"sensor\":\"a\",\"value\":1}", "missing field `ts_ns`"),
            ("{\"ts_ns\":1,\"sensor\":\"a\",\"value\":\"hot\"}", "\"hot\" is not a number"),
            ("{\"ts_ns\":1,\"sensor\":\"a b\",\"value\":1}", "\"a b\""),
            ("[1, 2]", "column"),
        ] {
            let msg = read(text).unwrap_err().to_string();
            assert!(msg.starts_with("rec.jsonl, line 1: ") && msg.contains(wanted), "{text}: {msg}");
        }
        let bytes: &[u8] = b"{\"ts_ns\":1,\"sensor\":\"a\",\"value\":1}\n\xff\xfe\n";
        let err = RecordingReader::new(bytes, Path::new("r")).collect::<Result<Vec<_>, _>>().unwrap_err();
        assert!(matches!(err, RecordError::Line { line: 2, .. }), "{err}");
    }

    #[test]
    fn write_then_read_round_trips_and_skips_other_events() {
        let records = [
            reading("press-4.temperature", 1_700_000_000_000_000_000, 91.2),
            reading("a", -5, 0.1 + 0.2),
            reading("a", 7, f64::INFINITY),
            reading("a", 8, f64::NEG_INFINITY),
            event(EventKind::SensorStale, "b", 9),
            event(EventKind::Trip, "spindle-overtemp", 10),
            event(EventKind::Dropped { readings: 3 }, "agent", 11),
            event(EventKind::SensorRecovered, "b", 12),
        ];
        let mut out = Vec::new();
        for r in &records {
            write_record(&mut out, r).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 6, "{text}");
        assert!(
            text.starts_with("{\"ts_ns\":1700000000000000000,\"sensor\":\"press-4.temperature\",\"value\":91.2}\n")
        );
        let back = read(&text).unwrap();
        assert_eq!(back[1], RecordedItem::Reading { ts_ns: -5, sensor: "a".into(), value: 0.1 + 0.2 });
        assert_eq!(back[2], RecordedItem::Reading { ts_ns: 7, sensor: "a".into(), value: f64::INFINITY });
        assert_eq!(back[4], RecordedItem::Stale { ts_ns: 9, sensor: "b".into() });
        assert_eq!(back[5], RecordedItem::Recovered { ts_ns: 12, sensor: "b".into() });

        let mut nan = Vec::new();
        write_record(&mut nan, &reading("a", 1, f64::NAN)).unwrap();
        let back = read(std::str::from_utf8(&nan).unwrap()).unwrap();
        assert!(matches!(back[..], [RecordedItem::Reading { value, .. }] if value.is_nan()));
    }

    #[test]
    fn the_recorder_round_trips_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let mut rec = Recorder::create(&path, 1 << 20).unwrap();
        rec.record(&reading("t", 1, 20.5));
        rec.record(&event(EventKind::Trip, "hot", 2));
        rec.record(&event(EventKind::SensorStale, "t", 3));
        rec.flush();
        let items = read_recording(&path).unwrap();
        assert_eq!(
            items,
            [
                RecordedItem::Reading { ts_ns: 1, sensor: "t".into(), value: 20.5 },
                RecordedItem::Stale { ts_ns: 3, sensor: "t".into() }
            ]
        );
        assert!(!rec.is_stopped());
    }

    #[test]
    fn the_recorder_stays_within_max_bytes_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let max = Recorder::MIN_BYTES;
        let mut rec = Recorder::create(&path, max).unwrap();
        let n = 5_000;
        for i in 0..n {
            rec.record(&reading("press-4.temperature", i, i as f64));
            if i % 97 == 0 {
                let on_disk = std::fs::metadata(&path).unwrap().len()
                    + std::fs::metadata(rec.rotated_path()).map_or(0, |m| m.len());
                assert!(on_disk <= max, "{on_disk} bytes on disk after {i} records");
            }
        }
        drop(rec);
        let current = std::fs::metadata(&path).unwrap().len();
        let rotated = std::fs::metadata(dir.path().join("rec.jsonl.1")).unwrap().len();
        assert!(current <= max / 2 && rotated <= max / 2 && rotated > max / 4, "{current} + {rotated}");
        // The two files together are an unbroken tail of what was recorded, ending with the newest.
        let older = read_recording(&dir.path().join("rec.jsonl.1")).unwrap();
        let newer = read_recording(&path).unwrap();
        let ts: Vec<i64> = older.iter().chain(&newer).map(RecordedItem::ts_ns).collect();
        assert_eq!(ts.last(), Some(&(n - 1)));
        assert!(ts.windows(2).all(|w| w[1] == w[0] + 1), "a gap or a split line at the rotation");

        assert!(matches!(Recorder::create(&path, Recorder::MIN_BYTES - 1), Err(RecordError::TooSmall { .. })));
    }

    #[test]
    fn a_new_recorder_keeps_the_previous_run_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let mut first = Recorder::create(&path, 1 << 20).unwrap();
        first.record(&reading("t", 1, 1.0));
        drop(first);
        let mut second = Recorder::create(&path, 1 << 20).unwrap();
        second.record(&reading("t", 2, 2.0));
        second.flush();
        assert_eq!(read_recording(&path).unwrap()[0].ts_ns(), 2);
        assert_eq!(read_recording(second.rotated_path()).unwrap()[0].ts_ns(), 1);
    }
}
