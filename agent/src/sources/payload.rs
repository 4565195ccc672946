//! Turning an MQTT payload into values: a plain number, JSON with field paths (the shapes that
//! Tasmota, Shelly and zigbee2mqtt-style devices send, nested objects and several values in one
//! message included), or the shared binary reading.
//!
//! Never panics on any payload; every refusal says what was wrong.

use edgeloop_shared::model::{DeviceReading, from_wire};
use serde_json::Value;

use crate::config::{PayloadFormat, TopicMapping};

/// One value taken from a payload. `suffix` is the `fields` key it came from, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub suffix: Option<String>,
    pub value: f64,
    pub device_ts_ns: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not UTF-8 text")]
    NotText,
    #[error("payload {0:?} is not a number")]
    NotANumber(String),
    #[error("payload is not JSON: {0}")]
    Json(String),
    #[error("field {path:?} is missing")]
    Missing { path: String },
    #[error("field {path:?} is {found}, not a number")]
    NotNumeric { path: String, found: String },
    #[error("field {path:?} is not a usable timestamp: {reason}")]
    BadTimestamp { path: String, reason: String },
    #[error("binary reading does not decode: {0}")]
    Binary(String),
    #[error("value {0} is not finite")]
    NotFinite(f64),
}

/// A parsed field path: `ENERGY.Power`, `values[0]`, `a.b[2].c`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldPath {
    text: String,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

impl FieldPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut steps = Vec::new();
        for part in text.split('.') {
            let (key, mut rest) = match part.find('[') {
                Some(i) => part.split_at(i),
                None => (part, ""),
            };
            if key.is_empty() && steps.is_empty() && rest.is_empty() {
                return Err(format!("path {text:?} has an empty segment"));
            }
            if !key.is_empty() {
                steps.push(Step::Key(key.to_owned()));
            } else if rest.is_empty() {
                return Err(format!("path {text:?} has an empty segment"));
            }
            while let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']').ok_or_else(|| format!("path {text:?}: '[' without ']'"))?;
                let index =
                    r[..end].parse().map_err(|_| format!("path {text:?}: {:?} is not an array index", &r[..end]))?;
                steps.push(Step::Index(index));
                rest = &r[end + 1..];
            }
            if !rest.is_empty() {
                return Err(format!("path {text:?}: unexpected {rest:?} after an index"));
            }
        }
        Ok(Self { text: text.to_owned(), steps })
    }

    fn get<'a>(&self, mut v: &'a Value) -> Option<&'a Value> {
        for step in &self.steps {
            v = match step {
                Step::Key(k) => v.get(k)?,
                Step::Index(i) => v.get(i)?,
            };
        }
        Some(v)
    }
}

/// A topic mapping's payload rules, parsed once.
#[derive(Debug, Clone)]
pub struct PayloadMapper {
    format: PayloadFormat,
    value: Option<FieldPath>,
    fields: Vec<(String, FieldPath)>,
    timestamp: Option<FieldPath>,
}

impl PayloadMapper {
    pub fn new(t: &TopicMapping) -> Result<Self, String> {
        Ok(Self {
            format: t.format,
            value: t.value.as_deref().map(FieldPath::parse).transpose()?,
            fields: t
                .fields
                .iter()
                .map(|(k, p)| Ok((k.clone(), FieldPath::parse(p)?)))
                .collect::<Result<_, String>>()?,
            timestamp: t.timestamp.as_deref().map(FieldPath::parse).transpose()?,
        })
    }

    /// The values in `payload`, appended to `out`.
    pub fn extract(&self, payload: &[u8], out: &mut Vec<Extracted>) -> Result<(), PayloadError> {
        match self.format {
            PayloadFormat::Number => {
                let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotText)?;
                let value = parse_number(text.trim()).ok_or_else(|| PayloadError::NotANumber(shorten(text)))?;
                out.push(Extracted { suffix: None, value: finite(value)?, device_ts_ns: None });
            }
            PayloadFormat::Binary => {
                let r: DeviceReading = from_wire(payload).map_err(|e| PayloadError::Binary(e.to_string()))?;
                out.push(Extracted { suffix: None, value: finite(r.value)?, device_ts_ns: r.ts_ns });
            }
            PayloadFormat::Json => {
                let doc: Value = serde_json::from_slice(payload).map_err(|e| PayloadError::Json(e.to_string()))?;
                let device_ts_ns = self.timestamp.as_ref().map(|p| timestamp(&doc, p)).transpose()?;
                let start = out.len();
                let result = (|| {
                    if let Some(path) = &self.value {
                        out.push(Extracted { suffix: None, value: number(&doc, path)?, device_ts_ns });
                    }
                    for (suffix, path) in &self.fields {
                        out.push(Extracted { suffix: Some(suffix.clone()), value: number(&doc, path)?, device_ts_ns });
                    }
                    Ok(())
                })();
                if result.is_err() {
                    out.truncate(start); // all or nothing: a message is one observation
                }
                result?;
            }
        }
        Ok(())
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

fn finite(v: f64) -> Result<f64, PayloadError> {
    if v.is_finite() { Ok(v) } else { Err(PayloadError::NotFinite(v)) }
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "ON" | "on" | "true" | "TRUE" | "True" => Some(1.0),
        "OFF" | "off" | "false" | "FALSE" | "False" => Some(0.0),
        _ => s.parse().ok(),
    }
}

