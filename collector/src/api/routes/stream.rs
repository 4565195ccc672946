//! Live updates as server-sent events.
//!
//! Each client gets a task that owns its state and a small bounded queue to the response:
//! readings from the live broadcast, at most 10 per second per series (the latest wins), the
//! agents every 2 s, the alerts when they changed (checked every second). A client that reads
//! slowly fills its queue, the task waits, and the broadcast behind it lags: the task then skips
//! ahead (`RecvError::Lagged`), so a slow client holds a bounded amount of memory, never a backlog.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{error::ApiError, extract::Q, routes::fleet::summaries, state::ApiState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Read by the role gate.
    #[allow(dead_code)]
    token: Option<String>,
    agent: Option<String>,
    /// `false`: leave reading events out (the fleet overview draws none).
    readings: Option<bool>,
}

type Events = Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

pub async fn stream(State(state): State<ApiState>, Q(q): Q<StreamQuery>) -> Result<Events, ApiError> {
    if let Some(a) = &q.agent {
        state.require_agent(a)?;
    }
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(feed(state, q.agent, q.readings.unwrap_or(true), tx));
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}

#[derive(Serialize)]
struct ReadingEvent<'a> {
    agent: &'a str,
    sensor: &'a str,
    ts_ns: i64,
    value: f64,
}

fn event<T: Serialize>(name: &str, data: &T) -> Option<Event> {
    Event::default().event(name).json_data(data).ok()
}

/// Sends unless the client left or the collector stops; `false` then.
async fn send(state: &ApiState, tx: &mpsc::Sender<Result<Event, Infallible>>, event: Option<Event>) -> bool {
    let Some(event) = event else { return true };
    tokio::select! {
        r = tx.send(Ok(event)) => r.is_ok(),
        _ = state.shutdown.cancelled() => false,
    }
}

async fn feed(state: ApiState, agent: Option<String>, readings: bool, tx: mpsc::Sender<Result<Event, Infallible>>) {
    let mut batches = state.live.subscribe();
    // (agent, sensor) → the latest reading not sent yet.
    let mut pending: HashMap<(String, String), (i64, f64)> = HashMap::new();
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    let mut agents = tokio::time::interval(Duration::from_secs(2));
    let mut alerts = tokio::time::interval(Duration::from_secs(1));
    for t in [&mut flush, &mut agents, &mut alerts] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut last_alerts = None;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = tx.closed() => break,
            b = batches.recv() => match b {
                Ok(batch) => {
                    if !readings || agent.as_ref().is_some_and(|a| *a != batch.agent) {
                        continue;
                    }
                    for s in &batch.series {
                        if let Some(p) = s.points.iter().max_by_key(|p| p.ts_ns) {
                            let slot = pending.entry((batch.agent.clone(), s.sensor.clone())).or_insert((p.ts_ns, p.value));
                            if p.ts_ns >= slot.0 {
                                *slot = (p.ts_ns, p.value);
                            }
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::debug!(skipped = n, "sse client behind: skipped ahead"),
                Err(RecvError::Closed) => break,
            },
            // Every series at most once per flush: ≤ 10 readings per second per series.
            _ = flush.tick() => {
                for ((agent, sensor), (ts_ns, value)) in std::mem::take(&mut pending) {
                    let e = event("reading", &ReadingEvent { agent: &agent, sensor: &sensor, ts_ns, value });
                    if !send(&state, &tx, e).await {
                        return;
                    }
                }
            }
            _ = agents.tick() => {
                if !send(&state, &tx, event("agents", &summaries(&state))).await {
                    return;
                }
            }
            _ = alerts.tick() => {
                let Some(automation) = &state.automation else { continue };
                let mut list = automation.alerts();
                list.sort_by_key(|v| std::cmp::Reverse(v.alert.started_ns));
                let json = serde_json::to_string(&list).unwrap_or_default();
                if last_alerts.as_ref() != Some(&json) {
                    let e = Event::default().event("alerts").data(&json);
                    last_alerts = Some(json);
                    if !send(&state, &tx, Some(e)).await {
                        return;
                    }
                }
            }
        }
    }
}
