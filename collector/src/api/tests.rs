//! The API over a real listener: every route of the table without a token (401), below its role
//! (403), with a bad body (400 naming the field) and with a fitting token; then each area's
//! answers, the audited refusal of a viewer's shutdown, the stream and the OpenAPI document.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use edgeloop_shared::{
    batch::Batch,
    model::{CommandAction, Reading},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    ApiState, Parts, Role,
    auth::{Tokens, add_to_file},
    route::{Access, Method},
    table::routes,
};
use edgeloop_shared::clock::now_ns;

use crate::{
    automation::{self, Inputs},
    config::{AutomationConfig, LocalStoreConfig, StoreConfig},
    fleet::Fleet,
    live::Live,
    stats::CollectorStats,
    store::Store,
};

struct Fixture {
    base: String,
    http: reqwest::Client,
    tokens: BTreeMap<Role, String>,
    state: ApiState,
    fingerprint: Option<String>,
    approval: Option<u64>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
    _mqtt: Option<rumqttc::EventLoop>,
    /// The automation task stops when its inputs close.
    _inputs: Option<(
        tokio::sync::mpsc::Sender<Arc<Batch>>,
        tokio::sync::mpsc::Sender<edgeloop_shared::model::CommandResult>,
    )>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

const RULES: &str = "[rules.hot]\nkind = \"threshold\"\nsensors = \"*.temp\"\nabove = 50.0\n\
                     command = { action = \"shutdown\", approval = \"required\" }\n";

async fn fixture(with_automation: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tokens_file = dir.path().join("tokens.json");
    let tokens: BTreeMap<Role, String> =
        Role::ALL.iter().map(|r| (*r, add_to_file(&tokens_file, r.name(), *r).unwrap())).collect();
    let store =
        Arc::new(Store::open(&StoreConfig::Local(LocalStoreConfig { path: dir.path().join("store") })).unwrap());
    let fleet = Arc::new(Fleet::load(None));
    let live = Arc::new(Live::new(Duration::from_secs(900), 450));
    let shutdown = CancellationToken::new();
    let now = now_ns();
    let readings: Vec<Reading> = (0..20)
        .map(|i| Reading {
            sensor: "press-3.temp".into(),
            ts_ns: now - (20 - i) * 1_000_000_000,
            value: 60.0 + i as f64,
        })
        .collect();
    let mut batch = Batch::from_readings("gw-1", 1, &readings);
    batch.tags = vec![("site".into(), "plant-a".into())];
    let batch = Arc::new(batch);
    store.write(&batch).await.unwrap();
    // Older than the live window: only the store has it.
    let old = Batch::from_readings("gw-1", 0, &[Reading { sensor: "press-3.temp".into(), ts_ns: 1_000, value: 5.0 }]);
    store.write(&old).await.unwrap();
    live.on_batch(&batch);
    fleet.on_stored("gw-1", 20, Some(now));
    let (mut automation_handle, mut mqtt, mut inputs) = (None, None, None);
    if with_automation {
        std::fs::write(dir.path().join("fleet-rules.toml"), RULES).unwrap();
        let key = dir.path().join("command.key");
        automation::commands::generate_key(&key).unwrap();
        let config: AutomationConfig = toml::from_str(&format!(
            "rules = {:?}\nstate_dir = {:?}\nsigning_key = {:?}\n",
            dir.path().join("fleet-rules.toml"),
            dir.path().join("state"),
            key
        ))
        .unwrap();
        // A client whose event loop is never polled: publishes queue (the test reads them from the audit).
        let (client, eventloop) = rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("api-test", "127.0.0.1", 1), 64);
        mqtt = Some(eventloop);
        let a = automation::start(&config, BTreeMap::new(), crate::mqtt::Client::V4(client), shutdown.clone()).unwrap();
        let (stored_tx, stored) = tokio::sync::mpsc::channel(8);
        let (results_tx, results) = tokio::sync::mpsc::channel(8);
        tokio::spawn(automation::run(
            a.clone(),
            config,
            Inputs { stored, results },
            fleet.clone(),
            store.clone(),
            shutdown.clone(),
        ));
        stored_tx.send(batch.clone()).await.unwrap();
        inputs = Some((stored_tx, results_tx));
        automation_handle = Some(a);
    }
    let state = ApiState::new(Parts {
        stats: Arc::new(CollectorStats::default()),
        fleet,
        live,
        automation: automation_handle.clone(),
        store,
        tokens: Tokens::load(Some(&tokens_file)).unwrap(),
        shutdown: shutdown.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(super::serve(listener, state.clone(), shutdown.clone()));
    let (mut fingerprint, mut approval) = (None, None);
    if let Some(a) = &automation_handle {
        // The alert fires on the automation's next tick (every second), and asks for approval.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while approval.is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            fingerprint = a.alerts().first().map(|v| v.alert.fingerprint.clone());
            approval = a.approvals().await.first().map(|x| x.id);
        }
        assert!(fingerprint.is_some() && approval.is_some(), "the test alert never fired");
    }
    Fixture {
        base,
        http: reqwest::Client::new(),
        tokens,
        state,
        fingerprint,
        approval,
        shutdown,
        _dir: dir,
        _mqtt: mqtt,
        _inputs: inputs,
    }
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
}

impl Fixture {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Answer {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            Method::Get => self.http.get(&url),
            Method::Post => self.http.post(&url),
            Method::Delete => self.http.delete(&url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        if resp.headers().get("content-type").is_some_and(|c| c.to_str().unwrap().starts_with("text/event-stream")) {
            return Answer { status, body: Value::Null, text: String::new() };
        }
        let text = resp.text().await.unwrap();
        Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
    }

