//! E-mail: the message, built with lettre's builder (RFC 2047 subject, quoted-printable body,
//! `Date`), and one SMTP transaction per attempt on lettre's connection over rustls.

use std::error::Error as _;
use std::fs;
use std::time::{Duration, UNIX_EPOCH};

use lettre::Address;
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;

use super::render::{human_time, machine_of, prediction_text, severity_word, title, truncate_chars, value_text};
use super::webhook::error_chain;
use super::{Outcome, SmtpConfig, SmtpTls};
use crate::model::{AlertState, Notification};

/// RFC 3834: tells auto-responders (out-of-office replies) not to answer.
const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");

/// What an SMTP channel needs for each attempt, built once at start.
pub(super) struct SmtpTransport {
    /// `None` with `tls = "none"`.
    tls: Option<TlsParameters>,
    hello: ClientId,
    from: Address,
    to: Vec<Address>,
    credentials: Option<Credentials>,
}

/// Checks an SMTP channel and builds its transport; `None` after a problem.
pub(super) fn prepare(c: &SmtpConfig, problems: &mut Vec<String>) -> Option<SmtpTransport> {
    let before = problems.len();
    if c.host.trim().is_empty() {
        problems.push("host is empty".to_string());
    }
    if c.port == Some(0) {
        problems.push("port must not be 0".to_string());
    }
    let from = match check_address(&c.from) {
        Ok(a) => Some(a),
        Err(m) => {
            problems.push(format!("from {:?}: {m}", c.from));
            None
        }
    };
    if c.to.is_empty() {
        problems
            .push("to is empty; list at least one recipient, e.g. to = [\"maintenance@plant.example\"]".to_string());
    }
    let mut to = Vec::new();
    for address in &c.to {
        match check_address(address) {
            Ok(a) => to.push(a),
            Err(m) => problems.push(format!("to {address:?}: {m}")),
        }
    }
    if c.username.is_some() != c.password.is_some() {
        problems.push("username and password must be set together".to_string());
    }
    if c.tls == SmtpTls::None {
        if c.username.is_some() || c.password.is_some() {
            problems.push(
                "password (and username) with tls = \"none\" would cross the network in clear text; \
                 use tls = \"starttls\" (or \"tls\" for port 465), or remove username and password"
                    .to_string(),
            );
        }
        if let Some(ca) = &c.ca {
            problems.push(format!("ca {} has no use with tls = \"none\"; remove it or set tls", ca.display()));
        }
    }
    if c.hello_name.is_empty() || !c.hello_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        problems.push(format!("hello_name {:?} must be a host name (letters, digits, '.', '-')", c.hello_name));
    }
    let tls = match c.tls {
        SmtpTls::None => None,
        SmtpTls::Starttls | SmtpTls::Tls => tls_parameters(c).map_err(|m| problems.push(m)).ok(),
    };
    if problems.len() > before {
        return None;
    }
    let credentials = match (&c.username, &c.password) {
        (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.expose().to_string())),
        _ => None,
    };
    Some(SmtpTransport { tls, hello: ClientId::Domain(c.hello_name.clone()), from: from?, to, credentials })
}

/// The server's name as certificates carry it, and the roots to check it against.
fn tls_parameters(c: &SmtpConfig) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(c.host.clone());
    if let Some(ca) = &c.ca {
        let pem = fs::read(ca).map_err(|e| format!("ca {}: cannot read it: {e}", ca.display()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| format!("ca {}: not a PEM certificate: {}", ca.display(), error_chain(&e)))?;
        // A private CA is the relay's own: trusting the public roots too would only widen who can
        // pose as it.
        builder = builder.certificate_store(CertificateStore::None).add_root_certificate(cert);
    }
    builder.build_rustls().map_err(|e| format!("cannot set up TLS for {}: {}", c.host, error_chain(&e)))
}

/// A bare `local@domain`: it goes into SMTP commands and headers unquoted.
fn check_address(address: &str) -> Result<Address, &'static str> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err("is not an e-mail address (local@domain)");
    };
    let bad = |s: &str| s.is_empty() || s.bytes().any(|b| !b.is_ascii_graphic() || b"<>,;\"".contains(&b));
    if bad(local) || bad(domain) {
        return Err("must be a bare ASCII address without spaces, quotes or <> (e.g. alerts@plant.example)");
    }
    address.parse().map_err(|_| "is not a valid e-mail address (e.g. alerts@plant.example)")
}

