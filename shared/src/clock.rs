//! The one wall clock of the agent and the collector: nanoseconds since the Unix epoch, the unit
//! every reading, event and alert carries.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch; 0 if the system clock reads before 1970.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2020() {
        assert!(super::now_ns() > 1_577_836_800_000_000_000);
    }
}
