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
        let cert =
            Certificate::from_pem(&pem).map_err(|e| format!("ca {}: not a PEM certificate: {e}", ca.display()))?;
        // A private CA is the relay's own: trusting the public roots too would only widen who can
        // pose as it.
        builder = builder.certificate_store(CertificateStore::None).add_root_certificate(cert);
    }
    builder.build_rustls().map_err(|e| format!("cannot set up TLS for {}: {e}", c.host))
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
    /// The connection must not be written to again: lettre leaves it without a stream after a
    /// failed TLS upgrade, and a QUIT on it would hit lettre's "must never be built" assertion.
    broken: bool,
}

impl SmtpFailure {
    fn new(step: impl Into<String>, e: &lettre::transport::smtp::Error) -> Self {
        let detail = match (e.status(), e.source()) {
            (Some(code), Some(text)) => format!("server replied {code} {text}"),
            (Some(code), None) => format!("server replied {code}"),
            // lettre's message already ends with its cause ("network error: connection refused").
            (None, _) => e.to_string(),
        };
        SmtpFailure { step: step.into(), detail, permanent: e.is_permanent(), broken: false }
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
        Err(f) if f.broken => drop(conn),
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
                broken: false,
            });
        }
        let Some(params) = t.tls.clone() else {
            return Err(SmtpFailure {
                step: "STARTTLS".to_string(),
                detail: "internal: no TLS parameters".to_string(),
                permanent: true,
                broken: false,
            });
        };
        conn.starttls(params, &t.hello)
            .await
            .map_err(|e| SmtpFailure { broken: true, ..SmtpFailure::new("STARTTLS", &e) })?;
    }
    if let Some(credentials) = &t.credentials {
        // Checked at start already (no credentials with tls = "none"); this keeps it true.
        if !conn.is_encrypted() {
            return Err(SmtpFailure {
                step: "AUTH".to_string(),
                detail: "refusing to send credentials over an unencrypted connection".to_string(),
                permanent: true,
                broken: false,
            });
        }
        let Some(mechanism) = conn.server_info().get_auth_mechanism(&[Mechanism::Plain, Mechanism::Login]) else {
            return Err(SmtpFailure {
                step: "AUTH".to_string(),
                detail: format!("the server offers neither AUTH PLAIN nor LOGIN ({})", conn.server_info()),
                permanent: true,
                broken: false,
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
            broken: false,
        });
    }
    conn.command(Data).await.map_err(|e| SmtpFailure::new("DATA", &e))?;
    conn.message(message).await.map_err(|e| SmtpFailure::new("end of DATA", &e))?;
    Ok((!refused.is_empty()).then(|| format!("some recipients were refused: {}", refused.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing::{fast, notification, start, wait_for};
    use crate::notify::{ChannelConfig, Rendered, example_notification, render, validate};
    use serde_json::json;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A scripted SMTP server without TLS that offers AUTH in the clear (so a client that would
    /// send credentials without TLS would be caught); sends the dialogue (client lines) and the
    /// raw DATA of each session. `mail_reply` answers MAIL FROM.
    async fn smtp_receiver(mail_reply: &'static str) -> (u16, mpsc::UnboundedReceiver<(Vec<String>, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut s = BufReader::new(stream);
                let mut dialogue = Vec::new();
                let mut data = String::new();
                s.get_mut().write_all(b"220 test ESMTP ready\r\n").await.unwrap();
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let line = line.trim_end_matches("\r\n").to_string();
                    let upper = line.to_ascii_uppercase();
                    let reply: &str = if upper.starts_with("EHLO") {
                        "250-test.local greets you\r\n250-8BITMIME\r\n250 AUTH LOGIN PLAIN\r\n"
                    } else if upper.starts_with("AUTH") {
                        "235 2.7.0 authenticated\r\n"
                    } else if upper.starts_with("MAIL") {
                        mail_reply
                    } else if upper.starts_with("RCPT") && upper.contains("NOBODY@") {
                        "550 5.1.1 no such user\r\n"
                    } else if upper == "DATA" {
                        s.get_mut().write_all(b"354 go ahead\r\n").await.unwrap();
                        loop {
                            let mut l = String::new();
                            s.read_line(&mut l).await.unwrap();
                            if l == ".\r\n" {
                                break;
                            }
                            data.push_str(&l);
                        }
                        "250 2.0.0 queued as 42\r\n"
                    } else if upper == "QUIT" {
                        "221 bye\r\n"
                    } else {
                        "250 ok\r\n"
                    };
                    dialogue.push(line);
                    s.get_mut().write_all(reply.as_bytes()).await.unwrap();
                    if upper == "QUIT" {
                        break;
                    }
                }
                let _ = tx.send((dialogue, data));
            }
        });
        (port, rx)
    }

    /// A plain-text relay channel (no credentials: those need TLS).
    fn smtp(port: u16, to: &[&str]) -> ChannelConfig {
        fast(
            serde_json::from_value(json!({"kind": "smtp", "host": "127.0.0.1", "port": port, "tls": "none",
                "from": "alerts@plant.example", "to": to}))
            .unwrap(),
        )
    }

    fn rendered(c: &ChannelConfig, n: &Notification) -> String {
        let Rendered::Email { message } = render(c, n).unwrap() else { panic!("smtp renders e-mail") };
        message
    }

    #[tokio::test]
    async fn smtp_dialogue_and_dot_stuffing() {
        let dir = tempfile::tempdir().unwrap();
        let (port, mut rx) = smtp_receiver("250 ok\r\n").await;
        let config = smtp(port, &["maint@plant.example", "nobody@plant.example", "lead@plant.example"]);
        let (notifier, _shutdown) = start(vec![("mail", config)], dir.path());
        let mut n = notification(&["mail"]);
        n.alerts[0].summary = ".5 mm/s over the limit on the drive end".to_string();
        notifier.send(&n).unwrap();

        let (dialogue, data) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap();
        assert_eq!(
            dialogue,
            [
                "EHLO edgeloop",
                "MAIL FROM:<alerts@plant.example>",
                "RCPT TO:<maint@plant.example>",
                "RCPT TO:<nobody@plant.example>",
                "RCPT TO:<lead@plant.example>",
                "DATA",
                "QUIT",
            ]
        );
        let segments: Vec<&str> = data.split('\n').collect();
        assert!(segments[..segments.len() - 1].iter().all(|l| l.ends_with('\r')), "CRLF line endings");
        assert!(data.contains("\r\n..5 mm/s over the limit on the drive end\r\n"), "dot-stuffed: {data}");
        for header in [
            "Subject: [FIRING:1] bearing_zone_d on plant-a/press-3\r\n",
            "Date: Thu, 09 Oct 2025 08:53:20 +0000\r\n",
            "From: alerts@plant.example\r\n",
            "Message-ID: <bearing_zone_d/plant-a/press-3#1.edgeloop@plant.example>\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "Content-Transfer-Encoding: quoted-printable\r\n",
        ] {
            assert!(data.contains(header), "{header:?} missing from {data}");
        }
        assert!(data.contains("(in about 30 h, 20=E2=80=9345 h)"), "the en dash is quoted-printable");
        assert!(data.lines().all(|l| l.len() <= 78));

        wait_for("delivery", || notifier.stats()["mail"].delivered == 1).await;
        let stats = &notifier.stats()["mail"];
        assert!(stats.last_error.as_deref().unwrap().contains("nobody@plant.example: server replied 550"));
    }

    #[tokio::test]
    async fn an_smtp_failure_names_the_step_and_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _rx) = smtp_receiver("550 5.7.1 relaying denied\r\n").await;
        let (notifier, _shutdown) = start(vec![("mail", smtp(port, &["maint@plant.example"]))], dir.path());
        notifier.send(&notification(&["mail"])).unwrap();
        wait_for("refusal", || notifier.stats()["mail"].refused == 1).await;
        let error = notifier.stats()["mail"].last_error.clone().unwrap();
        assert_eq!(error, "SMTP MAIL FROM failed: server replied 550 5.7.1 relaying denied");
    }

    /// The default, `tls = "starttls"`, against a server that does not offer it: not even the
    /// credentials leave, the entry stays queued and the attempt counts as failed.
    #[tokio::test]
    async fn without_starttls_nothing_is_sent_and_the_entry_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (port, mut rx) = smtp_receiver("250 ok\r\n").await;
        let config = fast(
            serde_json::from_value(json!({"kind": "smtp", "host": "127.0.0.1", "port": port,
                "from": "alerts@plant.example", "to": ["maint@plant.example"],
                "username": "user", "password": "secret"}))
            .unwrap(),
        );
        let (notifier, _shutdown) = start(vec![("mail", config)], dir.path());
        notifier.send(&notification(&["mail"])).unwrap();
        let (dialogue, data) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap();
        assert_eq!(dialogue, ["EHLO edgeloop", "QUIT"]);
        assert!(data.is_empty());
        wait_for("a failed attempt", || notifier.stats()["mail"].attempts_failed >= 1).await;
        let stats = &notifier.stats()["mail"];
        assert_eq!((stats.delivered, stats.refused, stats.pending), (0, 0, 1));
        assert!(stats.last_error.as_deref().unwrap().starts_with("SMTP STARTTLS failed"), "{stats:?}");
    }

    #[test]
    fn tls_config() {
        let parse = |v: serde_json::Value| -> ChannelConfig { serde_json::from_value(v).unwrap() };
        let base = json!({"kind": "smtp", "host": "mx.plant.example", "from": "a@b.c", "to": ["d@e.f"]});
        let ChannelConfig::Smtp(s) = parse(base.clone()) else { panic!() };
        assert_eq!((s.tls, s.port()), (SmtpTls::Starttls, 25));
        let mut implicit = base.clone();
        implicit["tls"] = json!("tls");
        let ChannelConfig::Smtp(s) = parse(implicit) else { panic!() };
        assert_eq!((s.tls, s.port()), (SmtpTls::Tls, 465));
        let mut bad_tls = base.clone();
        bad_tls["tls"] = json!("opportunistic");
        assert!(serde_json::from_value::<ChannelConfig>(bad_tls).is_err());

        let mut clear = base.clone();
        clear["tls"] = json!("none");
        clear["username"] = json!("user");
        clear["password"] = json!("secret");
        let mut missing_ca = base;
        missing_ca["ca"] = json!("/nonexistent/ca.pem");
        let problems = validate(&BTreeMap::from([
            ("clear".to_string(), parse(clear)),
            ("private".to_string(), parse(missing_ca)),
        ]));
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let text = text.join("; ");
        assert!(text.contains("notify.clear: password (and username) with tls = \"none\""), "{text}");
        assert!(text.contains("notify.private: ca /nonexistent/ca.pem: cannot read it"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn encodings() {
        let config = smtp(25, &["maint@plant.example"]);
        let mut n = example_notification();
        n.alerts[0].summary = format!("{} end \nx=1 ümlaut", "y".repeat(100));
        let message = rendered(&config, &n);
        let (head, body) = message.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Date: Thu, 09 Oct 2025 08:53:20 +0000\r\n"), "{head}");
        assert!(body.split("\r\n").all(|l| l.len() <= 76), "{body}");
        assert!(body.contains("end=20\r\nx=3D1 =C3=BCmlaut"), "{body}");
        assert!(message.is_ascii());

        n.group_labels.insert("machine".into(), "Lüfter 3".into());
        let message = rendered(&config, &n);
        let subject = message.lines().find(|l| l.starts_with("Subject: ")).unwrap();
        // RFC 2047, lettre's way: only the non-ASCII word, base64 ("plant-a/Lüfter").
        assert_eq!(subject, "Subject: [FIRING:1] bearing_zone_d on =?utf-8?b?cGxhbnQtYS9Mw7xmdGVy?= 3");
        assert!(message.is_ascii());
        assert_eq!(header_safe("a\r\nBcc: x"), "a  Bcc: x");
    }
}