/// Keeps a header value on one line: a label with a newline must not inject headers.
fn header_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn email_domain(address: &str) -> &str {
    address.rsplit_once('@').map_or("edgeloop", |(_, d)| d)
}

/// Characters that may appear in a Message-ID's local part without quoting.
fn msgid_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) { c } else { '_' }).collect()
}

/// The plain-text body: the title, then each alert's summary and details.
fn body_text(n: &Notification) -> String {
    let mut body = String::new();
    body.push_str(&title(n));
    body.push_str("\n\n");
    for a in &n.alerts {
        body.push_str(&a.summary);
        body.push('\n');
        let mut where_line = format!("  machine: {}", machine_of(a));
        if let Some(sensor) = a.labels.get("sensor") {
            where_line.push_str(&format!("   sensor: {sensor}"));
        }
        if let Some(agent) = a.labels.get("agent") {
            where_line.push_str(&format!("   agent: {agent}"));
        }
        body.push_str(&where_line);
        body.push('\n');
        if let Some(v) = value_text(a) {
            body.push_str(&format!("  {v}\n"));
        }
        if let Some(p) = &a.prediction {
            body.push_str(&format!("  {}\n", prediction_text(p, n.created_ns)));
        }
        let state = match a.state {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        };
        body.push_str(&format!(
            "  {state}, severity {}, since {}\n",
            severity_word(a.severity),
            human_time(a.started_ns)
        ));
        if let Some(url) = &a.dashboard_url {
            body.push_str(&format!("  dashboard: {url}\n"));
        }
        body.push('\n');
    }
    body.push_str(&format!("-- \nedgeloop notification {}, group {}\n", n.id, n.group_key));
    body
}

/// The complete message (CRLF line endings, ASCII, not dot-stuffed).
///
/// # Errors
/// When an address does not parse (rejected at start already) or lettre refuses the message.
pub(super) fn message(c: &SmtpConfig, n: &Notification) -> Result<String, String> {
    let mailbox = |a: &str| a.parse::<Mailbox>().map_err(|e| format!("address {a:?}: {e}"));
    let domain = email_domain(&c.from);
    let created = UNIX_EPOCH + Duration::from_nanos(u64::try_from(n.created_ns).unwrap_or(0));
    let mut builder = Message::builder()
        .date(created)
        .from(mailbox(&c.from)?)
        .subject(truncate_chars(&header_safe(&title(n)), 200))
        .message_id(Some(format!("<{}.edgeloop@{domain}>", msgid_safe(&n.id))))
        .references(format!("<{}.group.edgeloop@{domain}>", msgid_safe(&n.group_key)))
        .raw_header(HeaderValue::new(AUTO_SUBMITTED, "auto-generated".to_string()));
    for to in &c.to {
        builder = builder.to(mailbox(to)?);
    }
    let part = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .header(ContentTransferEncoding::QuotedPrintable)
        .body(body_text(n));
    let message = builder.singlepart(part).map_err(|e| e.to_string())?;
    String::from_utf8(message.formatted()).map_err(|e| e.to_string())
}

/// Where an SMTP session failed; 5xx replies are permanent, the rest is retried.
struct SmtpFailure {
    step: String,
    detail: String,
    permanent: bool,
}

impl SmtpFailure {
    fn new(step: impl Into<String>, e: &lettre::transport::smtp::Error) -> Self {
        let detail = match (e.status(), e.source()) {
            (Some(code), Some(text)) => format!("server replied {code} {text}"),
            (Some(code), None) => format!("server replied {code}"),
            (None, _) => error_chain(e),
        };
        SmtpFailure { step: step.into(), detail, permanent: e.is_permanent() }
    }
}

/// One attempt at delivering `message` through the channel's server.
pub(super) async fn deliver(c: &SmtpConfig, t: &SmtpTransport, message: &[u8]) -> Outcome {
    match send(c, t, message).await {
        Ok(warning) => Outcome::Delivered { warning },
        Err(f) => {
            let error = format!("SMTP {} failed: {}", f.step, f.detail);
            if f.permanent { Outcome::Refused { error } } else { Outcome::Retry { error, retry_after: None } }
        }
    }
}

