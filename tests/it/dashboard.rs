//! The dashboard in a real headless Chromium, against the real collector (embedded broker, local
//! store, the HTTP API with a tokens file, fleet automation) and real agents with simulated
//! machines. Each test clicks through the page as a person would and checks what they would
//! notice, on the page and through the API. Screenshots of every step are saved under
//! `target/test-artifacts/dashboard/`.
//!
//! The tests run one at a time (a static lock): each starts a browser, a collector and agents,
//! which is plenty for a 2-core machine. Every outcome is polled with a generous deadline.

use std::{path::Path, time::Duration};

use edgeloop_agent::config::SimulatedConfig;
use edgeloop_collector::config::CollectorConfig;
use edgeloop_shared::units::HumanDuration;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    self,
    chromium::{Browser, Page, js_str},
};

const PATIENCE: Duration = Duration::from_secs(20);

/// One stack at a time: browser + collector + agents per test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The fleet rule file every stack loads: an offline agent is a critical alert at once.
const FLEET_RULES: &str = r#"
[rules.agent_gone]
kind = "agent_offline"
severity = "critical"
labels = { team = "maintenance-east" }

[rules.agent_gone.route]
group_wait = "0s"
"#;

struct Tokens {
    admin: String,
    maintenance: String,
    viewer: String,
}

struct RunningAgent {
    id: String,
    stop: CancellationToken,
    agent: edgeloop_agent::Agent,
}

struct Stack {
    dir: tempfile::TempDir,
    collector: edgeloop_collector::Collector,
    root: CancellationToken,
    agents: Vec<RunningAgent>,
    base: String,
    tokens: Tokens,
    http: reqwest::Client,
}

fn sha256_hex(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token in the contract's shape (`el_` + 64 hex), unguessable enough for a test.
fn new_token(name: &str) -> String {
    format!("el_{}", sha256_hex(&format!("{name}-{}-{:?}", std::process::id(), std::time::SystemTime::now())))
}

/// Writes the tokens file of the contract: `{"tokens":[{"name","role","sha256","created_ns"}]}`.
fn write_tokens(path: &Path) -> Tokens {
    let t = Tokens { admin: new_token("ada"), maintenance: new_token("mo"), viewer: new_token("vic") };
    let entry = |name: &str, role: &str, token: &str| json!({ "name": name, "role": role, "sha256": sha256_hex(token), "created_ns": 1_700_000_000_000_000_000i64 });
    let body = json!({ "tokens": [
        entry("ada", "admin", &t.admin),
        entry("mo", "maintenance", &t.maintenance),
        entry("vic", "viewer", &t.viewer),
    ]});
    std::fs::write(path, serde_json::to_vec_pretty(&body).unwrap()).unwrap();
    t
}

/// Real-time simulated machine: one reading per sensor every `period`.
fn live(period_ms: u64) -> SimulatedConfig {
    SimulatedConfig { period: HumanDuration(Duration::from_millis(period_ms)), realtime: true, limit: None }
}

impl Stack {
    async fn start(agents: &[&str]) -> Stack {
        harness::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("fleet-rules.toml"), FLEET_RULES).unwrap();
        edgeloop_collector::automation::commands::generate_key(&d.join("signing.key")).unwrap();
        let tokens = write_tokens(&d.join("tokens.json"));
        let toml = format!(
            "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\n\
             [store]\nkind = \"local\"\npath = {store:?}\n\n\
             [api]\nlisten = \"127.0.0.1:0\"\ntokens_file = {tokens:?}\n\n\
             [automation]\nrules = {rules:?}\nstate_dir = {state:?}\nsigning_key = {key:?}\nrules_check_interval = \"200ms\"\n",
            store = d.join("store"),
            tokens = d.join("tokens.json"),
            rules = d.join("fleet-rules.toml"),
            state = d.join("automation"),
            key = d.join("signing.key"),
        );
        let config = CollectorConfig::parse(&toml, &d.join("collector.toml")).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let root = CancellationToken::new();
        let collector = edgeloop_collector::start(&config, root.child_token()).await.unwrap();
        let base = format!("http://{}", collector.api_addr().unwrap());
        let mut stack = Stack { dir, collector, root, agents: Vec::new(), base, tokens, http: reqwest::Client::new() };
        for id in agents {
            stack.start_agent(id, live(200)).await;
        }
        stack
    }

    async fn start_agent(&mut self, id: &str, sim: SimulatedConfig) {
        let broker = self.collector.broker_addr().unwrap();
        let mut cfg = harness::agent_config(id, &self.dir.path().join(id), broker, sim);
        // The agent would obey the collector's signed commands: a refused one must not get here.
        let automation = self.collector.automation.as_ref().unwrap();
        cfg.commands.public_key = automation.public_key_hex().await;
        let stop = self.root.child_token();
        let agent = edgeloop_agent::start(&cfg, stop.clone()).await.unwrap();
        self.agents.push(RunningAgent { id: id.into(), stop, agent });
    }

    /// Stops an agent cleanly: it says goodbye (offline) to the collector.
    async fn stop_agent(&mut self, id: &str) {
        let i = self.agents.iter().position(|a| a.id == id).unwrap();
        let a = self.agents.remove(i);
        a.stop.cancel();
        a.agent.wait().await;
    }

    async fn get(&self, token: &str, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "GET {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    /// Waits until the API lists `agent` online (so the page has something true to show).
    async fn wait_online(&self, agent: &str) {
        harness::wait_for(&format!("{agent} online in the API"), PATIENCE, || async {
            let list = self.get(&self.tokens.admin, "/api/v1/agents").await;
            list.as_array().unwrap().iter().any(|a| a["agent"] == agent && a["online"] == true).then_some(())
        })
        .await;
    }

    async fn stop(mut self) {
        for a in std::mem::take(&mut self.agents) {
            a.stop.cancel();
            a.agent.wait().await;
        }
        self.collector.shutdown();
        self.root.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.collector.wait()).await.ok();
    }
}

