//! A real SMTP server for the e-mail tests: aiosmtpd (PyPI) from the venv `scripts/test` installs
//! in `target/py-peers`, on a free port, either requiring STARTTLS (a test CA and a leaf for
//! `localhost` and 127.0.0.1; AUTH only after STARTTLS, one user) or without TLS (AUTH offered in
//! the clear, to catch a client that would use it). It writes every command it handled and every
//! message it received to a temp dir, which the test reads.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::tls::TestPki;

/// The one account the server accepts.
pub const USER: &str = "user";
pub const PASSWORD: &str = "secret";

/// aiosmtpd's Controller with a recording SMTP subclass. Arguments: port, output dir, the one
/// user and password, mode ("starttls" or "plain"), then for "starttls" the certificate and key.
const SERVER: &str = r#"
import json, os, ssl, sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

port, out, user, password, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), sys.argv[4].encode(), sys.argv[5]
lock = threading.Lock()

def record(name, entry):
    with lock:
        with open(os.path.join(out, name), "a") as f:
            f.write(json.dumps(entry) + "\n")

class Recording(SMTP):
    async def _seen(self, command, arg):
        record("commands.jsonl", {"cmd": command, "arg": arg or "", "tls": self.session.ssl is not None})

for command in ("EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "RSET", "QUIT"):
    def wrap(command=command):
        inner = getattr(SMTP, "smtp_" + command)
        async def handler(self, arg):
            await self._seen(command, arg)
            return await inner(self, arg)
        handler.__dict__.update(inner.__dict__)
        return handler
    setattr(Recording, "smtp_" + command, wrap())

class Store:
    async def handle_DATA(self, server, session, envelope):
        record("messages.jsonl", {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "content": envelope.original_content.decode("ascii", "replace"),
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
        })
        return "250 2.0.0 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == user and auth_data.password == password
    # handled=False: aiosmtpd then answers a failure with 535 itself.
    return AuthResult(success=ok, handled=False)

class Server(Controller):
    def factory(self):
        return Recording(self.handler, **self.SMTP_kwargs)

kwargs = dict(hostname="127.0.0.1", port=port, server_hostname="localhost", authenticator=authenticator)
if mode == "starttls":
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[6], sys.argv[7])
    kwargs.update(tls_context=context, require_starttls=True, auth_require_tls=True)
else:
    kwargs.update(auth_require_tls=False)
server = Server(Store(), **kwargs)
server.start()
open(os.path.join(out, "ready"), "w").close()
threading.Event().wait()
"#;

/// How the server encrypts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// STARTTLS offered and required before anything else; AUTH only after it.
    Starttls,
    /// No TLS at all; AUTH offered in the clear.
    Plain,
}

pub struct SmtpServer {
    pub port: u16,
    /// The CA that signed the server's certificate (`Mode::Starttls`).
    pub ca: Option<PathBuf>,
    dir: tempfile::TempDir,
    child: Child,
}

/// One command the server handled, in order; `tls` says whether the connection was encrypted.
#[derive(Debug, Clone)]
pub struct Seen {
    pub cmd: String,
    pub arg: String,
    pub tls: bool,
}

/// One message as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The message as sent after DATA (dot-stuffing undone), CRLF line endings.
    pub content: String,
    pub tls: bool,
    pub authenticated: bool,
}

/// The venv's python, next to the build's output: `<target>/py-peers/bin/python3`.
fn python() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash>  →  target/py-peers
    let target = exe.parent().and_then(Path::parent).and_then(Path::parent).unwrap();
    let venv = target.join("py-peers");
    let python = venv.join("bin/python3");
    let ok = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "aiosmtpd is not installed in {}: run scripts/test once (it installs the tests' Python peers), or \
         `python3 -m venv {0} && {0}/bin/pip install aiosmtpd==1.4.6`",
        venv.display()
    );
    python
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

impl SmtpServer {
    pub async fn start(mode: Mode) -> Self {
        let python = python();
        let dir = tempfile::Builder::new().prefix("edgeloop-smtp-").tempdir().unwrap();
        let script = dir.path().join("server.py");
        std::fs::write(&script, SERVER).unwrap();
        let port = super::free_port();
        let mut command = Command::new(python);
        command.arg(&script).arg(port.to_string()).arg(dir.path()).args([USER, PASSWORD]);
        let ca = match mode {
            Mode::Starttls => {
                let pki = TestPki::create(dir.path());
                command.arg("starttls").arg(&pki.cert).arg(&pki.key);
                Some(pki.ca)
            }
            Mode::Plain => {
                command.arg("plain");
                None
            }
        };
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let server = SmtpServer { port, ca, dir, child };
        let ready = server.dir.path().join("ready");
        super::wait_for("aiosmtpd to start", Duration::from_secs(20), || {
            let ready = ready.clone();
            async move { ready.exists().then_some(()) }
        })
        .await;
        server
    }

    /// Every command handled so far, in order.
    pub fn commands(&self) -> Vec<Seen> {
        lines(&self.dir.path().join("commands.jsonl"))
            .into_iter()
            .map(|v| Seen {
                cmd: v["cmd"].as_str().unwrap().to_string(),
                arg: v["arg"].as_str().unwrap().to_string(),
                tls: v["tls"].as_bool().unwrap(),
            })
            .collect()
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Received> {
        lines(&self.dir.path().join("messages.jsonl"))
            .into_iter()
            .map(|v| Received {
                mail_from: v["mail_from"].as_str().unwrap().to_string(),
                rcpt_tos: v["rcpt_tos"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect(),
                content: v["content"].as_str().unwrap().to_string(),
                tls: v["tls"].as_bool().unwrap(),
                authenticated: v["authenticated"].as_bool().unwrap(),
            })
            .collect()
    }

    /// What aiosmtpd logged (its errors, for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