/// Connects (greeting and EHLO included), runs the transaction and says goodbye.
async fn send(c: &SmtpConfig, t: &SmtpTransport, message: &[u8]) -> Result<Option<String>, SmtpFailure> {
    let port = c.port();
    let implicit_tls = if c.tls == SmtpTls::Tls { t.tls.clone() } else { None };
    let timeout = Some(c.timeout.0);
    let mut conn = AsyncSmtpConnection::connect_tokio1((c.host.as_str(), port), timeout, &t.hello, implicit_tls, None)
        .await
        .map_err(|e| SmtpFailure::new(format!("connect to {}:{port}", c.host), &e))?;
    let result = transaction(&mut conn, c, t, message).await;
    match &result {
        // The message is accepted; a QUIT that goes wrong changes nothing.
        Ok(_) => {
            let _ = conn.quit().await;
        }
        Err(_) => conn.abort().await,
    }
    result
}

/// STARTTLS when configured, AUTH, then the envelope and the data; `Ok(Some(_))` when some
/// recipients were refused.
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    c: &SmtpConfig,
    t: &SmtpTransport,
    message: &[u8],
) -> Result<Option<String>, SmtpFailure> {
    if c.tls == SmtpTls::Starttls {
        if !conn.can_starttls() {
            // Retried, not refused: a server that stopped offering it, or someone on the path
            // stripping it, is not a reason to drop the alert, and nothing was sent.
            return Err(SmtpFailure {
                step: "STARTTLS".to_string(),
                detail: format!(
                    "the server does not offer STARTTLS ({}); nothing was sent. Use the server's STARTTLS \
                     port (587 or 25), tls = \"tls\" for port 465, or tls = \"none\" for a relay on a trusted \
                     network",
                    conn.server_info()
                ),
                permanent: false,
            });
        }
        let Some(params) = t.tls.clone() else {
            return Err(SmtpFailure {
                step: "STARTTLS".to_string(),
                detail: "internal: no TLS parameters".to_string(),
                permanent: true,
            });
        };
        conn.starttls(params, &t.hello).await.map_err(|e| SmtpFailure::new("STARTTLS", &e))?;
    }
    if let Some(credentials) = &t.credentials {
        // Checked at start already (no credentials with tls = "none"); this keeps it true.
        if !conn.is_encrypted() {
            return Err(SmtpFailure {
                step: "AUTH".to_string(),
                detail: "refusing to send credentials over an unencrypted connection".to_string(),
                permanent: true,
            });
        }
        let Some(mechanism) = conn.server_info().get_auth_mechanism(&[Mechanism::Plain, Mechanism::Login]) else {
            return Err(SmtpFailure {
                step: "AUTH".to_string(),
                detail: format!("the server offers neither AUTH PLAIN nor LOGIN ({})", conn.server_info()),
                permanent: true,
            });
        };
        // The step name, never the command, goes into errors: the command carries the password.
        conn.auth(&[mechanism], credentials).await.map_err(|e| SmtpFailure::new(format!("AUTH {mechanism}"), &e))?;
    }
    conn.command(Mail::new(Some(t.from.clone()), Vec::new())).await.map_err(|e| SmtpFailure::new("MAIL FROM", &e))?;
    let mut refused = Vec::new();
    for to in &t.to {
        match conn.command(Rcpt::new(to.clone(), Vec::new())).await {
            Ok(_) => {}
            Err(e) => {
                let f = SmtpFailure::new(format!("RCPT TO:<{to}>"), &e);
                if !f.permanent {
                    return Err(f);
                }
                refused.push(format!("{to}: {}", f.detail));
            }
        }
    }
    if refused.len() == t.to.len() {
        return Err(SmtpFailure {
            step: "RCPT TO".to_string(),
            detail: format!("every recipient was refused: {}", refused.join("; ")),
            permanent: true,
        });
    }
    conn.command(Data).await.map_err(|e| SmtpFailure::new("DATA", &e))?;
    conn.message(message).await.map_err(|e| SmtpFailure::new("end of DATA", &e))?;
    Ok((!refused.is_empty()).then(|| format!("some recipients were refused: {}", refused.join("; "))))
}