/// Opens the dashboard and signs in with `token`.
async fn sign_in(page: &Page, base: &str, token: &str) {
    page.goto(&format!("{base}/")).await;
    // Tabs share localStorage: start from no token, whoever signed in before.
    page.eval("localStorage.removeItem('edgeloop.token')").await;
    page.reload().await;
    page.wait_for("!document.querySelector('#login').hidden", PATIENCE).await;
    page.type_text("[data-testid=token]", token).await;
    page.click("[data-testid=login]").await;
    page.wait_for(
        "!document.querySelector('#who').hidden && document.querySelector('#who').textContent.length > 0",
        PATIENCE,
    )
    .await;
}

fn row(agent: &str) -> String {
    format!("document.querySelector('[data-testid=\"agent-row-{agent}\"]')")
}

/// (a) The fleet page lists every agent as online; (c) an agent that stops turns offline there
/// while the others stay online; and when the collector itself goes away, no row stays "online":
/// the page marks everything stale instead of showing the last values as live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_page_lists_agents_and_shows_a_stopped_one_offline() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(&["gw-press-1", "gw-press-2", "gw-lathe-1"]).await;
    for a in ["gw-press-1", "gw-press-2", "gw-lathe-1"] {
        stack.wait_online(a).await;
    }
    let browser = Browser::start().await;
    let page = browser.new_page("fleet").await;
    sign_in(&page, &stack.base, &stack.tokens.viewer).await;
    assert_eq!(page.text("#who").await.unwrap(), "vic · viewer");

    for a in ["gw-press-1", "gw-press-2", "gw-lathe-1"] {
        page.wait_for(&format!("{r} && {r}.dataset.state === 'online'", r = row(a)), PATIENCE).await;
    }
    let badge = page.eval(&format!("{}.querySelector('.badge').textContent", row("gw-press-2"))).await;
    assert_eq!(badge, "ONLINE", "the state is spelled out, not colour alone");
    assert!(page.eval("window.__edgeloop.firstRenderMs").await.as_f64().is_some());
    page.screenshot("all-online").await;

    // The filter narrows the list.
    page.type_text("[data-testid=filter]", "press").await;
    page.wait_for(&format!("!{} && !!{}", row("gw-lathe-1"), row("gw-press-1")), PATIENCE).await;
    page.screenshot("filtered").await;
    page.eval("(() => { const f = document.querySelector('[data-testid=filter]'); f.value = ''; f.dispatchEvent(new Event('input')); })()")
        .await;
    page.wait_for(&format!("!!{}", row("gw-lathe-1")), PATIENCE).await;

    stack.stop_agent("gw-press-2").await;
    page.wait_for(&format!("{r} && {r}.dataset.state === 'offline'", r = row("gw-press-2")), PATIENCE).await;
    assert_eq!(page.eval(&format!("{}.querySelector('.badge').textContent", row("gw-press-2"))).await, "OFFLINE");
    assert_eq!(page.eval(&format!("{}.dataset.state", row("gw-press-1"))).await, "online");
    page.screenshot("one-offline").await;

    // The collector goes away: within seconds nothing on the page claims to be live.
    stack.collector.shutdown();
    page.wait_for(
        "[...document.querySelectorAll('[data-testid^=\"agent-row-\"]')].every(r => r.dataset.state !== 'online') \
         && !document.querySelector('[data-testid=banner]').hidden",
        PATIENCE,
    )
    .await;
    assert_eq!(page.eval(&format!("{}.dataset.state", row("gw-press-1"))).await, "stale");
    page.screenshot("collector-gone-all-stale").await;
    drop(browser);
    stack.stop().await;
}