fn number(doc: &Value, path: &FieldPath) -> Result<f64, PayloadError> {
    let v = path.get(doc).ok_or_else(|| PayloadError::Missing { path: path.text.clone() })?;
    let value = match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => parse_number(s.trim()),
        _ => None,
    };
    let found = || match v {
        Value::Null => "null".to_string(),
        Value::Object(_) => "an object".to_string(),
        Value::Array(_) => "an array".to_string(),
        other => shorten(&other.to_string()),
    };
    finite(value.ok_or_else(|| PayloadError::NotNumeric { path: path.text.clone(), found: found() })?)
}

/// Epoch numbers by magnitude (s, ms, µs, ns) or RFC 3339 text (a zone-less time is UTC).
fn timestamp(doc: &Value, path: &FieldPath) -> Result<i64, PayloadError> {
    let bad = |reason: String| PayloadError::BadTimestamp { path: path.text.clone(), reason };
    let v = path.get(doc).ok_or_else(|| PayloadError::Missing { path: path.text.clone() })?;
    match v {
        Value::Number(n) => {
            let scale = |magnitude: f64| match magnitude {
                a if a < 1e11 => 1_000_000_000,
                a if a < 1e14 => 1_000_000,
                a if a < 1e17 => 1_000,
                _ => 1,
            };
            // Integers stay integers: f64 cannot hold a nanosecond timestamp exactly.
            if let Some(i) = n.as_i64() {
                return i
                    .checked_mul(scale(i.unsigned_abs() as f64))
                    .ok_or_else(|| bad(format!("{i} is out of range")));
            }
            let x = n.as_f64().ok_or_else(|| bad("not a number".into()))?;
            let ns = x * scale(x.abs()) as f64;
            if ns.is_finite() && ns.abs() < 9.2e18 { Ok(ns as i64) } else { Err(bad(format!("{x} is out of range"))) }
        }
        Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|e| bad(format!("{s:?}: {e}")))?;
            let d = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| bad(format!("{s:?} is before 1970")))?;
            i64::try_from(d.as_nanos()).map_err(|_| bad(format!("{s:?} is out of range")))
        }
        _ => Err(bad("neither a number nor text".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn mapper(
        format: PayloadFormat,
        value: Option<&str>,
        fields: &[(&str, &str)],
        timestamp: Option<&str>,
    ) -> PayloadMapper {
        PayloadMapper::new(&TopicMapping {
            filter: "x".into(),
            sensor: "x".into(),
            format,
            value: value.map(Into::into),
            fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            timestamp: timestamp.map(Into::into),
        })
        .unwrap()
    }

    fn extract(m: &PayloadMapper, payload: &[u8]) -> Result<Vec<Extracted>, PayloadError> {
        let mut out = Vec::new();
        m.extract(payload, &mut out).map(|_| out)
    }

    #[test]
    fn plain_numbers_and_switch_states() {
        let m = mapper(PayloadFormat::Number, None, &[], None);
        assert_eq!(extract(&m, b" 21.5\n").unwrap()[0].value, 21.5);
        assert_eq!(extract(&m, b"ON").unwrap()[0].value, 1.0);
        assert_eq!(extract(&m, b"warm"), Err(PayloadError::NotANumber("warm".into())));
        assert!(matches!(extract(&m, b"NaN"), Err(PayloadError::NotFinite(_))));
        assert_eq!(extract(&m, &[0xff, 0xfe]), Err(PayloadError::NotText));
    }

    #[test]
    fn tasmota_nested_object_with_local_time() {
        let m = mapper(PayloadFormat::Json, Some("ENERGY.Power"), &[], Some("Time"));
        let got =
            extract(&m, br#"{"Time":"2024-03-01T12:00:00","ENERGY":{"Total":12.3,"Power":45,"Voltage":231}}"#).unwrap();
        assert_eq!(got, vec![Extracted { suffix: None, value: 45.0, device_ts_ns: Some(1_709_294_400_000_000_000) }]);
    }

    #[test]
    fn zigbee2mqtt_several_values_in_one_message() {
        let m = mapper(
            PayloadFormat::Json,
            None,
            &[("temperature", "temperature"), ("humidity", "humidity"), ("battery", "battery")],
            None,
        );
        let got = extract(&m, br#"{"battery":97,"humidity":41.5,"linkquality":120,"temperature":"22.25"}"#).unwrap();
        let v: Vec<(Option<&str>, f64)> = got.iter().map(|e| (e.suffix.as_deref(), e.value)).collect();
        assert_eq!(v, [(Some("battery"), 97.0), (Some("humidity"), 41.5), (Some("temperature"), 22.25)]);
    }

    #[test]
    fn arrays_epoch_timestamps_and_errors_that_name_the_field() {
        let m = mapper(PayloadFormat::Json, Some("values[1].v"), &[], Some("ts"));
        let got = extract(&m, br#"{"ts":1700000000123,"values":[{"v":1},{"v":2.5}]}"#).unwrap();
        assert_eq!((got[0].value, got[0].device_ts_ns), (2.5, Some(1_700_000_000_123_000_000)));
        assert_eq!(extract(&m, br#"{"ts":1,"values":[]}"#), Err(PayloadError::Missing { path: "values[1].v".into() }));
        assert_eq!(
            extract(&m, br#"{"ts":1,"values":[0,{"v":null}]}"#),
            Err(PayloadError::NotNumeric { path: "values[1].v".into(), found: "null".into() })
        );
        assert!(matches!(
            extract(&m, br#"{"ts":"yesterday","values":[0,{"v":1}]}"#),
            Err(PayloadError::BadTimestamp { .. })
        ));
        assert!(matches!(extract(&m, b"{\"ts\": 1, "), Err(PayloadError::Json(_))));
    }

    #[test]
    fn all_or_nothing_when_one_field_is_missing() {
        let m = mapper(PayloadFormat::Json, None, &[("a", "a"), ("b", "b")], None);
        assert_eq!(extract(&m, br#"{"a":1}"#), Err(PayloadError::Missing { path: "b".into() }));
    }

    #[test]
    fn binary_device_reading() {
        let m = mapper(PayloadFormat::Binary, None, &[], None);
        let bytes = edgeloop_shared::model::to_wire(&DeviceReading { ts_ns: Some(5), value: 1.25 }).unwrap();
        assert_eq!(extract(&m, &bytes).unwrap(), vec![Extracted { suffix: None, value: 1.25, device_ts_ns: Some(5) }]);
        assert!(matches!(extract(&m, &bytes[..3]), Err(PayloadError::Binary(_))));
    }

    #[test]
    fn path_syntax_errors_are_clear() {
        assert!(FieldPath::parse("a..b").unwrap_err().contains("empty segment"));
        assert!(FieldPath::parse("a[x]").unwrap_err().contains("not an array index"));
        assert!(FieldPath::parse("a[1").unwrap_err().contains("without ']'"));
        assert_eq!(FieldPath::parse("[0].v").unwrap().steps, vec![Step::Index(0), Step::Key("v".into())]);
    }

    proptest::proptest! {
        /// Whatever bytes arrive, the mapper answers with values or an error, never a panic.
        #[test]
        fn never_panics_on_any_payload(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            for m in [
                mapper(PayloadFormat::Json, Some("a.b[0]"), &[], Some("t")),
                mapper(PayloadFormat::Json, None, &[("x", "x"), ("y", "y[2]")], None),
                mapper(PayloadFormat::Number, None, &[], None),
                mapper(PayloadFormat::Binary, None, &[], None),
            ] {
                let mut out = Vec::new();
                let _ = m.extract(&payload, &mut out);
            }
        }

        /// JSON-shaped input (random keys and values) exercises the path walk more than raw bytes.
        #[test]
        fn never_panics_on_json_shapes(key in "[a-z]{1,3}", n in proptest::num::f64::ANY, s in ".{0,12}") {
            let doc = serde_json::json!({ key.clone(): { "b": [n, s.clone()] }, "t": s, "a": { "b": [n] } });
            let m = mapper(PayloadFormat::Json, Some("a.b[0]"), &[(key.as_str(), &format!("{key}.b[1]"))], Some("t"));
            let mut out = Vec::new();
            let _ = m.extract(doc.to_string().as_bytes(), &mut out);
        }
    }
}
