//! What a write comes back with, whichever store ran it.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: the database is down, slow, overloaded or misconfigured on its side.
    #[error("write failed, will retry: {reason}")]
    Transient { reason: String, retry_after: Option<Duration>, failure: Failure },
    /// The database refused the data itself; retrying cannot help.
    #[error("write refused: {0}")]
    Rejected(String),
    #[error("{0}")]
    Setup(String),
}

/// What a write left out: lines the database refused one by one, the rest of the batch stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub rejected: Vec<Refused>,
}

/// One line the database refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The line as sent.
    pub line: String,
    /// The database's reason.
    pub reason: String,
    /// A reading's line (counted as a lost point), not an event's.
    pub reading: bool,
    /// The reading's sensor or the event's subject.
    pub name: String,
}

/// How a write that is worth retrying failed, for the error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database answered with this (non-2xx) HTTP status.
    Status(u16),
    /// No answer within the request timeout (a hung or overloaded database).
    Timeout,
    /// No connection (the database is down or unreachable).
    Connect,
    /// Anything else: a connection reset mid-request, a local store's I/O error.
    Other,
}

impl Failure {
    /// The counter label: `503`, `timeout`, `connect`, `other`.
    pub fn label(&self) -> String {
        match self {
            Failure::Status(code) => code.to_string(),
            Failure::Timeout => "timeout".into(),
            Failure::Connect => "connect".into(),
            Failure::Other => "other".into(),
        }
    }
}