/// (b) A reading the collector stores appears on the machine page's live chart: the chart's
/// point count grows while we watch, and the page's measured lag from the reading's timestamp to
/// its drawing stays within a couple of seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_reading_appears_on_the_live_chart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start(&["gw-chart"]).await;
    stack.wait_online("gw-chart").await;
    let browser = Browser::start().await;
    let page = browser.new_page("chart").await;
    sign_in(&page, &stack.base, &stack.tokens.viewer).await;
    page.goto(&format!("{}/#/agents/gw-chart", stack.base)).await;
    let chart = "document.querySelector('[data-testid=\"chart-machine.temperature\"]')";
    page.wait_for(&format!("{chart} && Number({chart}.dataset.points) > 0"), PATIENCE).await;
    page.screenshot("chart-loaded").await;

    // New readings arrive over the stream: count them in as they come.
    let before = page.eval(&format!("Number({chart}.dataset.points)")).await.as_u64().unwrap();
    let readings_before = page.eval("window.__edgeloop.readings").await.as_u64().unwrap();
    page.wait_for(&format!("Number({chart}.dataset.points) >= {} ", before + 3), PATIENCE).await;
    assert!(page.eval("window.__edgeloop.readings").await.as_u64().unwrap() > readings_before, "grown by SSE readings");
    // The newest point on the chart is recent: readings are drawn as they are stored, not polled.
    let lag_ms = page
        .eval(&format!("(() => {{ const c = {chart}; return Date.now() - Number(c.dataset.lastTs); }})()"))
        .await
        .as_f64()
        .unwrap();
    println!("newest point on the chart: {lag_ms:.0} ms old");
    assert!(lag_ms < 5_000.0, "the newest point on the chart is {lag_ms} ms old");
    let vib = "document.querySelector('[data-testid=\"chart-machine.vibration\"]')";
    page.wait_for(&format!("{vib} && Number({vib}.dataset.points) > 0"), PATIENCE).await;
    assert_eq!(page.eval(&format!("{chart}.dataset.state")).await, "live");
    page.screenshot("chart-live").await;
    drop(browser);
    stack.stop().await;
}

