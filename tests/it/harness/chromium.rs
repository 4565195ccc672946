//! A headless Chromium driven over the Chrome DevTools Protocol, for the dashboard tests.
//!
//! Debian's `chromium` runs as a child process with its own temp profile and
//! `--remote-debugging-port=0`: it picks a free port itself and writes it to `DevToolsActivePort`
//! in the profile, so nothing here guesses a port. The client speaks CDP over one websocket to the
//! browser target and attaches to pages with flattened sessions (`Target.attachToTarget`, commands
//! carry a `sessionId`). Enough of CDP for tests: navigate, evaluate, poll a condition, click,
//! type, screenshot. Chromium is killed when the [`Browser`] is dropped.
//!
//! Helpers panic with a clear message (they serve tests); a failed `wait_for` saves a screenshot
//! and prints the page's console first.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// The browser binary: `$CHROMIUM`, else `chromium` on the PATH.
pub fn chromium_binary() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("chromium"), PathBuf::from)
}

struct Cdp {
    next_id: AtomicU64,
    pending: Pending,
    out: mpsc::UnboundedSender<String>,
    /// Console messages and uncaught exceptions of every page, newest last (bounded).
    console: Arc<Mutex<Vec<String>>>,
}

impl Cdp {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.out.send(msg.to_string()).map_err(|_| format!("{method}: the browser connection is closed"))?;
        let answer = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| format!("{method}: no answer from the browser within 30 s"))?
            .map_err(|_| format!("{method}: the browser connection closed"))?;
        if let Some(err) = answer.get("error") {
            return Err(format!("{method}: {err}"));
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }
}

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    cdp: Arc<Cdp>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium and connects to its DevTools endpoint.
    pub async fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new(chromium_binary())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (apt-get install chromium): {e}", chromium_binary().display()));
        let mut browser_guard = ChildGuard(Some(child));

        // Chromium writes "<port>\n<browser ws path>" once it listens.
        let port_file = profile.path().join("profile").join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some(port) = text.lines().next().and_then(|l| l.trim().parse::<u16>().ok())
                && text.lines().count() >= 2
            {
                break port;
            }
            if let Some(status) = browser_guard.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(profile.path().join("chromium.log")).unwrap_or_default();
                panic!("chromium exited ({status}) before it listened:\n{log}");
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let version: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/version"))
            .await
            .and_then(|r| r.error_for_status())
            .unwrap()
            .text()
            .await
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        let ws_url = version["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(ws_url.as_str(), Some(config), false).await.unwrap();
        let (mut sink, mut stream) = ws.split();

        let pending: Pending = Arc::default();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        });
        let reader = {
            let pending = pending.clone();
            let console = console.clone();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    if let Some(id) = v.get("id").and_then(Value::as_u64) {
                        if let Some(tx) = pending.lock().unwrap().remove(&id) {
                            let _ = tx.send(v);
                        }
                        continue;
                    }
                    let line = match v["method"].as_str() {
                        Some("Runtime.consoleAPICalled") => {
                            let args: Vec<String> = v["params"]["args"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .map(|x| {
                                            x.get("value")
                                                .map_or_else(|| x["description"].to_string(), |v| v.to_string())
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            Some(format!(
                                "console.{}: {}",
                                v["params"]["type"].as_str().unwrap_or("log"),
                                args.join(" ")
                            ))
                        }
                        Some("Runtime.exceptionThrown") => {
                            Some(format!("exception: {}", v["params"]["exceptionDetails"]["exception"]["description"]))
                        }
                        Some("Log.entryAdded") => Some(format!(
                            "log.{}: {} {}",
                            v["params"]["entry"]["level"].as_str().unwrap_or(""),
                            v["params"]["entry"]["text"].as_str().unwrap_or(""),
                            v["params"]["entry"]["url"].as_str().unwrap_or("")
                        )),
                        _ => None,
                    };
                    if let Some(line) = line {
                        let mut c = console.lock().unwrap();
                        if c.len() >= 200 {
                            c.remove(0);
                        }
                        c.push(line);
                    }
                }
            })
        };
        let child = browser_guard.0.take().unwrap();
        Browser {
            child,
            cdp: Arc::new(Cdp { next_id: AtomicU64::new(1), pending, out, console }),
            reader,
            writer,
            _profile: profile,
        }
    }

    /// A new tab (about:blank), with screenshots saved as
    /// `target/test-artifacts/dashboard/<test>-<step>.png`.
    pub async fn new_page(&self, test: &str) -> Page {
        let target = self.cdp.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await.unwrap();
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = self
            .cdp
            .call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }))
            .await
            .unwrap();
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let page = Page { cdp: self.cdp.clone(), session, target_id, test: test.to_owned(), shots: AtomicU64::new(0) };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({})).await;
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        page
    }

    /// The page consoles' last lines (for failure messages).
    pub fn console(&self) -> Vec<String> {
        self.cdp.console.lock().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.abort();
        self.writer.abort();
    }
}

