//! What every channel renders alike: titles and summaries, per-alert lines, predictions, numbers
//! and times, the generic JSON and webhook templates.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};

use crate::model::{Alert, AlertState, GroupStatus, Notification, Prediction, Severity};

/// The generic JSON's `version` field; bump it when a field changes meaning or disappears.
pub const GENERIC_JSON_VERSION: u32 = 1;

/// The generic JSON: the notification as the model serialises it, plus `"version": 1`.
pub fn generic_json(n: &Notification) -> Value {
    let mut value = serde_json::to_value(n).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("version".to_string(), json!(GENERIC_JSON_VERSION));
    }
    value
}

/// A realistic notification (one firing alert with a prediction) for previews and config checks.
pub fn example_notification() -> Notification {
    let created_ns = 1_760_000_000_000_000_000;
    let hour = 3_600_000_000_000;
    let labels: BTreeMap<String, String> = [
        ("agent", "gw-hall2"),
        ("sensor", "press3_de_velocity"),
        ("site", "plant-a"),
        ("machine", "press-3"),
        ("rule", "bearing_zone_d"),
        ("kind", "trend"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Notification {
        id: "bearing_zone_d/plant-a/press-3#1".to_string(),
        group_key: "bearing_zone_d/plant-a/press-3".to_string(),
        status: GroupStatus::Firing,
        group_labels: labels
            .iter()
            .filter(|(k, _)| ["rule", "site", "machine"].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        alerts: vec![Alert {
            fingerprint: "9f2c41d07a".to_string(),
            rule: "bearing_zone_d".to_string(),
            severity: Severity::Warning,
            state: AlertState::Firing,
            labels,
            summary: "press-3 drive-end bearing reaches zone D in about 30 h (20–45 h)".to_string(),
            value: Some(3.9),
            limit: Some(4.5),
            prediction: Some(Prediction {
                limit: 4.5,
                eta_ns: created_ns + 30 * hour,
                low_ns: created_ns + 20 * hour,
                high_ns: created_ns + 45 * hour,
                from_ns: created_ns,
                value_now: 3.9,
                rate_per_hour: 0.02,
            }),
            started_ns: created_ns - hour,
            ended_ns: None,
            acked_by: None,
            acked_ns: None,
            dashboard_url: Some("https://edgeloop.example/machines/press-3".to_string()),
        }],
        receivers: Vec::new(),
        created_ns,
    }
}

pub(super) const TEMPLATE_PLACEHOLDERS: &[&str] =
    &["status", "group_key", "summary", "count", "alerts_text", "dashboard_url", "title", "json"];

/// Fills `{{name}}` placeholders; `Err(name)` for an unknown one. An unclosed `{{` stays literal.
pub(super) fn render_template(template: &str, json_body: bool, n: &Notification) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some((before, after)) = rest.split_once("{{") {
        out.push_str(before);
        let Some((name, tail)) = after.split_once("}}") else {
            out.push_str("{{");
            rest = after;
            break;
        };
        let name = name.trim();
        let value = match name {
            "status" => status_word(n.status).to_string(),
            "group_key" => n.group_key.clone(),
            "summary" => summary_line(n),
            "count" => n.alerts.len().to_string(),
            "alerts_text" => n.alerts.iter().map(|a| alert_line(a, n.created_ns)).collect::<Vec<_>>().join("\n"),
            "dashboard_url" => first_dashboard_url(n).unwrap_or_default().to_string(),
            "title" => title(n),
            "json" => generic_json(n).to_string(),
            _ => return Err(name.to_string()),
        };
        // `{{json}}` is a JSON value already; escaping it would only make `"data": {{json}}` invalid.
        if json_body && name != "json" {
            json_escape_into(&mut out, &value);
        } else {
            out.push_str(&value);
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn is_json_content_type(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || mime.ends_with("+json")
}

/// JSON string escaping without the surrounding quotes.
fn json_escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

pub(super) fn status_word(status: GroupStatus) -> &'static str {
    match status {
        GroupStatus::Firing => "firing",
        GroupStatus::Resolved => "resolved",
    }
}

/// A label's value when the group has it or every alert shares it.
pub(super) fn common_label<'a>(n: &'a Notification, key: &str) -> Option<&'a str> {
    if let Some(v) = n.group_labels.get(key) {
        return Some(v);
    }
    let mut values = n.alerts.iter().map(|a| a.labels.get(key));
    let first = values.next().flatten()?;
    values.all(|v| v == Some(first)).then_some(first.as_str())
}

pub(super) fn rule_name(n: &Notification) -> String {
    if let Some(rule) = common_label(n, "rule") {
        return rule.to_string();
    }
    let rules: BTreeSet<&str> = n.alerts.iter().map(|a| a.rule.as_str()).collect();
    match rules.len() {
        0 => "alerts".to_string(),
        1 => rules.into_iter().next().unwrap_or_default().to_string(),
        k => format!("{k} rules"),
    }
}

/// "<site>/<machine>", or the parts the alerts share, or the agent.
pub(super) fn place(n: &Notification) -> String {
    let parts: Vec<&str> = ["site", "machine"].iter().filter_map(|k| common_label(n, k)).collect();
    if !parts.is_empty() {
        return parts.join("/");
    }
    match common_label(n, "agent") {
        Some(agent) => agent.to_string(),
        None if n.alerts.len() > 1 => "several machines".to_string(),
        None => "unknown machine".to_string(),
    }
}

/// "[FIRING:3] <rule> on <place>" or "[RESOLVED] <rule> on <place>" (Alertmanager's convention).
pub(super) fn title(n: &Notification) -> String {
    let status = match n.status {
        GroupStatus::Firing => {
            let firing = n.alerts.iter().filter(|a| a.state == AlertState::Firing).count();
            format!("[FIRING:{}]", if firing == 0 { n.alerts.len() } else { firing })
        }
        GroupStatus::Resolved => "[RESOLVED]".to_string(),
    };
    format!("{status} {} on {}", rule_name(n), place(n))
}

pub(super) fn summary_line(n: &Notification) -> String {
    match n.alerts.as_slice() {
        [only] => only.summary.clone(),
        alerts => format!("{} alerts: {} on {}", alerts.len(), rule_name(n), place(n)),
    }
}

pub(super) fn first_dashboard_url(n: &Notification) -> Option<&str> {
    n.alerts.iter().find_map(|a| a.dashboard_url.as_deref())
}

pub(super) fn machine_of(a: &Alert) -> &str {
    a.labels.get("machine").or_else(|| a.labels.get("agent")).map_or("unknown machine", String::as_str)
}

pub(super) fn value_text(a: &Alert) -> Option<String> {
    match (a.value, a.limit) {
        (Some(v), Some(l)) => Some(format!("value {} (limit {})", fmt_num(v), fmt_num(l))),
        (Some(v), None) => Some(format!("value {}", fmt_num(v))),
        (None, Some(l)) => Some(format!("limit {}", fmt_num(l))),
        (None, None) => None,
    }
}

/// "press-3/drive_end: value 3.9 (limit 4.5); reaches 4.5 at … (in about 30 h, 20–45 h)".
pub(super) fn alert_line(a: &Alert, now_ns: i64) -> String {
    let mut line = machine_of(a).to_string();
    if let Some(sensor) = a.labels.get("sensor") {
        line.push('/');
        line.push_str(sensor);
    }
    let details: Vec<String> =
        [value_text(a), a.prediction.map(|p| prediction_text(&p, now_ns))].into_iter().flatten().collect();
    line.push_str(": ");
    line.push_str(&if details.is_empty() { a.summary.clone() } else { details.join("; ") });
    if a.state == AlertState::Resolved {
        line.push_str(" (resolved)");
    }
    line
}

/// "reaches 4.5 at 2025-10-15 14:00 UTC (in about 30 h, 20–45 h)". Relative to the newest reading
/// the forecast was made from (never the clock at sending, so a retried body is identical to the
/// first attempt's).
pub(super) fn prediction_text(p: &Prediction, _created_ns: i64) -> String {
    let now_ns = p.from_ns;
    let at = human_time(p.eta_ns);
    let hours = |ns: i64| ns.saturating_sub(now_ns) as f64 / 3.6e12;
    let (eta, low, high) = (hours(p.eta_ns), hours(p.low_ns).max(0.0), hours(p.high_ns).max(0.0));
    if eta <= 0.0 {
        return format!("reached {} at about {at}", fmt_num(p.limit));
    }
    let (per_unit, unit) = if eta < 2.0 {
        (1.0 / 60.0, "min")
    } else if eta < 72.0 {
        (1.0, "h")
    } else {
        (24.0, "d")
    };
    format!(
        "reaches {} at {at} (in about {:.0} {unit}, {:.0}–{:.0} {unit})",
        fmt_num(p.limit),
        eta / per_unit,
        low / per_unit,
        high / per_unit
    )
}

/// At most three decimals, trailing zeros dropped: 4.5, 3.917, 120.
pub(super) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".to_string() } else { s.to_string() }
}

/// Cuts `s` to at most `max` characters, marking the cut with "…".
pub(super) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Cuts `s` to at most `max` bytes on a char boundary.
pub(super) fn truncate_bytes(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// "critical", "warning" or "info", as PagerDuty and the e-mail body spell severities.
pub(super) fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

const RFC3339_SECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
const HUMAN: &[BorrowedFormatItem<'_>] = format_description!("[year]-[month]-[day] [hour]:[minute] UTC");

/// `ns` since the epoch in UTC, to the second (a fraction would only make retried bodies differ
/// from the first attempt's in a way nobody reads).
fn utc(ns: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(ns.div_euclid(1_000_000_000)).ok()
}

/// "2025-10-15T14:00:00Z"
pub(super) fn rfc3339(ns: i64) -> String {
    utc(ns).and_then(|t| t.format(RFC3339_SECONDS).ok()).unwrap_or_else(|| ns.to_string())
}

/// "2025-10-15 14:00 UTC"
pub(super) fn human_time(ns: i64) -> String {
    utc(ns).and_then(|t| t.format(HUMAN).ok()).unwrap_or_else(|| ns.to_string())
}

pub(super) fn check_template(template: &str, content_type: &str, problems: &mut Vec<String>) {
    let json_body = is_json_content_type(content_type);
    match render_template(template, json_body, &example_notification()) {
        Err(name) => problems.push(format!(
            "template uses unknown placeholder {{{{{name}}}}}; known: {}",
            TEMPLATE_PLACEHOLDERS.join(", ")
        )),
        Ok(body) if json_body => {
            if let Err(e) = serde_json::from_str::<Value>(&body) {
                problems.push(format!(
                    "template does not produce valid JSON ({e}); put placeholders inside strings \
                     (\"{{{{summary}}}}\") or set content_type"
                ));
            }
        }
        Ok(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{ChannelConfig, Rendered, render, validate};

    #[test]
    fn custom_template_substitutes_and_escapes() {
        let template = concat!(
            r#"{"text": "{{ summary }}", "status": "{{status}}", "n": {{count}}, "lines": "{{alerts_text}}", "#,
            r#""key": "{{group_key}}", "link": "{{dashboard_url}}", "raw": {{json}}}"#
        );
        let config: ChannelConfig =
            serde_json::from_value(json!({"kind": "webhook", "url": "http://x/", "template": template})).unwrap();
        assert!(validate(&BTreeMap::from([("t".to_string(), config.clone())])).is_empty());
        let mut n = example_notification();
        n.alerts[0].summary = "bearing \"DE\" \\ over\nlimit\t!".to_string();
        let Rendered::Http { content_type, body } = render(&config, &n).unwrap() else { panic!() };
        assert_eq!(content_type, "application/json");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["text"], n.alerts[0].summary.as_str());
        assert_eq!(body["status"], "firing");
        assert_eq!(body["n"], 1);
        assert_eq!(body["key"], n.group_key.as_str());
        assert_eq!(body["link"], "https://edgeloop.example/machines/press-3");
        assert_eq!(
            body["lines"],
            concat!(
                "press-3/press3_de_velocity: value 3.9 (limit 4.5); ",
                "reaches 4.5 at 2025-10-10 14:53 UTC (in about 30 h, 20–45 h)"
            )
        );
        assert_eq!(body["raw"]["version"], 1);
        assert_eq!(body["raw"]["alerts"][0]["summary"], n.alerts[0].summary.as_str());

        // A text body is not escaped.
        let text: ChannelConfig = serde_json::from_value(
            json!({"kind": "webhook", "url": "http://x/", "template": "{{status}}: {{summary}}",
                "content_type": "text/plain"}),
        )
        .unwrap();
        let Rendered::Http { body, .. } = render(&text, &n).unwrap() else { panic!() };
        assert_eq!(String::from_utf8(body).unwrap(), format!("firing: {}", n.alerts[0].summary));
    }

    #[test]
    fn times() {
        let ns = 1_760_000_000 * 1_000_000_000;
        assert_eq!(rfc3339(ns), "2025-10-09T08:53:20Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 * 1_000_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(human_time(ns), "2025-10-09 08:53 UTC");
        assert_eq!(fmt_num(4.5), "4.5");
        assert_eq!(fmt_num(120.0), "120");
        assert_eq!(fmt_num(3.91749), "3.917");
    }
}