/// (d) An alert fires (an agent goes offline; the fleet rule fires at once); a maintenance user
/// acknowledges it on the alerts page, and the API then shows who acknowledged it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_an_alert_on_the_page_is_recorded_by_the_api() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut stack = Stack::start(&["gw-ack"]).await;
    stack.wait_online("gw-ack").await;
    stack.stop_agent("gw-ack").await;
    let fp = harness::wait_for("the agent_offline alert firing", PATIENCE, || async {
        let alerts = stack.get(&stack.tokens.admin, "/api/v1/alerts").await;
        alerts.as_array().unwrap().iter().find_map(|v| {
            (v["alert"]["rule"] == "agent_gone"
                && v["alert"]["labels"]["agent"] == "gw-ack"
                && v["alert"]["state"] == "firing")
                .then(|| v["alert"]["fingerprint"].as_str().unwrap().to_owned())
        })
    })
    .await;

    let browser = Browser::start().await;
    let page = browser.new_page("ack").await;
    sign_in(&page, &stack.base, &stack.tokens.maintenance).await;
    page.goto(&format!("{}/#/alerts", stack.base)).await;
    let alert_row = format!("document.querySelector({})", js_str(&format!("[data-testid=\"alert-{fp}\"]")));
    page.wait_for(
        &format!("{alert_row} && {alert_row}.dataset.state === 'firing' && {alert_row}.dataset.acked === 'no'"),
        PATIENCE,
    )
    .await;
    page.screenshot("alert-firing").await;
    page.click(&format!("[data-testid=\"ack-{fp}\"]")).await;
    page.wait_for(&format!("{alert_row} && {alert_row}.dataset.acked === 'yes'"), PATIENCE).await;
    page.screenshot("alert-acked").await;

    let alerts = stack.get(&stack.tokens.viewer, "/api/v1/alerts").await;
    let view = alerts.as_array().unwrap().iter().find(|v| v["alert"]["fingerprint"] == fp.as_str()).unwrap();
    assert_eq!(view["alert"]["acked_by"], "mo", "{view}");
    assert!(view["alert"]["acked_ns"].as_i64().is_some(), "{view}");

    // The silence form opens prefilled from the alert's labels.
    page.click(&format!("[data-testid=\"silence-{fp}\"]")).await;
    page.wait_for("!!document.querySelector('[data-testid=silence-form]')", PATIENCE).await;
    let form = page.text("[data-testid=silence-form]").await.unwrap();
    assert!(form.contains("agent") && form.contains("team"), "{form}");
    page.screenshot("silence-form").await;
    drop(browser);
    stack.stop().await;
}

