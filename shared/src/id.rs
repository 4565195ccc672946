//! Identifiers for agents and sensors.
//!
//! An id ends up as an MQTT topic level, an InfluxDB tag value and a config table key, so it is
//! restricted to characters that need no escaping in any of them.

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {len} bytes long, the limit is {MAX_ID_LEN}")]
    TooLong { len: usize },
    #[error("id contains {found:?} at byte {at}; use letters, digits, '-', '_' or '.'")]
    BadChar { found: char, at: usize },
}

/// Checks that `id` is a usable agent or sensor id: 1 to 64 bytes of `[A-Za-z0-9_.-]`.
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: id.len() });
    }
    match id.char_indices().find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        Some((at, found)) => Err(IdError::BadChar { found, at }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids_and_names_the_bad_character() {
        assert_eq!(validate("press-3.spindle_temp"), Ok(()));
        assert_eq!(validate(""), Err(IdError::Empty));
        assert_eq!(validate("a/b"), Err(IdError::BadChar { found: '/', at: 1 }));
        assert_eq!(validate("a+"), Err(IdError::BadChar { found: '+', at: 1 }));
        assert_eq!(validate(&"x".repeat(65)), Err(IdError::TooLong { len: 65 }));
    }
}
