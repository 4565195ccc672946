//! Rule checks and pushes, commands to agents, approvals and the audit log.
//!
//! A command request refused here (the caller's role, an unknown agent, a rule file with
//! problems) is written to the audit log like the commander's own refusals: "who asked for what
//! and was told no" is part of the record (brief, guarantee 8).

use std::path::Path;

use axum::{Extension, Json, extract::State, http::StatusCode};
use edgeloop_rules::config::{Context, RuleFile};
use edgeloop_shared::{config::ConfigError, model::CommandAction};
use serde::{Deserialize, Serialize};

use crate::{
    api::{
        auth::{Caller, Role},
        error::{ApiError, ProblemView},
        extract::{Body, P, Q},
        route::{Required, forbidden},
        state::ApiState,
    },
    automation::commands::{AuditRecord, AwaitingApproval, CommandError},
};

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NoKey => ApiError::Unavailable(e.to_string()),
            CommandError::BadAgent(_) => ApiError::BadRequest(e.to_string()),
            CommandError::UnknownApproval(_) => ApiError::NotFound(e.to_string()),
            CommandError::Send(_) => {
                ApiError::BadGateway { message: "the command could not be published".into(), detail: e.to_string() }
            }
            CommandError::Key { .. } | CommandError::Audit { .. } => ApiError::internal("the command was not sent", e),
        }
    }
}

/// What the checks cannot see without the agent's own config.
const NOTE: &str = "checked without the agent's config: references to its serial and MQTT sources and its [commands] \
                    shutdown_actions are not checked here (the agent checks them before it loads the file)";

/// The same validator as `edgeloop-agent rules check FILE` without `--config`.
fn check(toml: &str) -> Result<RuleFile, Vec<ProblemView>> {
    match RuleFile::parse(toml, Path::new("rules.toml"), &Context::default()) {
        Ok(file) => Ok(file),
        Err(ConfigError::Invalid { problems, .. }) => {
            Err(problems.into_iter().map(|p| ProblemView { key: p.key, message: p.message }).collect())
        }
        Err(ConfigError::Parse { message, .. }) => Err(vec![ProblemView { key: "toml".into(), message }]),
        Err(e) => Err(vec![ProblemView { key: "toml".into(), message: e.to_string() }]),
    }
}

/// Refuses (and audits) a command request from a caller below `needs`.
async fn authorize(
    state: &ApiState,
    caller: &Caller,
    needs: Role,
    what: &str,
    agent: &str,
    action: &CommandAction,
) -> Result<(), ApiError> {
    if caller.role >= needs {
        return Ok(());
    }
    let err = forbidden(caller, what, needs);
    refuse(state, caller, agent, action, err.message()).await;
    Err(err)
}

async fn refuse(state: &ApiState, caller: &Caller, agent: &str, action: &CommandAction, why: &str) {
    tracing::warn!(caller = %caller.name, role = %caller.role, agent, action = action.name(), why, "command refused");
    if let Some(a) = &state.automation {
        a.refuse_command(agent, action, &caller.issuer(), why).await;
    }
}