/// (e) A viewer sees the "Shut down" button, but clicking it (and confirming) gets the server's
/// refusal shown on the page; the refusal is in the audit log, and no command went to the agent.
/// Also: an unknown token never gets past the login box.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_shut_a_machine_down_and_the_refusal_is_audited() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let _one = ONE_AT_A_TIME.lock().await;
    let stack = Stack::start(&["gw-guarded"]).await;
    stack.wait_online("gw-guarded").await;

    // Everything published to the agent's command topic, as the agent would receive it.
    let broker = stack.collector.broker_addr().unwrap();
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("dashboard-test-observer", broker.ip().to_string(), broker.port()), 16);
    let cmd_topic = edgeloop_shared::topic::topic("gw-guarded", edgeloop_shared::topic::Channel::Cmd);
    client.subscribe(&cmd_topic, QoS::AtLeastOnce).await.unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (suback_tx, suback) = tokio::sync::oneshot::channel();
    let observer = tokio::spawn(async move {
        let mut suback_tx = Some(suback_tx);
        while let Ok(ev) = events.poll().await {
            match ev {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = suback_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = seen_tx.send(p.topic);
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(PATIENCE, suback).await.unwrap().unwrap();

    let browser = Browser::start().await;
    let page = browser.new_page("refused").await;
    page.goto(&format!("{}/", stack.base)).await;
    page.type_text("[data-testid=token]", "el_0000000000000000000000000000000000000000000000000000000000000000").await;
    page.click("[data-testid=login]").await;
    page.wait_for("!document.querySelector('[data-testid=login-error]').hidden", PATIENCE).await;
    assert!(page.eval("document.querySelector('#nav').hidden").await == true, "an unknown token sees nothing");
    page.screenshot("unknown-token").await;

    sign_in(&page, &stack.base, &stack.tokens.viewer).await;
    page.goto(&format!("{}/#/agents/gw-guarded", stack.base)).await;
    page.wait_for("document.querySelector('[data-testid=agent-state]').textContent === 'ONLINE'", PATIENCE).await;
    page.click("[data-testid=shutdown]").await;
    page.wait_for("!document.querySelector('[data-testid=shutdown-confirm-box]').hidden", PATIENCE).await;
    page.screenshot("confirm-step").await;
    page.type_text("[data-testid=shutdown-reason]", "bearing noise").await;
    page.click("[data-testid=shutdown-confirm]").await;
    let error = page
        .wait_for(
            "(() => { const e = document.querySelector('[data-testid=error]'); return !e.hidden && e.textContent; })()",
            PATIENCE,
        )
        .await;
    let error = error.as_str().unwrap().to_owned();
    assert!(error.contains("403") && error.contains("viewer"), "the refusal is shown: {error}");
    page.screenshot("refused").await;

    let record = harness::wait_for("the refusal in the audit log", PATIENCE, || async {
        let audit = stack.get(&stack.tokens.admin, "/api/v1/audit").await;
        audit.as_array().unwrap().iter().find(|r| r["agent"] == "gw-guarded" && r["verdict"] == "refused").cloned()
    })
    .await;
    assert_eq!(record["issuer"], "token:vic", "{record}");
    assert!(record["action"].as_str().unwrap().contains("shutdown"), "{record}");

    // The audit page (as an admin) lists it too.
    let admin = browser.new_page("refused-audit").await;
    sign_in(&admin, &stack.base, &stack.tokens.admin).await;
    admin.goto(&format!("{}/#/audit", stack.base)).await;
    admin.wait_for("!!document.querySelector('[data-testid=audit-table] tr[data-verdict=refused]')", PATIENCE).await;
    admin.screenshot("audit").await;

    // Nothing reached the agent: no command on its topic, nothing in its own command log.
    tokio::time::sleep(Duration::from_secs(1)).await; // an absence needs a moment to be believed
    assert!(seen.try_recv().is_err(), "a command was published to {cmd_topic}");
    let agent_audit = stack.dir.path().join("gw-guarded").join("audit.jsonl");
    let logged = std::fs::read_to_string(&agent_audit).unwrap_or_default();
    assert!(logged.trim().is_empty(), "the agent logged a command: {logged}");
    observer.abort();
    drop(browser);
    stack.stop().await;
}

/// The harness itself on a static page: evaluate, type, click, wait, screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_harness_drives_a_static_page() {
    let browser = Browser::start().await;
    let page = browser.new_page("harness").await;
    page.goto(
        "data:text/html,<input id=i><button id=b onclick=\"document.title=document.getElementById('i').value; \
         console.log('clicked', document.title)\">go</button>",
    )
    .await;
    page.type_text("#i", "hello").await;
    page.click("#b").await;
    page.wait_for("document.title === 'hello'", Duration::from_secs(10)).await;
    assert_eq!(page.eval("1 + 2").await, json!(3));
    let shot = page.screenshot("static").await;
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", shot.display());
    assert!(browser.console().iter().any(|l| l.contains("clicked") && l.contains("hello")), "{:?}", browser.console());
    page.close().await;
}
