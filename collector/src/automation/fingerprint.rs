//! The identity of an alert, and of the group it is notified in.
//!
//! An alert is identified by [`fingerprint`]: FNV-1a 64 over the rule name and then each label
//! name and value in name order (the `rule` label excluded, it repeats the rule), every string
//! followed by a 0xFF byte, printed as 16 lowercase hex digits. 0xFF never occurs in UTF-8, so two
//! different label sets cannot hash the same bytes by concatenation, and the value never changes
//! across versions or hosts. Labels are therefore identity: values that change (a reading) belong
//! in `value`, not in a label.

use std::collections::{BTreeMap, BTreeSet};

/// FNV-1a 64 of `rule` and `labels` (without a `rule` label), as 16 hex digits; see the module docs.
pub fn fingerprint(rule: &str, labels: &BTreeMap<String, String>) -> String {
    let mut hash = Fnv::new();
    hash.field(rule);
    for (name, value) in labels.iter().filter(|(name, _)| name.as_str() != "rule") {
        hash.field(name);
        hash.field(value);
    }
    format!("{:016x}", hash.0)
}

/// The group an alert belongs to: receivers (sorted, deduplicated) and the `group_by` labels, each
/// present one as name and value, an absent one as its name and a 0xFE byte.
pub fn group_key(receivers: &[String], group_by: &[String], labels: &BTreeMap<String, String>) -> String {
    let mut hash = Fnv::new();
    for receiver in receivers {
        hash.field(receiver);
    }
    hash.bytes(&[0xfe]);
    let names: BTreeSet<&String> = group_by.iter().collect();
    for name in names {
        hash.field(name);
        match labels.get(name) {
            Some(value) => hash.field(value),
            None => hash.bytes(&[0xfe]),
        }
    }
    format!("{:016x}", hash.0)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// A string and its terminator (0xFF, never in UTF-8), so fields cannot run into each other.
    fn field(&mut self, s: &str) {
        self.bytes(s.as_bytes());
        self.bytes(&[0xff]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_ignores_label_order_and_rule_label() {
        let a =
            fingerprint("overtemp", &[("agent", "gw-1"), ("sensor", "t1")].map(|(k, v)| (k.into(), v.into())).into());
        let b = fingerprint(
            "overtemp",
            &[("sensor", "t1"), ("rule", "x"), ("agent", "gw-1")].map(|(k, v)| (k.into(), v.into())).into(),
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        assert_ne!(a, fingerprint("overtemp", &[("agent", "gw-1t1")].map(|(k, v)| (k.into(), v.into())).into()));
        // FNV-1a 64 of the empty rule and no labels is the offset basis hashed with one 0xFF.
        assert_eq!(fingerprint("", &BTreeMap::new()), "af64724c8602eb6e");
    }
}
