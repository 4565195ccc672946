//! The fleet as people see it: agents, their latest readings, series and events.

use std::collections::HashMap;

use axum::{Extension, Json, extract::State};
use serde::{Deserialize, Serialize};

use edgeloop_shared::clock::now_ns;

use crate::{
    api::{
        auth::Caller,
        error::ApiError,
        extract::{P, Q},
        state::ApiState,
    },
    fleet::AgentView,
    live::{EventRecord, downsample},
    model::AlertState,
    store::Store,
};

pub async fn me(Extension(caller): Extension<Caller>) -> Json<Caller> {
    Json(caller)
}

/// One agent's health, as the fleet page lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSummary {
    pub agent: String,
    pub site: Option<String>,
    pub online: bool,
    /// Online, but no reading stored for three of its report intervals.
    pub stale: bool,
    pub last_seen_ns: i64,
    pub version: Option<String>,
    pub backlog_readings: u64,
    pub oldest_unsent_ns: Option<i64>,
    pub dropped_total: u64,
    pub latched: Vec<String>,
    pub stale_sensors: Vec<String>,
    pub sensors: Vec<String>,
    pub points_stored: u64,
    pub firing_alerts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latest {
    pub sensor: String,
    pub ts_ns: i64,
    pub value: f64,
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub summary: AgentSummary,
    pub latest: Vec<Latest>,
}

/// Firing alerts per agent (the `agent` label).
fn firing_by_agent(state: &ApiState) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    if let Some(a) = &state.automation {
        for v in a.alerts() {
            if v.alert.state == AlertState::Firing
                && let Some(agent) = v.alert.labels.get("agent")
            {
                *out.entry(agent.clone()).or_default() += 1;
            }
        }
    }
    out
}

fn summary(state: &ApiState, view: &AgentView, firing: &HashMap<String, u32>, now: i64) -> AgentSummary {
    let report = view.entry.report.as_ref();
    let latest = state.live.latest(&view.agent);
    let newest = latest.iter().map(|l| l.1).max().into_iter().chain(view.entry.newest_reading_ns).max();
    // The agent's report lists the sensors it tracks health for; the readings stored name the rest.
    let sensors = match report {
        Some(r) if !r.sensors.is_empty() => r.sensors.clone(),
        _ => latest.iter().map(|l| l.0.clone()).collect(),
    };
    let stale = view.online
        && report.is_some_and(|r| {
            let quiet_ns = 3 * i64::from(r.interval_ms.max(1)) * 1_000_000;
            !sensors.is_empty() && newest.is_none_or(|n| now - n > quiet_ns)
        });
    AgentSummary {
        agent: view.agent.clone(),
        site: state.live.site(&view.agent),
        online: view.online,
        stale,
        last_seen_ns: view.entry.last_seen_ns,
        version: report.map(|r| r.version.clone()),
        backlog_readings: report.map_or(0, |r| r.backlog_readings),
        oldest_unsent_ns: report.and_then(|r| r.oldest_unsent_ns),
        dropped_total: report.map_or(0, |r| r.dropped_total),
        latched: report.map(|r| r.latched.clone()).unwrap_or_default(),
        stale_sensors: report.map(|r| r.stale_sensors.clone()).unwrap_or_default(),
        sensors,
        points_stored: view.entry.points_stored,
        firing_alerts: firing.get(&view.agent).copied().unwrap_or(0),
    }
}

/// Every agent's summary, by agent id.
pub fn summaries(state: &ApiState) -> Vec<AgentSummary> {
    let firing = firing_by_agent(state);
    let now = now_ns();
    state.fleet.agents().iter().map(|v| summary(state, v, &firing, now)).collect()
}

pub async fn agents(State(state): State<ApiState>) -> Json<Vec<AgentSummary>> {
    Json(summaries(&state))
}

