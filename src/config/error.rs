//! Configuration errors: [`ConfigError`] (one located problem), [`ConfigErrors`]
//! (everything wrong with one file), and the [`Report`] that collects them while
//! a file is converted, locating each one through the position index.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::locate::{Index, KeyPath, Pos};

/// Appended to unknown-key errors: where every key is described.
pub(crate) const SEE_DOCS: &str = " (see docs/config.md for every key)";

/// One problem in a configuration file.
///
/// Displays as `FILE:LINE:COL: key.path: message` (the `key.path: ` part is
/// left out for problems that belong to no key, such as YAML syntax errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub col: usize,
    /// Key path like `pools.app.backends[1].weight`; empty for file-level problems.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// A file-level problem (unreadable file, YAML syntax) at `line:col`.
    pub(crate) fn single(file: &Path, line: usize, col: usize, message: String) -> Self {
        ConfigErrors {
            errors: vec![ConfigError {
                file: file.to_path_buf(),
                line,
                col,
                path: String::new(),
                message,
            }],
        }
    }
}

/// One line per error.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Collects located errors while one file is converted.
pub(crate) struct Report {
    file: PathBuf,
    /// Directory that relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    index: Index,
    errors: Vec<ConfigError>,
}

impl Report {
    /// `index`: the file's positions (`Index::build` of its text).
    pub(crate) fn new(file: &Path, index: Index) -> Report {
        Report {
            file: file.to_path_buf(),
            base_dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            index,
            errors: Vec::new(),
        }
    }

    fn push(&mut self, pos: Pos, path: &KeyPath, message: String) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: pos.line,
            col: pos.col,
            path: path.to_string(),
            message,
        });
    }

    /// A problem with the value at `path` (or with the key, for collections).
    pub(crate) fn err(&mut self, path: &KeyPath, message: impl Into<String>) {
        let pos = self.index.pos(path);
        self.push(pos, path, message.into());
    }

    /// A problem with the key at `path` itself (unknown or duplicate keys).
    pub(crate) fn err_key(&mut self, path: &KeyPath, message: impl Into<String>) {
        let pos = self.index.key_pos(path);
        self.push(pos, path, message.into());
    }

    /// The line of `path`, for messages like "first used at line 12".
    pub(crate) fn line_of(&self, path: &KeyPath) -> usize {
        self.index.pos(path).line
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Deserializes one piece of the file; a failure is recorded at the exact
    /// key path inside the piece and yields `None`.
    pub(crate) fn de<T: DeserializeOwned>(
        &mut self,
        path: &KeyPath,
        value: &serde_yaml::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let at = path.join(e.path());
                let message = e.inner().to_string();
                if message.starts_with("unknown field") {
                    self.err_key(&at, format!("{message}{SEE_DOCS}"));
                } else {
                    self.err(&at, message);
                }
                None
            }
        }
    }

    /// All errors, in file order.
    pub(crate) fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.col));
        ConfigErrors {
            errors: self.errors,
        }
    }
}