/// Kills a half-started browser when `start` panics.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where a test's screenshots go: `<workspace>/target/test-artifacts/dashboard/`.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts").join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One tab.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    target_id: String,
    test: String,
    shots: AtomicU64,
}

/// A JS string literal of `s` (for building expressions).
pub fn js_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(Some(&self.session), method, params).await.unwrap_or_else(|e| panic!("CDP {e}"))
    }

    /// Navigates and waits for the document to load.
    pub async fn goto(&self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            panic!("navigating to {url}: {e}");
        }
        self.wait_for(
            &format!("location.href.startsWith({}) && document.readyState === 'complete'", js_str(url)),
            Duration::from_secs(20),
        )
        .await;
    }

    /// Closes the tab.
    pub async fn close(self) {
        let _ = self.cdp.call(None, "Target.closeTarget", json!({ "targetId": self.target_id })).await;
    }

    /// Reloads the page and waits for it to load.
    pub async fn reload(&self) {
        // A marker on the old document tells it apart from the new one.
        self.eval("window.__before_reload = true").await;
        self.call("Page.reload", json!({ "ignoreCache": true })).await;
        self.wait_for("!window.__before_reload && document.readyState === 'complete'", Duration::from_secs(20)).await;
    }

    /// Evaluates `js` (awaiting a promise) and returns its value; an exception is an `Err`.
    pub async fn try_eval(&self, js: &str) -> Result<Value, String> {
        let r = self
            .cdp
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({ "expression": js, "awaitPromise": true, "returnByValue": true, "userGesture": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"].as_str().map_or_else(|| ex["text"].to_string(), str::to_owned);
            return Err(format!("{js}: {what}"));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `js`, panicking on an exception.
    pub async fn eval(&self, js: &str) -> Value {
        self.try_eval(js).await.unwrap_or_else(|e| panic!("evaluating {e}"))
    }

    /// Polls `condition` (a JS expression) every 100 ms until it is truthy; on timeout saves a
    /// screenshot (`<step>-timeout`) and panics with the page's console.
    pub async fn wait_for(&self, condition: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.try_eval(condition).await {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => last = v.to_string(),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot("timeout").await;
                let console = self.cdp.console.lock().unwrap().join("\n  ");
                let html = self
                    .try_eval("document.body ? document.body.innerText.slice(0, 3000) : ''")
                    .await
                    .unwrap_or_default();
                panic!(
                    "timed out after {timeout:?} waiting for `{condition}` (last: {last}); screenshot {}\npage text:\n{}\nconsole:\n  {console}",
                    shot.display(),
                    html.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for `selector` to exist, then clicks it (scrolled into view, a real DOM click).
    pub async fn click(&self, selector: &str) {
        let sel = js_str(selector);
        self.wait_for(&format!("!!document.querySelector({sel})"), Duration::from_secs(20)).await;
        let clicked = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e || e.disabled) return false; \
                 e.scrollIntoView({{block: 'center'}}); e.click(); return true; }})()"
            ))
            .await;
        assert_eq!(clicked, Value::Bool(true), "{selector} is missing or disabled");
    }

    /// Focuses `selector`, clears it and types `text` (as keyboard input: `input` events fire).
    pub async fn type_text(&self, selector: &str, text: &str) {
        let sel = js_str(selector);
        self.wait_for(&format!("!!document.querySelector({sel})"), Duration::from_secs(20)).await;
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); e.focus(); e.select && e.select(); }})()"
        ))
        .await;
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// The text of `selector`, or `None` when it does not exist.
    pub async fn text(&self, selector: &str) -> Option<String> {
        let sel = js_str(selector);
        let v = self
            .eval(&format!("(() => {{ const e = document.querySelector({sel}); return e ? e.textContent : null; }})()"))
            .await;
        v.as_str().map(str::to_owned)
    }

    /// Saves a PNG of the viewport as `<artifacts>/<test>-<nn>-<step>.png` and returns its path.
    pub async fn screenshot(&self, step: &str) -> PathBuf {
        let n = self.shots.fetch_add(1, Ordering::Relaxed);
        let path = artifacts_dir().join(format!("{}-{n:02}-{step}.png", self.test));
        match self.cdp.call(Some(&self.session), "Page.captureScreenshot", json!({ "format": "png" })).await {
            Ok(r) => {
                let bytes = base64_decode(r["data"].as_str().unwrap_or_default());
                if let Err(e) = std::fs::write(&path, bytes) {
                    eprintln!("cannot save {}: {e}", path.display());
                }
            }
            Err(e) => eprintln!("screenshot {step} failed: {e}"),
        }
        path
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Standard base64 (CDP's screenshot encoding), without a dependency for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
