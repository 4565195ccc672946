//! The OpenAPI 3.0 document, written from the route table's routes (paths, methods, roles,
//! parameters, bodies, answers) and the schemas below, so it lists exactly what is routed.

use serde_json::{Map, Value, json};

use super::route::{Access, Reply, RouteSpec};

/// The whole document for `routes`.
pub fn document(routes: &[RouteSpec]) -> Value {
    let mut paths = Map::new();
    for r in routes {
        let mut op = Map::new();
        let tag = if r.path.starts_with("/api/v1/") { "api" } else { "public" };
        op.insert("tags".into(), json!([tag]));
        op.insert("summary".into(), json!(r.summary));
        let mut description = String::new();
        match r.access {
            Access::Public => {
                op.insert("security".into(), json!([]));
                description.push_str("No token needed.");
            }
            Access::Role(role) => description.push_str(&format!("Needs role `{role}` or above.")),
            Access::Command(role) => description
                .push_str(&format!("Needs role `{role}` or above; a refused request is written to the audit log.")),
        }
        op.insert("description".into(), json!(description));
        op.insert("operationId".into(), json!(operation_id(r.method.name(), r.path)));
        let mut params: Vec<Value> = path_params(r.path)
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(r.query.iter().map(|p| {
            json!({"name": p.name, "in": "query", "required": p.required, "description": p.description,
                   "schema": {"type": p.kind}})
        }));
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = r.body {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema_ref(body)}}}),
            );
        }
        let mut responses = Map::new();
        let ok = match r.reply {
            Reply::Empty => json!({"description": "done"}),
            Reply::Json(s) => json!({"description": "OK", "content": {"application/json": {"schema": schema_ref(s)}}}),
            Reply::Array(s) => json!({"description": "OK",
                "content": {"application/json": {"schema": {"type": "array", "items": schema_ref(s)}}}}),
            Reply::Other(ct) => json!({"description": "OK", "content": {ct: {"schema": {"type": "string"}}}}),
        };
        responses.insert(r.status.to_string(), ok);
        if r.access != Access::Public {
            for (code, what) in [
                ("400", "bad request: the message names the field"),
                ("401", "missing or unknown token"),
                ("403", "the token's role is below the route's"),
                ("404", "unknown agent, alert, silence, approval or token"),
                ("503", "automation is not configured, or commands are off"),
            ] {
                responses.insert(
                    code.into(),
                    json!({"description": what, "content": {"application/json": {"schema": schema_ref("Error")}}}),
                );
            }
        }
        op.insert("responses".into(), Value::Object(responses));
        let item = paths.entry(r.path.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(r.method.name().into(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "edgeloop collector API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The fleet, its alerts and commands. Times are Unix nanoseconds. Roles, ordered: viewer < \
                            maintenance < engineer < operator < admin. Errors are {\"error\": \"...\"}."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": Value::Object(paths),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "el_<64 hex>, made with `edgeloop-collector token add` or POST /api/v1/tokens"}
            },
            "schemas": schemas()
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != "api" && *s != "v1") {
        let seg = seg.trim_start_matches('{').trim_end_matches('}');
        id.push('_');
        id.extend(seg.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }));
    }
    if id == method { format!("{method}_index") } else { id }
}

