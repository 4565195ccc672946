//! Tokens and roles.
//!
//! A token is 32 random bytes shown once as `el_<64 hex>`; the collector keeps only its SHA-256
//! (hex) in the tokens file, `{"tokens":[{"name","role","sha256","created_ns"}]}`, written
//! atomically (temp + fsync + rename). A presented token is hashed and compared with every stored
//! hash in constant time, so neither the comparison nor the position of a match leaks timing.
//!
//! Roles are ordered: `viewer` < `maintenance` < `engineer` < `operator` < `admin`; a route names
//! the least role it needs (the route table, `table.rs`).

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Mutex, RwLock},
};

use aws_lc_rs::rand::SecureRandom;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Maintenance,
    Engineer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Viewer, Role::Maintenance, Role::Engineer, Role::Operator, Role::Admin];

    pub const fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Maintenance => "maintenance",
            Role::Engineer => "engineer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
            format!("{s:?} is not a role; use one of {}", names.join(", "))
        })
    }
}

/// Who is calling, once their token checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// How commands and audit records name this caller.
    pub fn issuer(&self) -> String {
        format!("token:{}", self.name)
    }
}

/// One stored token: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    pub sha256: String,
    pub created_ns: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileBody {
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the tokens file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("the tokens file {path} does not parse: {error}")]
    Parse { path: PathBuf, error: String },
    #[error("cannot write the tokens file {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
    #[error("a token named {0:?} exists already; pick another name or delete that token")]
    Exists(String),
    #[error("no token named {0:?}")]
    Unknown(String),
    #[error("{name:?} is not a usable token name: {reason}")]
    BadName { name: String, reason: String },
    #[error("{0:?} is the last admin token: create another admin token first")]
    LastAdmin(String),
    #[error("no tokens file is configured ([api] tokens_file)")]
    NoFile,
    #[error("cannot draw random bytes for a token")]
    Random,
}

/// SHA-256 of a token, lower-case hex.
pub fn hash(token: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A new random token, `el_` and 64 hex digits.
pub fn new_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| TokenError::Random)?;
    Ok(format!("el_{}", hex(&bytes)))
}

fn load_file(path: &Path) -> Result<Vec<TokenEntry>, TokenError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(TokenError::Read { path: path.into(), error }),
    };
    let body: TokenFileBody =
        serde_json::from_str(&text).map_err(|e| TokenError::Parse { path: path.into(), error: e.to_string() })?;
    Ok(body.tokens)
}

/// temp + fsync + rename (+ fsync of the directory), readable by the owner only.
fn save_file(path: &Path, tokens: &[TokenEntry]) -> Result<(), TokenError> {
    let err = |error| TokenError::Write { path: path.into(), error };
    let bytes = serde_json::to_vec_pretty(&TokenFileBody { tokens: tokens.to_vec() })
        .map_err(|e| err(std::io::Error::other(e)))?;
    edgeloop_shared::atomic_file::write(path, &bytes, edgeloop_shared::atomic_file::Access::Private).map_err(err)
}

fn check_name(name: &str) -> Result<(), TokenError> {
    edgeloop_shared::id::validate(name).map_err(|e| TokenError::BadName { name: name.into(), reason: e.to_string() })
}

/// Adds a token named `name` to the file at `path` (created when missing); returns the token,
/// which is shown once and stored nowhere.
pub fn add_to_file(path: &Path, name: &str, role: Role) -> Result<String, TokenError> {
    let mut tokens = load_file(path)?;
    let token = add(&mut tokens, name, role)?;
    save_file(path, &tokens)?;
    Ok(token)
}

fn add(tokens: &mut Vec<TokenEntry>, name: &str, role: Role) -> Result<String, TokenError> {
    check_name(name)?;
    if tokens.iter().any(|t| t.name == name) {
        return Err(TokenError::Exists(name.into()));
    }
    let token = new_token()?;
    tokens.push(TokenEntry {
        name: name.into(),
        role,
        sha256: hash(&token),
        created_ns: edgeloop_shared::clock::now_ns(),
    });
    Ok(token)
}

/// The tokens the API accepts.
pub struct Tokens {
    path: Option<PathBuf>,
    entries: RwLock<Vec<TokenEntry>>,
    /// The file's modification time when it was last read: a token added with the CLI (or a
    /// hand edit) is picked up at the next request, without a restart.
    loaded: Mutex<Stamp>,
    /// Serialises read-modify-write cycles of the file.
    writing: Mutex<()>,
}

