//! What every edgeloop config file (agent, collector, rule file) shares: strict TOML parsing
//! whose errors carry line and column, then a validation pass that reports every problem by key.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

/// One thing wrong with a config, located by its key (`sources.press-3.period`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

/// Reads a file for [`parse`]; the error names the file.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })
}

/// Parses TOML strictly (the types use `deny_unknown_fields`), then runs `problems` and fails
/// with all of them at once. `path` only names the file in errors.
pub fn parse<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    problems: impl FnOnce(&T) -> Vec<Problem>,
) -> Result<T, ConfigError> {
    let config: T =
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
    let problems = problems(&config);
    if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid { path: path.into(), problems }) }
}