fn schemas() -> Value {
    let s = json!({"type": "string"});
    let sn = json!({"type": "string", "nullable": true});
    let i = json!({"type": "integer", "format": "int64"});
    let inn = json!({"type": "integer", "format": "int64", "nullable": true});
    let b = json!({"type": "boolean"});
    let n = json!({"type": "number", "format": "double"});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let obj = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
    let summary_props = json!({
        "agent": s, "site": sn, "online": b, "stale": b, "last_seen_ns": i, "version": sn,
        "backlog_readings": i, "oldest_unsent_ns": inn, "dropped_total": i, "latched": strings,
        "stale_sensors": strings, "sensors": strings, "points_stored": i, "firing_alerts": i
    });
    let summary_required = [
        "agent",
        "site",
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
        "points_stored",
        "firing_alerts",
    ];
    let mut detail = summary_props.clone();
    if let Value::Object(d) = &mut detail {
        d.insert(
            "latest".into(),
            json!({"type": "array", "items": obj(json!({"sensor": s, "ts_ns": i, "value": n, "stale": b}),
                &["sensor", "ts_ns", "value", "stale"])}),
        );
    }
    let matcher = obj(
        json!({"label": s, "value": s, "op": {"type": "string", "enum": ["equal", "not_equal", "glob", "not_glob"]}}),
        &["label", "value"],
    );
    let role = json!({"type": "string", "enum": ["viewer", "maintenance", "engineer", "operator", "admin"]});
    let problem = obj(json!({"key": s, "message": s}), &["key", "message"]);
    json!({
        "Error": {"type": "object", "properties": {"error": s, "problems": {"type": "array", "items": problem}},
                  "required": ["error"]},
        "Me": obj(json!({"name": s, "role": role}), &["name", "role"]),
        "AgentSummary": obj(summary_props, &summary_required),
        "AgentDetail": obj(detail, &[&summary_required[..], &["latest"]].concat()),
        "Series": obj(json!({"agent": s, "sensor": s,
            "source": {"type": "string", "enum": ["recent", "influxdb", "local"]},
            "points": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2,
                                                   "maxItems": 2}}}),
            &["agent", "sensor", "source", "points"]),
        "Event": obj(json!({"agent": s, "ts_ns": i, "kind": s, "severity": s, "subject": s, "message": s}),
            &["agent", "ts_ns", "kind", "severity", "subject", "message"]),
        "AlertView": obj(json!({
            "alert": {"type": "object", "description": "fingerprint, rule, severity, state, labels, summary, value, \
                       limit, prediction, started_ns, ended_ns, acked_by, acked_ns, dashboard_url"},
            "silenced_by": strings, "inhibited": b, "inhibited_by": sn, "flapping": b, "pending_since_ns": inn,
            "group_key": s, "receivers": strings}),
            &["alert", "silenced_by", "inhibited", "flapping", "group_key", "receivers"]),
        "AckRequest": {"type": "object", "properties": {}, "additionalProperties": false},
        "Matcher": matcher,
        "SilenceView": obj(json!({"id": s, "state": {"type": "string", "enum": ["pending", "active", "expired"]},
            "silence": obj(json!({"matchers": {"type": "array", "items": schema_ref("Matcher")}, "starts_ns": i,
                "ends_ns": i, "created_by": s, "comment": s}),
                &["matchers", "starts_ns", "ends_ns", "created_by", "comment"])}),
            &["id", "state", "silence"]),
        "SilenceRequest": {"type": "object", "additionalProperties": false,
            "description": "Give duration_s or ends_ns.",
            "properties": {"matchers": {"type": "array", "items": schema_ref("Matcher")}, "duration_s": i,
                           "ends_ns": i, "starts_ns": i, "comment": s},
            "required": ["matchers", "comment"]},
        "SilenceCreated": obj(json!({"id": s}), &["id"]),
        "AgentRules": obj(json!({"agent": s, "version": inn, "toml": sn}), &["agent", "version", "toml"]),
        "RulesCheckRequest": {"type": "object", "additionalProperties": false,
            "properties": {"toml": s, "agent": s}, "required": ["toml"]},
        "RulesCheck": obj(json!({"ok": b, "problems": {"type": "array", "items": problem}, "rules": i, "actions": i,
            "note": s}), &["ok", "problems", "note"]),
        "PushRulesRequest": {"type": "object", "additionalProperties": false, "properties": {"toml": s},
            "required": ["toml"]},
        "CommandRequest": {"oneOf": [
            {"type": "object", "additionalProperties": false,
             "properties": {"action": {"type": "string", "enum": ["shutdown"]}, "reason": s},
             "required": ["action", "reason"]},
            {"type": "object", "additionalProperties": false,
             "properties": {"action": {"type": "string", "enum": ["reset_latch"]}, "rule": s},
             "required": ["action", "rule"]}
        ]},
        "CommandAccepted": obj(json!({"command_id": i}), &["command_id"]),
        "Approval": obj(json!({"id": i, "agent": s, "issuer": s, "action": {"type": "object"}, "requested_ns": i,
            "fingerprint": sn}), &["id", "agent", "issuer", "action", "requested_ns"]),
        "AuditRecord": obj(json!({"ts_ns": i, "id": inn, "agent": s, "issuer": s, "action": s, "verdict": s,
            "detail": s}), &["ts_ns", "agent", "issuer", "action", "verdict", "detail"]),
        "TokenInfo": obj(json!({"name": s, "role": role, "created_ns": i}), &["name", "role", "created_ns"]),
        "TokenRequest": {"type": "object", "additionalProperties": false,
            "properties": {"name": s, "role": role}, "required": ["name", "role"]},
        "TokenCreated": obj(json!({"name": s, "role": role, "token": s}), &["name", "role", "token"])
    })
}
