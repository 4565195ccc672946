//! Slack incoming webhooks (and what speaks their format, e.g. Mattermost): a header block and one
//! mrkdwn section per alert.

use serde_json::{Value, json};

use super::render::{fmt_num, machine_of, prediction_text, summary_line, title, truncate_chars};
use crate::model::{AlertState, Notification};

/// Slack rejects messages with more than 50 blocks; leave room for the header and the "more" line.
const SLACK_MAX_ALERT_SECTIONS: usize = 40;

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub(super) fn body(n: &Notification) -> Value {
    let title = title(n);
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate_chars(&title, 150), "emoji": true},
    })];
    for a in n.alerts.iter().take(SLACK_MAX_ALERT_SECTIONS) {
        let mut text = format!("*{}*", slack_escape(&a.summary));
        if a.state == AlertState::Resolved {
            text.push_str("  _resolved_");
        }
        text.push_str(&format!("\n*Machine:* {}", slack_escape(machine_of(a))));
        if let Some(sensor) = a.labels.get("sensor") {
            text.push_str(&format!("   *Sensor:* `{}`", slack_escape(sensor)));
        }
        match (a.value, a.limit) {
            (Some(v), Some(l)) => text.push_str(&format!("\n*Value:* {} vs limit {}", fmt_num(v), fmt_num(l))),
            (Some(v), None) => text.push_str(&format!("\n*Value:* {}", fmt_num(v))),
            (None, Some(l)) => text.push_str(&format!("\n*Limit:* {}", fmt_num(l))),
            (None, None) => {}
        }
        if let Some(p) = &a.prediction {
            text.push_str(&format!("\n*Prediction:* {}", prediction_text(p, n.created_ns)));
        }
        if let Some(url) = &a.dashboard_url {
            text.push_str(&format!("\n<{}|Open on the dashboard>", slack_escape(url)));
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate_chars(&text, 3000)}}));
    }
    if n.alerts.len() > SLACK_MAX_ALERT_SECTIONS {
        let more = n.alerts.len() - SLACK_MAX_ALERT_SECTIONS;
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("…and {more} more alerts")}]}),
        );
    }
    json!({"text": format!("{title}\n{}", summary_line(n)), "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{ChannelConfig, Rendered, example_notification, render};

    #[test]
    fn slack_body_has_a_header_and_a_section_per_alert() {
        let config: ChannelConfig = serde_json::from_value(json!({"kind": "slack", "url": "http://x/y"})).unwrap();
        let Rendered::Http { content_type, body } = render(&config, &example_notification()).unwrap() else {
            panic!("slack renders HTTP")
        };
        assert_eq!(content_type, "application/json");
        let body: Value = serde_json::from_slice(&body).unwrap();
        let title = "[FIRING:1] bearing_zone_d on plant-a/press-3";
        assert!(body["text"].as_str().unwrap().starts_with(title));
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"], title);
        assert_eq!(blocks[1]["type"], "section");
        let section = blocks[1]["text"]["text"].as_str().unwrap();
        for part in [
            "*Machine:* press-3",
            "*Sensor:* `press3_de_velocity`",
            "*Value:* 3.9 vs limit 4.5",
            "reaches 4.5 at 2025-10-10 14:53 UTC (in about 30 h, 20–45 h)",
            "<https://edgeloop.example/machines/press-3|Open on the dashboard>",
        ] {
            assert!(section.contains(part), "{part:?} missing from {section}");
        }

        // Slack refuses more than 50 blocks: a storm is cut with a "more" line.
        let mut storm = example_notification();
        storm.alerts = vec![storm.alerts[0].clone(); 45];
        let Rendered::Http { body, .. } = render(&config, &storm).unwrap() else { panic!() };
        let body: Value = serde_json::from_slice(&body).unwrap();
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 1 + SLACK_MAX_ALERT_SECTIONS + 1);
        assert_eq!(blocks[0]["text"]["text"], "[FIRING:45] bearing_zone_d on plant-a/press-3");
        assert!(blocks.last().unwrap()["elements"][0]["text"].as_str().unwrap().contains("5 more alerts"));
    }
}
