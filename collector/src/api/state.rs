//! What the handlers share: the collector's parts the API reads and drives.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio_util::sync::CancellationToken;

use super::{auth::Tokens, error::ApiError};
use crate::{automation::Automation, fleet::Fleet, live::Live, stats::CollectorStats, store::Store};

/// What the API reads and drives.
pub struct Parts {
    pub stats: Arc<CollectorStats>,
    pub fleet: Arc<Fleet>,
    pub live: Arc<Live>,
    pub automation: Option<Arc<Automation>>,
    pub store: Arc<Store>,
    pub tokens: Tokens,
    /// Ends the server-sent event streams.
    pub shutdown: CancellationToken,
}

/// The handlers' shared state.
#[derive(Clone)]
pub struct ApiState(Arc<Shared>);

pub struct Shared {
    pub parts: Parts,
    /// agent → the rule file last pushed to it through this collector.
    pub pushed_rules: Mutex<HashMap<String, String>>,
}

impl std::ops::Deref for ApiState {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0.parts
    }
}

impl ApiState {
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(Shared { parts, pushed_rules: Mutex::default() }))
    }

    pub(crate) fn pushed_rules(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.pushed_rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The automation engine, or 503 when `[automation]` is not configured.
    pub fn automation(&self) -> Result<&Arc<Automation>, ApiError> {
        self.parts_automation().ok_or_else(|| {
            ApiError::Unavailable("automation is not configured ([automation] in the collector config)".into())
        })
    }

    fn parts_automation(&self) -> Option<&Arc<Automation>> {
        self.0.parts.automation.as_ref()
    }

    /// Whether the collector has heard of `agent` (fleet registry or live cache).
    pub fn knows(&self, agent: &str) -> bool {
        self.fleet.agents().iter().any(|a| a.agent == agent)
            || !self.live.latest(agent).is_empty()
            || self.live.site(agent).is_some()
    }

    /// 404 naming the agent when it is unknown.
    pub fn require_agent(&self, agent: &str) -> Result<(), ApiError> {
        if self.knows(agent) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("no agent named {agent:?} is known to this collector")))
        }
    }
}