pub async fn agent(State(state): State<ApiState>, P(agent): P<String>) -> Result<Json<AgentDetail>, ApiError> {
    state.require_agent(&agent)?;
    let firing = firing_by_agent(&state);
    let view = state.fleet.agents().into_iter().find(|v| v.agent == agent).unwrap_or_else(|| AgentView {
        agent: agent.clone(),
        online: false,
        entry: Default::default(),
    });
    let summary = summary(&state, &view, &firing, now_ns());
    let latest = state
        .live
        .latest(&agent)
        .into_iter()
        .map(|(sensor, ts_ns, value)| {
            let stale = summary.stale_sensors.contains(&sensor);
            Latest { sensor, ts_ns, value, stale }
        })
        .collect();
    Ok(Json(AgentDetail { summary, latest }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    sensor: String,
    since_ns: Option<i64>,
    until_ns: Option<i64>,
    max_points: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct SeriesAnswer {
    agent: String,
    sensor: String,
    /// `recent` (the collector's memory), `influxdb` or `local` (the store).
    source: &'static str,
    points: Vec<(i64, f64)>,
}

/// How far back the collector's memory reaches by default (lib.rs keeps 15 minutes).
const DEFAULT_RANGE_NS: i64 = 15 * 60 * 1_000_000_000;
const MAX_POINTS: usize = 10_000;

pub async fn series(
    State(state): State<ApiState>,
    P(agent): P<String>,
    Q(q): Q<SeriesQuery>,
) -> Result<Json<SeriesAnswer>, ApiError> {
    state.require_agent(&agent)?;
    let until = q.until_ns.unwrap_or_else(now_ns);
    let since = q.since_ns.unwrap_or(until.saturating_sub(DEFAULT_RANGE_NS));
    if since > until {
        return Err(ApiError::BadRequest(format!("since_ns ({since}) is after until_ns ({until})")));
    }
    let max = q.max_points.unwrap_or(600);
    if !(2..=MAX_POINTS).contains(&max) {
        return Err(ApiError::BadRequest(format!("max_points is {max}; it must be between 2 and {MAX_POINTS}")));
    }
    let answer = |source, points| Json(SeriesAnswer { agent: agent.clone(), sensor: q.sensor.clone(), source, points });
    // The live cache answers only when it reaches back to `since`: it cannot tell a series that
    // began after it started from one whose older points it never saw (a restarted collector).
    // Then the store is asked, and what the cache holds is the answer only if the store cannot.
    let slack = ((until - since) / 20).max(10_000_000_000);
    let cached = state.live.series(&agent, &q.sensor, since, until);
    if let Some(points) = &cached
        && points.first().is_some_and(|p| p.0 <= since.saturating_add(slack))
    {
        return Ok(answer("recent", downsample(points, max)));
    }
    let fallback = |e: ApiError| match &cached {
        Some(points) if !points.is_empty() => {
            tracing::debug!(error = e.message(), "series: the store cannot answer; the recent window does");
            Ok(answer("recent", downsample(points, max)))
        }
        _ => Err(e),
    };
    match &*state.store {
        Store::Local(_) => {
            let store = state.store.clone();
            let (a, s) = (agent.clone(), q.sensor.clone());
            let points = tokio::task::spawn_blocking(move || match &*store {
                Store::Local(l) => l.series(&a, &s, since, until, max),
                Store::Influx(_) => Ok(Vec::new()),
            })
            .await
            .map_err(|e| ApiError::internal("the series read failed", e))?
            .map_err(|e| ApiError::internal("the local store cannot be read", e))?;
            Ok(answer("local", points))
        }
        Store::Influx(influx) => match influx.series(&agent, &q.sensor, since, until, max).await {
            Ok(points) => Ok(answer("influxdb", points)),
            Err(crate::store::influx::QueryError::Unsupported(why)) => fallback(ApiError::NotImplemented(format!(
                "readings older than the collector's recent window cannot be read from this database: {why}"
            ))),
            Err(crate::store::influx::QueryError::Failed(detail)) => fallback(ApiError::BadGateway {
                message: "the database did not answer the series query".into(),
                detail,
            }),
        },
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    agent: Option<String>,
    limit: Option<usize>,
}

pub async fn events(State(state): State<ApiState>, Q(q): Q<EventsQuery>) -> Result<Json<Vec<EventRecord>>, ApiError> {
    if let Some(a) = &q.agent {
        state.require_agent(a)?;
    }
    let limit = q.limit.unwrap_or(200).min(2000);
    Ok(Json(state.live.events(q.agent.as_deref(), limit)))
}