/// What tells a changed file: its modification time, size and (on Unix) inode, as the atomic
/// rename of a rewrite makes a new one even within the clock's granularity.
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn modified(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

impl Tokens {
    /// Loads `path` (a missing file is an empty list); `None`: no token is accepted.
    pub fn load(path: Option<&Path>) -> Result<Self, TokenError> {
        let loaded = path.and_then(modified);
        let entries = match path {
            Some(p) => load_file(p)?,
            None => Vec::new(),
        };
        Ok(Self {
            path: path.map(Into::into),
            entries: RwLock::new(entries),
            loaded: Mutex::new(loaded),
            writing: Mutex::new(()),
        })
    }

    /// Re-reads the file when it changed since it was read. A file that no longer parses is
    /// logged and the tokens in memory stay.
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let now = modified(path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded == now {
            return;
        }
        match load_file(path) {
            Ok(tokens) => {
                *self.entries.write().unwrap_or_else(|p| p.into_inner()) = tokens;
                tracing::info!(file = %path.display(), "API tokens re-read");
            }
            Err(e) => tracing::error!(error = %e, "API tokens not re-read; the tokens in memory stay"),
        }
        *loaded = now;
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.read().map(|e| e.is_empty()).unwrap_or(true)
    }

    /// The caller `token` belongs to. Every stored hash is compared, in constant time each.
    pub fn check(&self, token: &str) -> Option<Caller> {
        self.refresh();
        let presented = hash(token);
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for t in entries.iter() {
            let same = aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), t.sha256.as_bytes());
            if same.is_ok() && found.is_none() {
                found = Some(Caller { name: t.name.clone(), role: t.role });
            }
        }
        found
    }

    pub fn list(&self) -> Vec<TokenEntry> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds a token; with a file, the file is re-read first (tokens added with the CLI meanwhile
    /// stay) and written back atomically.
    pub fn add(&self, name: &str, role: Role) -> Result<String, TokenError> {
        self.change(|tokens| add(tokens, name, role))
    }

    pub fn remove(&self, name: &str) -> Result<(), TokenError> {
        self.change(|tokens| {
            let pos = tokens.iter().position(|t| t.name == name).ok_or_else(|| TokenError::Unknown(name.into()))?;
            let admins = tokens.iter().filter(|t| t.role == Role::Admin).count();
            if tokens[pos].role == Role::Admin && admins == 1 {
                return Err(TokenError::LastAdmin(name.into()));
            }
            tokens.remove(pos);
            Ok(())
        })
    }

    fn change<T>(&self, f: impl FnOnce(&mut Vec<TokenEntry>) -> Result<T, TokenError>) -> Result<T, TokenError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut tokens = match &self.path {
            Some(p) => load_file(p)?,
            None => self.list(),
        };
        let out = f(&mut tokens)?;
        if let Some(p) = &self.path {
            save_file(p, &tokens)?;
            *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = modified(p);
        }
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_stored_hashed_and_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let token = add_to_file(&path, "alice", Role::Operator).unwrap();
        assert!(token.starts_with("el_") && token.len() == 67, "{token}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token[3..]), "the token itself is never stored");
        assert!(text.contains(&hash(&token)));
        let tokens = Tokens::load(Some(&path)).unwrap();
        assert_eq!(tokens.check(&token), Some(Caller { name: "alice".into(), role: Role::Operator }));
        assert_eq!(tokens.check("el_00"), None);
        // Added with the CLI while the collector runs: accepted without a restart.
        let dave = add_to_file(&path, "dave", Role::Viewer).unwrap();
        assert_eq!(tokens.check(&dave).map(|c| c.name), Some("dave".to_string()));
        assert!(matches!(add_to_file(&path, "alice", Role::Viewer), Err(TokenError::Exists(_))));
        // A token added with the CLI while the collector runs survives an API change.
        add_to_file(&path, "bob", Role::Admin).unwrap();
        tokens.add("carol", Role::Viewer).unwrap();
        let names: Vec<String> = Tokens::load(Some(&path)).unwrap().list().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["alice", "dave", "bob", "carol"]);
        assert!(matches!(tokens.remove("bob"), Err(TokenError::LastAdmin(_))));
        tokens.remove("carol").unwrap();
        assert!(matches!(tokens.remove("carol"), Err(TokenError::Unknown(_))));
    }

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Viewer < Role::Maintenance && Role::Operator < Role::Admin);
        assert_eq!("engineer".parse::<Role>(), Ok(Role::Engineer));
        assert!("root".parse::<Role>().unwrap_err().contains("viewer"));
    }
}
