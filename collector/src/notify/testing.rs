//! What the notifier's unit tests share: a scripted HTTP receiver, fast channel timings, a
//! notifier started on a temp dir, and polling helpers.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use edgeloop_shared::units::HumanDuration;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ChannelConfig, Notifier, NotifierHandle, example_notification};
use crate::model::Notification;

#[derive(Debug)]
pub(super) struct Request {
    pub(super) path: String,
    pub(super) headers: BTreeMap<String, String>,
    pub(super) body: Vec<u8>,
}

impl Request {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A scripted answer: status, extra header lines ("Name: value\r\n"), body.
pub(super) type Answer = (u16, &'static str, &'static str);

/// A one-request-per-connection HTTP/1.1 receiver answering with `script` in turn (the last
/// answer repeats). Records every request.
pub(super) async fn http_receiver(script: Vec<Answer>) -> (String, mpsc::UnboundedReceiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut served = 0;
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut request_line = String::new();
            if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                continue;
            }
            let mut headers = BTreeMap::new();
            loop {
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap();
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
            let len: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
            let mut body = vec![0; len];
            stream.read_exact(&mut body).await.unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
            let _ = tx.send(Request { path, headers, body });
            let (status, extra, reply) = script[served.min(script.len() - 1)];
            served += 1;
            let response = format!(
                "HTTP/1.1 {status} Scripted\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
            let _ = stream.get_mut().write_all(response.as_bytes()).await;
            let _ = stream.get_mut().shutdown().await;
        }
    });
    (url, rx)
}

/// An address where nothing listens: connections are refused at once.
pub(super) async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    url
}

pub(super) fn fast(mut c: ChannelConfig) -> ChannelConfig {
    let (ms10, ms40, s2) = (
        HumanDuration(Duration::from_millis(10)),
        HumanDuration(Duration::from_millis(40)),
        HumanDuration(Duration::from_secs(2)),
    );
    match &mut c {
        ChannelConfig::Webhook(w) => (w.retry_min, w.retry_max, w.timeout) = (ms10, ms40, s2),
        ChannelConfig::Slack(w) => (w.retry_min, w.retry_max, w.timeout) = (ms10, ms40, s2),
        ChannelConfig::Pagerduty(w) => (w.retry_min, w.retry_max, w.timeout) = (ms10, ms40, s2),
        ChannelConfig::Smtp(w) => (w.retry_min, w.retry_max, w.timeout) = (ms10, ms40, s2),
    }
    c
}

pub(super) fn webhook(url: &str) -> ChannelConfig {
    fast(serde_json::from_value(json!({"kind": "webhook", "url": url})).unwrap())
}

pub(super) fn notification(receivers: &[&str]) -> Notification {
    let mut n = example_notification();
    n.receivers = receivers.iter().map(|r| r.to_string()).collect();
    n
}

pub(super) fn start(channels: Vec<(&str, ChannelConfig)>, dir: &Path) -> (NotifierHandle, CancellationToken) {
    let shutdown = CancellationToken::new();
    let channels = channels.into_iter().map(|(id, c)| (id.to_string(), c)).collect();
    let handle = Notifier::start(channels, dir.to_path_buf(), shutdown.clone()).unwrap();
    (handle, shutdown)
}

pub(super) async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

pub(super) async fn next(rx: &mut mpsc::UnboundedReceiver<Request>) -> Request {
    tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap()
}

pub(super) fn outbox_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}