    fn token(&self, role: Role) -> &str {
        &self.tokens[&role]
    }

    async fn as_role(&self, role: Role, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call(method, path, Some(self.token(role)), body.as_ref()).await
    }

    /// A concrete path and a valid body for a route of the table.
    fn sample(&self, path: &str) -> (String, Option<Value>) {
        let concrete = path
            .replace("{agent}", "gw-1")
            .replace("{fingerprint}", self.fingerprint.as_deref().unwrap_or("0"))
            .replace("{name}", "made-by-test")
            .replace(
                "{id}",
                &if path.contains("silences") { "silence-1".into() } else { self.approval.unwrap_or(1).to_string() },
            );
        let concrete = if concrete.ends_with("/series") { format!("{concrete}?sensor=press-3.temp") } else { concrete };
        let body = match path {
            "/api/v1/alerts/{fingerprint}/ack" => Some(json!({})),
            "/api/v1/silences" => Some(json!({"matchers": [{"label": "agent", "value": "gw-1"}], "duration_s": 60,
                                               "comment": "maintenance window"})),
            "/api/v1/rules/check" => Some(json!({"toml": VALID_RULES})),
            "/api/v1/agents/{agent}/rules" => Some(json!({"toml": VALID_RULES})),
            "/api/v1/agents/{agent}/commands" => Some(json!({"action": "shutdown", "reason": "test"})),
            "/api/v1/tokens" => Some(json!({"name": "made-by-test", "role": "viewer"})),
            _ => None,
        };
        (concrete, body)
    }
}

const VALID_RULES: &str = "[rules.spindle-overtemp]\nsensor = \"press-3.temp\"\nabove = 90.0\nclear = 85.0\n";

fn error_of(a: &Answer) -> &str {
    a.body["error"].as_str().unwrap_or_else(|| panic!("not a JSON error ({}): {}", a.status, a.text))
}

#[tokio::test]
async fn every_route_is_guarded_checked_and_answers() {
    let f = fixture(true).await;
    for spec in routes() {
        let (path, body) = f.sample(spec.path);
        let body = body.filter(|_| spec.body.is_some());
        let what = format!("{} {}", spec.method.name(), spec.path);
        let Some(role) = spec.access.role() else {
            let a = f.call(spec.method, &path, None, None).await;
            assert_eq!(a.status, 200, "{what}: public");
            continue;
        };
        // No token, an unknown one: 401, as JSON.
        for token in [None, Some("el_nope")] {
            let a = f.call(spec.method, &path, token, body.as_ref()).await;
            assert_eq!((a.status, error_of(&a)), (401, "missing or unknown token"), "{what}");
        }
        // Below its role: 403 naming both roles.
        if role > Role::Viewer {
            let below = Role::ALL[Role::ALL.iter().position(|r| *r == role).unwrap() - 1];
            let a = f.as_role(below, spec.method, &path, body.clone()).await;
            assert_eq!(a.status, 403, "{what}: {}", a.text);
            let e = error_of(&a);
            assert!(
                e.contains(&format!("role {below} may not")) && e.contains(&format!("needs {role}")),
                "{what}: {e}"
            );
        }
        // A bad body: 400 naming the field.
        if let Some(Value::Object(mut b)) = body.clone() {
            b.insert("zzz_unknown".into(), json!(1));
            let a = f.as_role(Role::Admin, spec.method, &path, Some(Value::Object(b))).await;
            assert_eq!(a.status, 400, "{what}: {}", a.text);
            assert!(error_of(&a).contains("zzz_unknown"), "{what}: {}", a.text);
        }
        // Its own role: routed and answered (an approval may already be gone: its own 404).
        let a = f.as_role(role, spec.method, &path, body.clone()).await;
        assert!((200..300).contains(&a.status) && a.status == spec.status, "{what} as {role}: {} {}", a.status, a.text);
    }
    // Not routed: the fallback's JSON.
    let a = f.as_role(Role::Admin, Method::Get, "/api/v1/nothing", None).await;
    assert_eq!(a.status, 404);
    assert!(error_of(&a).contains("no route"));
    let a = f.as_role(Role::Admin, Method::Delete, "/api/v1/me", None).await;
    assert_eq!(a.status, 405);
    error_of(&a);
}

#[tokio::test]
async fn a_viewer_cannot_shut_a_machine_down_and_the_refusal_is_audited() {
    let f = fixture(true).await;
    let body = json!({"action": "shutdown", "reason": "curious"});
    let a = f.as_role(Role::Viewer, Method::Post, "/api/v1/agents/gw-1/commands", Some(body.clone())).await;
    assert_eq!((a.status, error_of(&a)), (403, "role viewer may not shutdown (needs operator)"));
    let a = f.as_role(Role::Operator, Method::Post, "/api/v1/agents/gw-1/commands", Some(body.clone())).await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert!(a.body["command_id"].as_u64().is_some());
    let a = f.as_role(Role::Operator, Method::Post, "/api/v1/agents/nope/commands", Some(body)).await;
    assert_eq!(a.status, 404);
    assert!(error_of(&a).contains("nope"));
    let audit = f.as_role(Role::Maintenance, Method::Get, "/api/v1/audit", None).await;
    let records = audit.body.as_array().unwrap();
    let refused = records
        .iter()
        .find(|r| r["issuer"] == "token:viewer" && r["verdict"] == "refused")
        .unwrap_or_else(|| panic!("no audited refusal: {}", audit.text));
    assert_eq!(refused["agent"], "gw-1");
    assert!(refused["detail"].as_str().unwrap().contains("needs operator"), "{refused}");
    assert!(records.iter().any(|r| r["issuer"] == "token:operator" && r["verdict"] == "sent"), "{}", audit.text);
    // The same through the automation handle: nothing but the record exists for the refusal.
    let shutdown = CommandAction::Shutdown { reason: "curious".into() };
    assert_eq!(shutdown.name(), "shutdown");
}

#[tokio::test]
async fn fleet_routes_answer_their_shapes() {
    let f = fixture(true).await;
    let me = f.as_role(Role::Engineer, Method::Get, "/api/v1/me", None).await;
    assert_eq!(me.body, json!({"name": "engineer", "role": "engineer"}));
    let agents = f.as_role(Role::Viewer, Method::Get, "/api/v1/agents", None).await;
    let gw = &agents.body[0];
    assert_eq!((gw["agent"].as_str(), gw["site"].as_str()), (Some("gw-1"), Some("plant-a")), "{}", agents.text);
    assert_eq!(gw["points_stored"], 20);
    assert_eq!(gw["firing_alerts"], 1, "{}", agents.text);
    for key in [
        "online",
        "stale",
        "last_seen_ns",
        "version",
        "backlog_readings",
        "oldest_unsent_ns",
        "dropped_total",
        "latched",
        "stale_sensors",
        "sensors",
    ] {
        assert!(gw.get(key).is_some(), "{key} missing: {gw}");
    }
    let detail = f.as_role(Role::Viewer, Method::Get, "/api/v1/agents/gw-1", None).await;
    assert_eq!(detail.body["latest"][0]["sensor"], "press-3.temp", "{}", detail.text);
    assert_eq!(detail.body["latest"][0]["value"], 79.0);
    let a = f.as_role(Role::Viewer, Method::Get, "/api/v1/agents/nope", None).await;
    assert_eq!(a.status, 404);
    assert!(error_of(&a).contains("\"nope\""));

    // The default range (15 minutes) reaches back before the cache: the store answers.
    let stored = f.as_role(Role::Viewer, Method::Get, "/api/v1/agents/gw-1/series?sensor=press-3.temp", None).await;
    assert_eq!(stored.body["source"], "local", "{}", stored.text);
    assert_eq!(stored.body["points"].as_array().unwrap().len(), 20, "{}", stored.text);
    let path = format!("/api/v1/agents/gw-1/series?sensor=press-3.temp&since_ns={}", now_ns() - 25_000_000_000);
    let recent = f.as_role(Role::Viewer, Method::Get, &path, None).await;
    assert_eq!(recent.body["source"], "recent", "{}", recent.text);
    // The live window keeps a point per 2 s (15 min / 450): half of these.
    let points = recent.body["points"].as_array().unwrap();
    assert_eq!(points.len(), 10, "{}", recent.text);
    let path = "/api/v1/agents/gw-1/series?sensor=press-3.temp&since_ns=0&max_points=10";
    let old = f.as_role(Role::Viewer, Method::Get, path, None).await;
    assert_eq!(old.body["source"], "local", "{}", old.text);
    let points = old.body["points"].as_array().unwrap();
    assert!(points.len() <= 10 && points[0] == json!([1000, 5.0]), "{}", old.text);
    let bad = f.as_role(Role::Viewer, Method::Get, "/api/v1/agents/gw-1/series?sensor=x&max_pints=3", None).await;
    assert_eq!(bad.status, 400);
    assert!(error_of(&bad).contains("max_pints"), "{}", bad.text);

    let events = f.as_role(Role::Viewer, Method::Get, "/api/v1/events?agent=gw-1&limit=5", None).await;
    assert_eq!(events.status, 200);
    assert!(events.body.is_array());
    let rules = f.as_role(Role::Viewer, Method::Get, "/api/v1/agents/gw-1/rules", None).await;
    assert_eq!(rules.body, json!({"agent": "gw-1", "version": null, "toml": null}));
}

#[tokio::test]
async fn alerts_acks_and_silences() {
    let f = fixture(true).await;
    let fp = f.fingerprint.clone().unwrap();
    let alerts = f.as_role(Role::Viewer, Method::Get, "/api/v1/alerts?state=firing", None).await;
    assert_eq!(alerts.body[0]["alert"]["fingerprint"], fp.as_str(), "{}", alerts.text);
    let bad = f.as_role(Role::Viewer, Method::Get, "/api/v1/alerts?state=burning", None).await;
    assert_eq!(bad.status, 400);
    let ack = f.as_role(Role::Maintenance, Method::Post, &format!("/api/v1/alerts/{fp}/ack"), None).await;
    assert_eq!(ack.body["alert"]["acked_by"], "maintenance", "{}", ack.text);
    let a = f.as_role(Role::Maintenance, Method::Post, "/api/v1/alerts/0123456789abcdef/ack", None).await;
    assert_eq!(a.status, 404);
    assert!(error_of(&a).contains("0123456789abcdef"));

    let body = json!({"matchers": [{"label": "rule", "value": "hot"}], "ends_ns": now_ns() + 60_000_000_000i64,
                      "comment": "known"});
    let created = f.as_role(Role::Maintenance, Method::Post, "/api/v1/silences", Some(body)).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let list = f.as_role(Role::Viewer, Method::Get, "/api/v1/silences", None).await;
    assert_eq!(list.body[0]["silence"]["created_by"], "maintenance", "{}", list.text);
    let both = json!({"matchers": [{"label": "rule", "value": "hot"}], "comment": "x"});
    let a = f.as_role(Role::Maintenance, Method::Post, "/api/v1/silences", Some(both)).await;
    assert_eq!(a.status, 400);
    assert!(error_of(&a).contains("duration_s"));
    let del = f.as_role(Role::Maintenance, Method::Delete, &format!("/api/v1/silences/{id}"), None).await;
    assert_eq!(del.status, 204);
    let a = f.as_role(Role::Maintenance, Method::Delete, "/api/v1/silences/silence-99", None).await;
    assert_eq!(a.status, 404);
    assert!(error_of(&a).contains("silence-99"));
}

/// A maintenance token cannot mute every alert (and with them the automatic commands): a silence
/// whose matchers match every alert is refused naming them, whatever the operator, and so is one
/// longer than the maximum, never shortened to fit.
#[tokio::test]
async fn a_silence_over_everything_or_forever_is_refused() {
    let f = fixture(true).await;
    let over_everything = [
        json!([{"label": "rule", "op": "not_equal", "value": ""}]),
        json!([{"label": "rule", "op": "glob", "value": "*"}]),
        json!([{"label": "rule", "op": "not_glob", "value": ""}]),
        json!([{"label": "machine", "op": "glob", "value": "**"}, {"label": "rule", "op": "not_equal", "value": ""}]),
        json!([{"label": "machine", "op": "not_equal", "value": "x"}]),
        json!([]),
    ];
    for matchers in over_everything {
        let body = json!({"matchers": matchers, "duration_s": 600, "comment": "all quiet"});
        let a = f.as_role(Role::Maintenance, Method::Post, "/api/v1/silences", Some(body)).await;
        assert_eq!(a.status, 400, "{matchers}: {}", a.text);
        let named = matchers.as_array().and_then(|m| m.first()).map(|m| m["label"].as_str().unwrap().to_owned());
        if let Some(label) = named {
            assert!(error_of(&a).contains(&label) || error_of(&a).contains("absent label"), "{}", a.text);
        }
    }
    for duration_s in [7 * 24 * 3600 + 1, u64::MAX / 2, u64::MAX] {
        let body = json!({"matchers": [{"label": "rule", "value": "hot"}], "duration_s": duration_s, "comment": "x"});
        let a = f.as_role(Role::Maintenance, Method::Post, "/api/v1/silences", Some(body)).await;
        assert_eq!(a.status, 400, "{duration_s}: {}", a.text);
        assert!(error_of(&a).contains("too long") || error_of(&a).contains("longer than"), "{}", a.text);
    }
    let list = f.as_role(Role::Viewer, Method::Get, "/api/v1/silences", None).await;
    assert_eq!(list.body.as_array().map(Vec::len), Some(0), "{}", list.text);
    let week = json!({"matchers": [{"label": "rule", "value": "hot"}], "duration_s": 7 * 24 * 3600, "comment": "x"});
    let a = f.as_role(Role::Maintenance, Method::Post, "/api/v1/silences", Some(week)).await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test]
async fn rules_are_checked_then_pushed_and_remembered() {
    let f = fixture(true).await;
    let bad_rules = "[rules.x]\nabove = 1.0\n";
    let check = f.as_role(Role::Engineer, Method::Post, "/api/v1/rules/check", Some(json!({"toml": bad_rules}))).await;
    assert_eq!(check.body["ok"], false, "{}", check.text);
    assert_eq!(check.body["problems"][0]["key"], "rules.x.sensor", "{}", check.text);
    assert!(check.body["note"].as_str().unwrap().contains("shutdown_actions"));
    let check = f.as_role(Role::Engineer, Method::Post, "/api/v1/rules/check", Some(json!({"toml": "[rules"}))).await;
    assert_eq!((check.body["ok"].as_bool(), check.body["problems"][0]["key"].as_str()), (Some(false), Some("toml")));
    let ok = json!({"toml": VALID_RULES});
    let check = f.as_role(Role::Engineer, Method::Post, "/api/v1/rules/check", Some(ok.clone())).await;
    assert_eq!(check.body["ok"], true, "{}", check.text);

    let push =
        f.as_role(Role::Engineer, Method::Post, "/api/v1/agents/gw-1/rules", Some(json!({"toml": bad_rules}))).await;
    assert_eq!(push.status, 400);
    assert_eq!(push.body["problems"][0]["key"], "rules.x.sensor", "{}", push.text);
    let push = f.as_role(Role::Maintenance, Method::Post, "/api/v1/agents/gw-1/rules", Some(ok.clone())).await;
    assert_eq!((push.status, error_of(&push)), (403, "role maintenance may not push_rules (needs engineer)"));
    let push = f.as_role(Role::Engineer, Method::Post, "/api/v1/agents/gw-1/rules", Some(ok)).await;
    assert_eq!(push.status, 202, "{}", push.text);
    let rules = f.as_role(Role::Viewer, Method::Get, "/api/v1/agents/gw-1/rules", None).await;
    assert_eq!(rules.body["toml"], VALID_RULES);
    let audit = f.state.automation.as_ref().unwrap().audit(20);
    assert!(audit.iter().any(|r| r.issuer == "token:maintenance" && r.verdict == "refused"), "{audit:?}");
    assert!(
        audit.iter().any(|r| r.issuer == "token:engineer" && r.verdict == "refused"),
        "the invalid push: {audit:?}"
    );
}

#[tokio::test]
async fn approvals_are_listed_and_approved() {
    let f = fixture(true).await;
    let id = f.approval.unwrap();
    let list = f.as_role(Role::Viewer, Method::Get, "/api/v1/commands/approvals", None).await;
    assert_eq!(list.body[0]["id"], id, "{}", list.text);
    assert_eq!(list.body[0]["agent"], "gw-1");
    let path = format!("/api/v1/commands/approvals/{id}/approve");
    let a = f.as_role(Role::Engineer, Method::Post, &path, None).await;
    assert_eq!((a.status, error_of(&a)), (403, "role engineer may not approve commands (needs operator)"));
    let a = f.as_role(Role::Operator, Method::Post, &path, None).await;
    assert_eq!((a.status, a.body["command_id"].as_u64()), (202, Some(id)), "{}", a.text);
    let a = f.as_role(Role::Operator, Method::Post, &path, None).await;
    assert_eq!(a.status, 404);
    let a = f.as_role(Role::Operator, Method::Post, "/api/v1/commands/approvals/x/approve", None).await;
    assert_eq!(a.status, 400);
    error_of(&a);
}

#[tokio::test]
async fn tokens_are_made_once_used_and_deleted() {
    let f = fixture(false).await;
    let made =
        f.as_role(Role::Admin, Method::Post, "/api/v1/tokens", Some(json!({"name": "kiosk", "role": "viewer"}))).await;
    assert_eq!(made.status, 201, "{}", made.text);
    let token = made.body["token"].as_str().unwrap().to_string();
    let me = f.call(Method::Get, "/api/v1/me", Some(&token), None).await;
    assert_eq!(me.body, json!({"name": "kiosk", "role": "viewer"}));
    let again =
        f.as_role(Role::Admin, Method::Post, "/api/v1/tokens", Some(json!({"name": "kiosk", "role": "admin"}))).await;
    assert_eq!(again.status, 409);
    let bad = f.as_role(Role::Admin, Method::Post, "/api/v1/tokens", Some(json!({"name": "x", "role": "root"}))).await;
    assert_eq!(bad.status, 400);
    assert!(error_of(&bad).contains("root"), "{}", bad.text);
    let list = f.as_role(Role::Admin, Method::Get, "/api/v1/tokens", None).await;
    assert!(!list.text.contains("sha256") && list.text.contains("kiosk"), "{}", list.text);
    let del = f.as_role(Role::Admin, Method::Delete, "/api/v1/tokens/kiosk", None).await;
    assert_eq!(del.status, 204);
    let me = f.call(Method::Get, "/api/v1/me", Some(&token), None).await;
    assert_eq!(me.status, 401);
    let last = f.as_role(Role::Admin, Method::Delete, "/api/v1/tokens/admin", None).await;
    assert_eq!(last.status, 409, "{}", last.text);
    let gone = f.as_role(Role::Admin, Method::Delete, "/api/v1/tokens/kiosk", None).await;
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn without_automation_its_routes_say_so() {
    let f = fixture(false).await;
    for path in ["/api/v1/alerts", "/api/v1/silences", "/api/v1/commands/approvals"] {
        let a = f.as_role(Role::Admin, Method::Get, path, None).await;
        assert_eq!(a.status, 503, "{path}");
        assert_eq!(error_of(&a), "automation is not configured ([automation] in the collector config)");
    }
    let a = f
        .as_role(
            Role::Operator,
            Method::Post,
            "/api/v1/agents/gw-1/commands",
            Some(json!({"action": "reset_latch", "rule": "r"})),
        )
        .await;
    assert_eq!(a.status, 503);
    // The fleet still answers.
    let a = f.as_role(Role::Viewer, Method::Get, "/api/v1/agents", None).await;
    assert_eq!(a.body[0]["firing_alerts"], 0);
}

#[tokio::test]
async fn the_stream_takes_its_token_from_the_query_and_sends_readings() {
    let f = fixture(false).await;
    let url = format!("{}/api/v1/stream?agent=gw-1&token={}", f.base, f.token(Role::Viewer));
    let mut resp = f.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let readings: Vec<Reading> =
        (0..100).map(|i| Reading { sensor: "s".into(), ts_ns: now_ns() + i, value: i as f64 }).collect();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(seen.contains("event: agents") && seen.contains("event: reading")) {
        f.state.live.on_batch(&Arc::new(Batch::from_readings("gw-1", 2, &readings)));
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await.expect("stream events").unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Latest wins: the batch's last reading, never an earlier one of the same series.
    assert!(seen.contains("\"value\":99.0") && !seen.contains("\"value\":98.0"), "{seen}");
    let a = f.call(Method::Get, "/api/v1/stream", Some("el_wrong"), None).await;
    assert_eq!(a.status, 401);
    let a = f.call(Method::Get, &format!("/api/v1/me?token={}", f.token(Role::Admin)), None, None).await;
    assert_eq!(a.status, 401, "only the stream takes a token in the query");
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_table() {
    let f = fixture(false).await;
    let a = f.call(Method::Get, "/api/openapi.json", None, None).await;
    let doc = &a.body;
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let mut listed: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.push((method.clone(), path.clone()));
        }
    }
    let mut table: Vec<(String, String)> =
        routes().iter().map(|r| (r.method.name().to_string(), r.path.to_string())).collect();
    listed.sort();
    table.sort();
    assert_eq!(listed, table);
    // Every schema referred to exists.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for r in a.text.split("#/components/schemas/").skip(1) {
        let name: String = r.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        assert!(schemas.contains_key(&name), "{name} is referred to but not defined");
    }
    let me = &doc["paths"]["/api/v1/commands/approvals/{id}/approve"]["post"];
    assert!(me["description"].as_str().unwrap().contains("operator"), "{me}");
    assert_eq!(doc["paths"]["/"]["get"]["security"], json!([]));
    assert!(routes().iter().all(|r| r.access != Access::Public || !r.path.starts_with("/api/v1/")));
}

/// Every answer, page or API or error, carries the security headers: the dashboard cannot be
/// framed by another site, scripts come only from this origin.
#[tokio::test]
async fn every_answer_forbids_framing_and_foreign_scripts() {
    let f = fixture(false).await;
    for path in ["/", "/app.js", "/metrics", "/api/v1/agents", "/no-such-page"] {
        let resp = f.http.get(format!("{}{path}", f.base)).send().await.unwrap();
        let h = resp.headers();
        let csp = h.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{path}: {csp:?}");
        assert_eq!(h.get("x-frame-options").and_then(|v| v.to_str().ok()), Some("DENY"), "{path}");
        assert_eq!(h.get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"), "{path}");
    }
}
