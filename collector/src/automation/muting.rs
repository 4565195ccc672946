//! What mutes an alert: label matchers, silences (a person's "not now" for matching alerts)
//! and inhibit rules (a firing alert muting its consequences). The alert book (`alerts.rs`)
//! applies them; the semantics follow Alertmanager's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a [`Matcher`] compares a label's value. A missing label compares as the empty string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchOp {
    #[default]
    Equal,
    NotEqual,
    /// `*` matches any run of characters (also none); everything else matches itself.
    Glob,
    NotGlob,
}

/// One condition on one label, as used by silences and inhibit rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub label: String,
    pub value: String,
    /// `equal` when left out.
    #[serde(default)]
    pub op: MatchOp,
}

impl Matcher {
    pub fn equal(label: &str, value: &str) -> Self {
        Self { label: label.to_owned(), value: value.to_owned(), op: MatchOp::Equal }
    }

    pub fn not_equal(label: &str, value: &str) -> Self {
        Self { label: label.to_owned(), value: value.to_owned(), op: MatchOp::NotEqual }
    }

    pub fn glob(label: &str, pattern: &str) -> Self {
        Self { label: label.to_owned(), value: pattern.to_owned(), op: MatchOp::Glob }
    }

    /// Whether `labels` satisfy this matcher.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        // Alertmanager's convention: an absent label is the empty string, so `machine=""` finds
        // alerts without a machine and `machine!="x"` includes them.
        let value = labels.get(&self.label).map_or("", String::as_str);
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Glob => glob_match(&self.value, value),
            MatchOp::NotGlob => !glob_match(&self.value, value),
        }
    }
}

/// Whether `labels` satisfy every matcher (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// `*`-only glob, iterative with one backtrack point, so no pattern can make it exponential.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match (p.get(pi), t.get(ti)) {
            (Some('*'), _) => {
                star = Some((pi, ti));
                pi += 1;
            }
            (Some(pc), Some(tc)) if pc == tc => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last star swallow one more character and retry from there.
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    pi = sp + 1;
                    ti = st + 1;
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

/// While a firing alert matches `source`, alerts matching `target` with the same values of the
/// `equal` labels are muted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

/// A request to mute matching alerts for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Silence {
    pub matchers: Vec<Matcher>,
    pub starts_ns: i64,
    pub ends_ns: i64,
    pub created_by: String,
    pub comment: String,
}

impl Silence {
    pub fn is_active(&self, now_ns: i64) -> bool {
        self.starts_ns <= now_ns && now_ns < self.ends_ns
    }

    pub fn state(&self, now_ns: i64) -> SilenceState {
        if now_ns < self.starts_ns {
            SilenceState::Pending
        } else if now_ns < self.ends_ns {
            SilenceState::Active
        } else {
            SilenceState::Expired
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SilenceState {
    /// Starts in the future.
    Pending,
    Active,
    Expired,
}

/// A silence as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceView {
    pub id: String,
    pub state: SilenceState,
    pub silence: Silence,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_only() {
        assert!(glob_match("*a*b", "xxaxxb"));
        assert!(glob_match("a*", "a"));
        assert!(!glob_match("a*c", "abcb"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn silence_from_api_json_is_strict() {
        let json = r#"{"matchers":[{"label":"machine","value":"press-3"}],"starts_ns":0,"ends_ns":10,
            "created_by":"maria","comment":"bearing swap"}"#;
        let silence: Silence = serde_json::from_str(json).unwrap();
        assert_eq!(silence.matchers[0].op, MatchOp::Equal);
        let typo = json.replace("comment", "coment");
        assert!(serde_json::from_str::<Silence>(&typo).unwrap_err().to_string().contains("unknown field `coment`"));
    }
}
