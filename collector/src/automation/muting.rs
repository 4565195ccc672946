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

/// Labels every alert carries, never empty (the book adds `rule` to each alert).
pub const ALWAYS_SET: [&str; 1] = ["rule"];

impl Matcher {
    /// Whether this matcher matches every alert there could be: every value its label can take,
    /// which for a label in [`ALWAYS_SET`] is any non-empty string, and for any other label also
    /// the empty string (absent). A silence made only of such matchers mutes everything.
    pub fn matches_every_alert(&self) -> bool {
        let always_set = ALWAYS_SET.contains(&self.label.as_str());
        // `*`-only globs: one matches every string iff it is all stars (at least one); it matches
        // none of the non-empty strings iff it is empty (it then matches only "").
        let all_stars = !self.value.is_empty() && self.value.chars().all(|c| c == '*');
        match self.op {
            // A label can always take some other value.
            MatchOp::Equal => false,
            MatchOp::NotEqual => always_set && self.value.is_empty(),
            MatchOp::Glob => all_stars,
            MatchOp::NotGlob => always_set && self.value.is_empty(),
        }
    }

    /// `rule not_equal ""`, for messages.
    pub fn describe(&self) -> String {
        let op = match self.op {
            MatchOp::Equal => "equal",
            MatchOp::NotEqual => "not_equal",
            MatchOp::Glob => "glob",
            MatchOp::NotGlob => "not_glob",
        };
        format!("{} {op} {:?}", self.label, self.value)
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

    /// Each operator against a label every alert has and one it may lack, cross-checked against
    /// what the matcher does on sample values (the empty string standing for absent).
    #[test]
    fn matches_every_alert_is_exact_for_every_operator() {
        let values = ["", "x", "press-3", "*", "overtemp", "zz-other"];
        let cases: &[(&str, MatchOp, &str, bool)] = &[
            ("rule", MatchOp::Equal, "", false),
            ("rule", MatchOp::Equal, "overtemp", false),
            ("rule", MatchOp::NotEqual, "", true),
            ("rule", MatchOp::NotEqual, "overtemp", false),
            ("rule", MatchOp::Glob, "*", true),
            ("rule", MatchOp::Glob, "**", true),
            ("rule", MatchOp::Glob, "", false),
            ("rule", MatchOp::Glob, "*x*", false),
            ("rule", MatchOp::NotGlob, "", true),
            ("rule", MatchOp::NotGlob, "*", false),
            ("rule", MatchOp::NotGlob, "over*", false),
            ("machine", MatchOp::Equal, "", false),
            ("machine", MatchOp::NotEqual, "", false),
            ("machine", MatchOp::NotEqual, "x", false),
            ("machine", MatchOp::Glob, "*", true),
            ("machine", MatchOp::Glob, "", false),
            ("machine", MatchOp::NotGlob, "", false),
            ("machine", MatchOp::NotGlob, "x*", false),
        ];
        for &(label, op, value, expected) in cases {
            let m = Matcher { label: label.into(), value: value.into(), op };
            assert_eq!(m.matches_every_alert(), expected, "{}", m.describe());
            let sample = |v: &str| {
                let mut labels = BTreeMap::new();
                if !v.is_empty() {
                    labels.insert(label.to_owned(), v.to_owned());
                }
                m.matches(&labels)
            };
            let possible = values.iter().filter(|v| !(ALWAYS_SET.contains(&label) && v.is_empty()));
            assert_eq!(possible.clone().all(|v| sample(v)), expected, "samples disagree for {}", m.describe());
        }
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
