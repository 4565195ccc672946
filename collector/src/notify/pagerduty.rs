//! PagerDuty Events API v2: a trigger per firing notification and a resolve with the same
//! `dedup_key` (the group key), so PagerDuty keeps one incident per group.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::PagerDutyConfig;
use super::render::{
    common_label, machine_of, prediction_text, rfc3339, rule_name, severity_word, summary_line, title, truncate_bytes,
    truncate_chars,
};
use crate::model::{GroupStatus, Notification};

/// PagerDuty's public Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

pub(super) fn body(c: &PagerDutyConfig, n: &Notification) -> Value {
    // PagerDuty limits dedup_key to 255 characters; trigger and resolve cut it the same way.
    let dedup_key = truncate_bytes(&n.group_key, 255);
    if n.status == GroupStatus::Resolved {
        return json!({"routing_key": c.routing_key.expose(), "event_action": "resolve", "dedup_key": dedup_key});
    }
    let severity = n.alerts.iter().map(|a| a.severity).max().unwrap_or_default();
    let started = n.alerts.iter().map(|a| a.started_ns).min().unwrap_or(n.created_ns);
    let source = common_label(n, "agent").or_else(|| common_label(n, "site")).unwrap_or("edgeloop");
    let mut payload = Map::new();
    payload.insert("summary".into(), json!(truncate_chars(&format!("{}: {}", title(n), summary_line(n)), 1024)));
    payload.insert("source".into(), json!(source));
    payload.insert("severity".into(), json!(severity_word(severity)));
    payload.insert("timestamp".into(), json!(rfc3339(started)));
    if let Some(machine) = common_label(n, "machine") {
        payload.insert("component".into(), json!(machine));
    }
    if let Some(site) = common_label(n, "site") {
        payload.insert("group".into(), json!(site));
    }
    payload.insert("class".into(), json!(rule_name(n)));
    let alerts: Vec<Value> = n
        .alerts
        .iter()
        .map(|a| {
            json!({
                "summary": a.summary,
                "severity": a.severity,
                "state": a.state,
                "labels": a.labels,
                "value": a.value,
                "limit": a.limit,
                "prediction": a.prediction.map(|p| prediction_text(&p, n.created_ns)),
                "started": rfc3339(a.started_ns),
                "dashboard_url": a.dashboard_url,
            })
        })
        .collect();
    payload.insert(
        "custom_details".into(),
        json!({"notification_id": n.id, "group_labels": n.group_labels, "alerts": alerts}),
    );
    let urls: BTreeSet<(&str, &str)> =
        n.alerts.iter().filter_map(|a| a.dashboard_url.as_deref().map(|u| (u, machine_of(a)))).collect();
    let links: Vec<Value> = urls
        .into_iter()
        .map(|(href, machine)| json!({"href": href, "text": format!("{machine} on the dashboard")}))
        .collect();
    json!({
        "routing_key": c.routing_key.expose(),
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "edgeloop",
        "payload": payload,
        "links": links,
    })
}

#[cfg(test)]
mod tests {
    use crate::model::AlertState;
    use crate::model::GroupStatus;
    use crate::notify::testing::{fast, http_receiver, next, notification, start, wait_for};
    use serde_json::json;

    #[tokio::test]
    async fn pagerduty_trigger_then_resolve_share_the_dedup_key() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(202, "", r#"{"status":"success"}"#)]).await;
        let config =
            fast(serde_json::from_value(json!({"kind": "pagerduty", "url": url, "routing_key": "R0UTING"})).unwrap());
        let (notifier, _shutdown) = start(vec![("pd", config)], dir.path());
        let firing = notification(&["pd"]);
        let mut resolved = firing.clone();
        resolved.id.push_str("-resolved");
        resolved.status = GroupStatus::Resolved;
        resolved.alerts[0].state = AlertState::Resolved;
        notifier.send(&firing).unwrap();
        notifier.send(&resolved).unwrap();

        let trigger = next(&mut rx).await.json();
        assert_eq!(trigger["routing_key"], "R0UTING");
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], firing.group_key);
        let payload = &trigger["payload"];
        assert!(payload["summary"].as_str().unwrap().starts_with("[FIRING:1] bearing_zone_d on plant-a/press-3"));
        assert!(payload["summary"].as_str().unwrap().chars().count() <= 1024);
        assert_eq!(payload["source"], "gw-hall2");
        assert_eq!(payload["severity"], "warning");
        assert_eq!(payload["timestamp"], "2025-10-09T07:53:20Z");
        assert_eq!(payload["component"], "press-3");
        assert_eq!(payload["group"], "plant-a");
        assert_eq!(payload["class"], "bearing_zone_d");
        assert_eq!(payload["custom_details"]["alerts"][0]["value"], 3.9);
        assert_eq!(trigger["links"][0]["href"], "https://edgeloop.example/machines/press-3");

        let resolve = next(&mut rx).await.json();
        assert_eq!(
            resolve,
            json!({"routing_key": "R0UTING", "event_action": "resolve", "dedup_key": firing.group_key})
        );
        wait_for("both delivered", || notifier.stats()["pd"].delivered == 2).await;
    }
}
