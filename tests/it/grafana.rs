//! `config/grafana-dashboard.json` against what edgeloop really writes: a collector stores
//! readings, events (a trip, a drop) and an alert in a real InfluxDB 1.6; then every query of the
//! dashboard (variables, annotations, panels) must run, return data, and name only measurements,
//! tags and fields that exist there.

use std::{collections::BTreeSet, path::Path, time::Duration};

use edgeloop_collector::config::CollectorConfig;
use edgeloop_shared::model::{Event, EventKind, Reading, Severity};
use tokio_util::sync::CancellationToken;

use crate::{
    automation::FakeAgent,
    harness::{self, influxdb::Influx1},
};

const RULES: &str = r#"
[defaults]
group_wait = "0s"

[rules.machine_tripped]
kind = "trip"
severity = "critical"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_of_the_grafana_dashboard_names_what_edgeloop_writes() {
    harness::init_tracing();
    let influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    let text = format!(
        r#"
[broker]
mode = "embedded"
listen = "127.0.0.1:0"

[store]
kind = "influx_v1"
url = "{url}"
database = "edgeloop"

[automation]
rules = "{rules}"
state_dir = "{state}"
"#,
        url = influx.url,
        rules = dir.path().join("rules.toml").display(),
        state = dir.path().join("automation").display(),
    );
    let config = CollectorConfig::parse(&text, Path::new("collector.toml")).unwrap();
    let shutdown = CancellationToken::new();
    let collector = edgeloop_collector::start(&config, shutdown.clone()).await.unwrap();

    let now = edgeloop_shared::clock::now_ns();
    let mut agent = FakeAgent::connect(collector.broker_addr().unwrap(), "gw-grafana").await;
    let readings: Vec<Reading> = (0..120)
        .map(|i| Reading { sensor: "press-3.de.vel_rms".into(), ts_ns: now - (120 - i) * 1_000_000_000, value: 2.0 })
        .collect();
    let events = vec![
        Event {
            ts_ns: now,
            kind: EventKind::Trip,
            severity: Severity::Trip,
            subject: "press-3-bearing-trip".into(),
            message: "press-3.de.vel_rms = 7.3 (> 7.1)".into(),
            values: vec![("press-3.de.vel_rms".into(), 7.3)],
        },
        Event {
            ts_ns: now,
            kind: EventKind::Dropped { readings: 42 },
            severity: Severity::Warning,
            subject: "buffer".into(),
            message: "42 readings dropped".into(),
            values: vec![],
        },
    ];
    agent.send_with(&readings, "plant-a", events).await;
    harness::wait_for("the trip alert in the alerts measurement", Duration::from_secs(20), || async {
        (influx.count("edgeloop", "alerts", "summary").await > 0).then_some(())
    })
    .await;

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries: Vec<String> = Vec::new();
    for list in [&dashboard["templating"]["list"], &dashboard["annotations"]["list"]] {
        queries.extend(list.as_array().unwrap().iter().map(|v| v["query"].as_str().unwrap().to_owned()));
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        queries.extend(panel["targets"].as_array().unwrap().iter().map(|t| t["query"].as_str().unwrap().to_owned()));
    }
    assert!(queries.len() >= 10, "{queries:?}");
    for q in &queries {
        // Grafana's macros and variables, as it would expand them ("All" selected).
        let expanded = q
            .replace("$timeFilter", "time > now() - 1h")
            .replace("$__interval", "10s")
            .replace("/^$site$/", "/^.*$/")
            .replace("/^$agent$/", "/^.*$/")
            .replace("/^$sensor$/", "/^.*$/");
        let answer = influx.query("edgeloop", &expanded).await;
        let result = &answer["results"][0];
        assert!(result["error"].is_null(), "{q}\n→ {answer}");
        assert!(result["series"].as_array().is_some_and(|s| !s.is_empty()), "no data for {q}\n→ {answer}");
        // Every quoted name is the measurement, or one of its tags or fields.
        let measurement = q.split("FROM \"").nth(1).and_then(|r| r.split('"').next()).unwrap();
        let known = names(&influx, measurement).await;
        for name in q.split('"').skip(1).step_by(2) {
            assert!(name == measurement || known.contains(name), "{name:?} is not in {measurement}: {q}");
        }
    }
    shutdown.cancel();
    collector.wait().await;
}

/// A measurement's tag and field keys.
async fn names(influx: &Influx1, measurement: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for q in [format!("SHOW TAG KEYS FROM \"{measurement}\""), format!("SHOW FIELD KEYS FROM \"{measurement}\"")] {
        let v = influx.query("edgeloop", &q).await;
        for row in v["results"][0]["series"][0]["values"].as_array().into_iter().flatten() {
            out.insert(row[0].as_str().unwrap().to_owned());
        }
    }
    assert!(!out.is_empty(), "measurement {measurement} does not exist");
    out
}
