//! Human-readable durations and sizes for config files: `"250ms"`, `"15s"`, `"64MiB"`.
//!
//! Config files are a user interface: a bare `250` could mean anything, so a unit is required
//! for durations, and sizes accept `B`, `KiB`, `MiB`, `GiB` (and `KB`, `MB`, `GB` as powers of 1000).

use core::{fmt, time::Duration};
use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration written with a unit: `ns`, `us`, `ms`, `s`, `m`, `h` (e.g. `"250ms"`, `"1.5s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

/// A size in bytes written with a unit (e.g. `"64MiB"`); a bare integer means bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// Why a duration or size string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("expected a number followed by a unit")]
    NoNumber,
    #[error("unknown unit; use {0}")]
    UnknownUnit(&'static str),
    #[error("value is too large")]
    Overflow,
}

const DURATION_UNITS: &str = "ns, us, ms, s, m or h (e.g. \"250ms\")";
const SIZE_UNITS: &str = "B, KiB, MiB, GiB, KB, MB or GB (e.g. \"64MiB\")";

fn split_number(s: &str) -> Result<(f64, &str), UnitError> {
    let s = s.trim();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let value: f64 = num.parse().map_err(|_| UnitError::NoNumber)?;
    Ok((value, unit.trim()))
}

impl core::str::FromStr for HumanDuration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let (value, unit) = split_number(s)?;
        let nanos_per = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" | "min" => 60e9,
            "h" => 3600e9,
            _ => return Err(UnitError::UnknownUnit(DURATION_UNITS)),
        };
        let nanos = value * nanos_per;
        if !(0.0..1.8e19).contains(&nanos) {
            return Err(UnitError::Overflow);
        }
        Ok(HumanDuration(Duration::from_nanos(nanos as u64)))
    }
}

impl core::str::FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let (value, unit) = split_number(s)?;
        let per = match unit {
            "" | "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            _ => return Err(UnitError::UnknownUnit(SIZE_UNITS)),
        };
        let bytes = value * per;
        if !(0.0..1.8e19).contains(&bytes) {
            return Err(UnitError::Overflow);
        }
        Ok(ByteSize(bytes as u64))
    }
}

struct UnitVisitor<T>(&'static str, core::marker::PhantomData<T>);

impl<T: core::str::FromStr<Err = UnitError>> Visitor<'_> for UnitVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(|e| E::custom(format_args!("invalid value {v:?}: {e}")))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(UnitVisitor("a duration with a unit, e.g. \"250ms\"", core::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                UnitVisitor::<ByteSize>("", core::marker::PhantomData).visit_str(v)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_engineers_write() {
        assert_eq!("250ms".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_millis(250))));
        assert_eq!("1.5s".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_millis(1500))));
        assert_eq!("2m".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_secs(120))));
        assert_eq!("100us".parse::<HumanDuration>(), Ok(HumanDuration(Duration::from_micros(100))));
        assert_eq!("64MiB".parse::<ByteSize>(), Ok(ByteSize(64 << 20)));
        assert_eq!("1GB".parse::<ByteSize>(), Ok(ByteSize(1_000_000_000)));
        assert_eq!("512".parse::<ByteSize>(), Ok(ByteSize(512)));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert_eq!("250".parse::<HumanDuration>(), Err(UnitError::UnknownUnit(DURATION_UNITS)));
        assert_eq!("fast".parse::<HumanDuration>(), Err(UnitError::NoNumber));
        assert_eq!("3 parsecs".parse::<ByteSize>(), Err(UnitError::UnknownUnit(SIZE_UNITS)));
        assert_eq!("1e30".parse::<ByteSize>(), Err(UnitError::UnknownUnit(SIZE_UNITS)));
    }
}
