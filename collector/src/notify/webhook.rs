//! Delivery over HTTP POST, shared by the generic webhook, Slack and PagerDuty: the client, the
//! answer's classification (2xx delivered; 408, 429, 5xx and network errors retried; other 4xx
//! and 3xx refused) and `Retry-After`. Also the generic webhook's body: the generic JSON or the
//! channel's template.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER, USER_AGENT};
use time::{PrimitiveDateTime, format_description::BorrowedFormatItem, macros::format_description};

use super::{Outcome, Rendered, WebhookConfig, render};
use crate::model::Notification;
use edgeloop_shared::clock::now_ns;

/// How much of an error response body goes into logs and stats.
const ERROR_BODY_LIMIT: usize = 1024;

/// What an HTTP channel needs for each attempt, built once at start.
pub(super) struct HttpTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
}

/// The generic webhook's body: `template` when set, else the generic JSON.
///
/// # Errors
/// The name of a placeholder the template uses but nothing defines.
pub(super) fn body(c: &WebhookConfig, n: &Notification) -> Result<String, String> {
    match &c.template {
        None => Ok(render::generic_json(n).to_string()),
        Some(template) => render::render_template(template, render::is_json_content_type(&c.content_type), n),
    }
}

/// Checks an HTTP channel's address and headers and builds its client; `None` after a problem.
pub(super) fn prepare(
    url: &str,
    extra_headers: Option<&BTreeMap<String, String>>,
    content_type: Option<&str>,
    timeout: Duration,
    problems: &mut Vec<String>,
) -> Option<HttpTransport> {
    let before = problems.len();
    if let Some(content_type) = content_type
        && HeaderValue::from_str(content_type).is_err()
    {
        problems.push(format!("content_type {content_type:?} is not a valid header value"));
    }
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            problems.push("url must be an http:// or https:// address with a host".to_string());
            None
        }
        Err(e) => {
            problems.push(format!("url is not a valid address: {e}"));
            None
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in extra_headers.into_iter().flatten() {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            (Ok(n), _) if n == CONTENT_TYPE => {
                problems.push("headers must not set Content-Type; use content_type".to_string());
            }
            (Ok(n), Ok(v)) => {
                headers.insert(n, v);
            }
            (Err(_), _) => problems.push(format!("header name {name:?} is not a valid HTTP header name")),
            (_, Err(_)) => problems.push(format!("header {name:?} has a value that is not a valid HTTP header value")),
        }
    }
    if problems.len() > before {
        return None;
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A 301/302 would turn the POST into a body-less GET that "succeeds": report it instead.
        .redirect(reqwest::redirect::Policy::none())
        .build();
    match (client, parsed) {
        (Ok(client), Some(url)) => Some(HttpTransport { client, url, headers }),
        (Err(e), _) => {
            problems.push(format!("cannot build the HTTP client: {}", error_chain(&e)));
            None
        }
        (_, None) => None,
    }
}

pub(super) async fn deliver(t: &HttpTransport, rendered: Rendered) -> Outcome {
    let HttpTransport { client, url, headers } = t;
    let Rendered::Http { content_type, body } = rendered else {
        return Outcome::Refused { error: "internal: an e-mail rendering for an HTTP channel".to_string() };
    };
    let request = client
        .post(url.clone())
        .headers(headers.clone())
        .header(CONTENT_TYPE, content_type)
        .header(USER_AGENT, "edgeloop-collector")
        .body(body);
    let mut response = match request.send().await {
        Ok(r) => r,
        // Without the URL: a Slack webhook's URL is its credential.
        Err(e) => {
            return Outcome::Retry { error: error_chain(&e.without_url()), retry_after: None };
        }
    };
    let status = response.status();
    if status.is_success() {
        return Outcome::Delivered { warning: None };
    }
    let code = status.as_u16();
    let retry_after = if code == 429 || code == 503 {
        response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now_ns()))
    } else {
        None
    };
    let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = body_prefix(&mut response).await;
    let error = format!("HTTP {status}: {body}");
    if code == 408 || code == 429 || status.is_server_error() {
        Outcome::Retry { error, retry_after }
    } else if status.is_redirection() {
        let to = location.unwrap_or_else(|| "an unspecified address".to_string());
        Outcome::Refused {
            error: format!("HTTP {status}: redirected to {to}; set the channel's url to the final address"),
        }
    } else if status.is_client_error() {
        Outcome::Refused { error }
    } else {
        Outcome::Retry { error, retry_after: None }
    }
}

/// The start of an error response, for logs; bounded so a huge error page cannot fill memory.
async fn body_prefix(response: &mut reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(ERROR_BODY_LIMIT);
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    if text.is_empty() { "(empty body)".to_string() } else { text.replace(['\r', '\n'], " ") }
}

/// An error and its causes on one line; reqwest's own message is terse ("error sending request").
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// IMF-fixdate, the one date form HTTP senders must use: "Sun, 06 Nov 1994 08:49:37 GMT".
const IMF_FIXDATE: &[BorrowedFormatItem<'_>] =
    format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");

/// `Retry-After`: delay-seconds or an IMF-fixdate.
fn parse_retry_after(value: &str, now_ns: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at_secs = PrimitiveDateTime::parse(value, IMF_FIXDATE).ok()?.assume_utc().unix_timestamp();
    let wait = at_secs.saturating_sub(now_ns.div_euclid(1_000_000_000));
    Some(Duration::from_secs(u64::try_from(wait).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::ChannelConfig;
    use crate::notify::testing::{http_receiver, next, notification, outbox_entries, start, wait_for, webhook};
    use serde_json::json;

    #[tokio::test]
    async fn generic_webhook_gets_the_documented_json() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(200, "", "ok")]).await;
        let mut config = webhook(&url);
        if let ChannelConfig::Webhook(w) = &mut config {
            w.headers.insert("Authorization".into(), "Bearer t0ken".into());
        }
        let (notifier, _shutdown) = start(vec![("hook", config)], dir.path());
        let n = notification(&["hook"]);
        notifier.send(&n).unwrap();

        let request = next(&mut rx).await;
        assert_eq!(request.path, "/hook");
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.headers["authorization"], "Bearer t0ken");
        let body = request.json();
        let mut expected = serde_json::to_value(&n).unwrap();
        expected["version"] = json!(1);
        assert_eq!(body, expected);
        assert_eq!(body["status"], "firing");
        assert_eq!(body["alerts"][0]["labels"]["machine"], "press-3");
        assert_eq!(body["alerts"][0]["prediction"]["limit"], 4.5);
        assert_eq!(body["alerts"][0]["dashboard_url"], "https://edgeloop.example/machines/press-3");

        wait_for("delivery", || notifier.stats()["hook"].delivered == 1).await;
        let stats = &notifier.stats()["hook"];
        assert_eq!((stats.pending, stats.attempts_failed, stats.refused), (0, 0, 0));
        assert!(stats.last_success_ns.is_some());
        assert!(outbox_entries(dir.path()).is_empty(), "a delivered entry leaves the outbox");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        let at = time::macros::datetime!(1994-11-06 08:49:07 UTC).unix_timestamp() * 1_000_000_000;
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