/// 404 for an unknown agent, audited.
async fn require_agent(state: &ApiState, caller: &Caller, agent: &str, action: &CommandAction) -> Result<(), ApiError> {
    if let Err(e) = state.require_agent(agent) {
        refuse(state, caller, agent, action, e.message()).await;
        return Err(e);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct CommandAccepted {
    command_id: u64,
}

fn accepted(id: u64) -> (StatusCode, Json<CommandAccepted>) {
    (StatusCode::ACCEPTED, Json(CommandAccepted { command_id: id }))
}

#[derive(Debug, Serialize)]
pub struct AgentRules {
    agent: String,
    /// The version of the rule set the agent last reported loading.
    version: Option<u64>,
    /// The rule file last pushed through this collector (since it started).
    toml: Option<String>,
}

pub async fn agent_rules(State(state): State<ApiState>, P(agent): P<String>) -> Result<Json<AgentRules>, ApiError> {
    state.require_agent(&agent)?;
    let toml = state.pushed_rules().get(&agent).cloned();
    Ok(Json(AgentRules { version: state.live.rules_version(&agent), toml, agent }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesCheckRequest {
    toml: String,
    /// The agent the file is meant for (must be known).
    agent: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RulesCheck {
    ok: bool,
    problems: Vec<ProblemView>,
    rules: usize,
    actions: usize,
    note: &'static str,
}

pub async fn check_rules(
    State(state): State<ApiState>,
    Body(req): Body<RulesCheckRequest>,
) -> Result<Json<RulesCheck>, ApiError> {
    if let Some(a) = &req.agent {
        state.require_agent(a)?;
    }
    Ok(Json(match check(&req.toml) {
        Ok(f) => RulesCheck { ok: true, problems: vec![], rules: f.rules.len(), actions: f.actions.len(), note: NOTE },
        Err(problems) => RulesCheck { ok: false, problems, rules: 0, actions: 0, note: NOTE },
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRulesRequest {
    toml: String,
}

pub async fn push_rules(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(required): Extension<Required>,
    P(agent): P<String>,
    Body(req): Body<PushRulesRequest>,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let toml = req.toml;
    let action = CommandAction::PushRules { toml: toml.clone() };
    authorize(&state, &caller, required.role, required.what, &agent, &action).await?;
    require_agent(&state, &caller, &agent, &action).await?;
    let automation = state.automation()?;
    if let Err(problems) = check(&toml) {
        let message = format!("the rule file has {} problem(s); nothing was sent", problems.len());
        refuse(&state, &caller, &agent, &action, &message).await;
        return Err(ApiError::Invalid { message, problems });
    }
    let id = automation.command(&agent, action, &caller.issuer()).await?;
    state.pushed_rules().insert(agent, toml);
    Ok(accepted(id))
}

/// A command a person may send (rule pushes go through `POST /agents/{agent}/rules`, checked).
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandRequest {
    Shutdown { reason: String },
    ResetLatch { rule: String },
}

pub async fn command(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(required): Extension<Required>,
    P(agent): P<String>,
    Body(req): Body<CommandRequest>,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let action = match req {
        CommandRequest::Shutdown { reason } => CommandAction::Shutdown { reason },
        CommandRequest::ResetLatch { rule } => CommandAction::ResetLatch { rule },
    };
    authorize(&state, &caller, required.role, action.name(), &agent, &action).await?;
    require_agent(&state, &caller, &agent, &action).await?;
    let empty = match &action {
        CommandAction::Shutdown { reason } => reason.trim().is_empty().then_some("reason"),
        CommandAction::ResetLatch { rule } => rule.trim().is_empty().then_some("rule"),
        CommandAction::PushRules { .. } => None,
    };
    if let Some(field) = empty {
        return Err(ApiError::BadRequest(format!("{field} must not be empty")));
    }
    let automation = state.automation()?;
    Ok(accepted(automation.command(&agent, action, &caller.issuer()).await?))
}

pub async fn approvals(State(state): State<ApiState>) -> Result<Json<Vec<AwaitingApproval>>, ApiError> {
    Ok(Json(state.automation()?.approvals().await))
}

pub async fn approve(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Extension(required): Extension<Required>,
    P(id): P<u64>,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let automation = state.automation()?;
    if caller.role < required.role {
        let err = forbidden(&caller, required.what, required.role);
        if let Some(a) = automation.approvals().await.into_iter().find(|a| a.id == id) {
            refuse(&state, &caller, &a.agent, &a.action, err.message()).await;
        }
        return Err(err);
    }
    Ok(accepted(automation.approve(id, &caller.issuer()).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<usize>,
}

pub async fn audit(State(state): State<ApiState>, Q(q): Q<AuditQuery>) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let automation = state.automation()?.clone();
    let limit = q.limit.unwrap_or(200).min(10_000);
    // The log is a file read from its start.
    let records = tokio::task::spawn_blocking(move || automation.audit(limit))
        .await
        .map_err(|e| ApiError::internal("the audit log could not be read", e))?;
    Ok(Json(records))
}
