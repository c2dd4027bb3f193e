//! Configuration: `proxy.yaml` text -> raw serde structs -> validated [`Snapshot`].
//!
//! [`load`] / [`parse`] report every problem in a file at once, each located
//! as `FILE:LINE:COL: key.path: message` (see [`ConfigErrors`]); [`summary`]
//! is the one-line description `tether check` prints.
//!
//! Files: `raw` (serde shapes and defaults), `build` (the pipeline),
//! `model` / `model_tls` (the typed result), `sections` / `pool` /
//! `listener` / `key` / `tls` (conversion), `validate` (cross-section
//! checks), `values` (scalar converters), `keypath` and `locate` (key path ->
//! line:col), `error`.

mod build;
mod error;
mod key;
mod keypath;
mod listener;
mod locate;
mod model;
mod model_tls;
mod pool;
mod raw;
mod sections;
mod tls;
mod validate;
mod values;
mod vip;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use model_tls::*;
pub use raw::DEFAULT_BACKLOG;
pub use values::{parse_duration, DurationError, MAX_DURATION};

/// Reads and validates a configuration file. Relative paths inside it
/// (`token_file`, `secret_file`, `store.path`, TLS certificates, keys and CAs)
/// are resolved against the file's directory; files other than `store.path`
/// are read and checked now.
pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) => Err(ConfigErrors::single(
            path,
            1,
            1,
            format!("cannot read config file `{}`: {e}", path.display()),
        )),
    }
}

/// Validates configuration `text` as if it had been read from `file_name`
/// (used in messages and to resolve relative paths).
pub fn parse(file_name: &Path, text: &str) -> Result<Snapshot, ConfigErrors> {
    build::snapshot(file_name, text)
}

/// One line for `tether check`, like
/// `proxy.yaml: 1 pool (2 backends), 1 listener, store embedded`.
pub fn summary(snapshot: &Snapshot) -> String {
    fn count(n: usize, what: &str) -> String {
        if n == 1 {
            format!("1 {what}")
        } else {
            format!("{n} {what}s")
        }
    }
    let backends: usize = snapshot.pools.iter().map(|p| p.backends.len()).sum();
    let store = match &snapshot.store.kind {
        StoreKind::Embedded { .. } => "embedded",
        StoreKind::Redis(_) => "redis",
    };
    format!(
        "{}: {} ({}), {}, store {store}",
        snapshot.source.display(),
        count(snapshot.pools.len(), "pool"),
        count(backends, "backend"),
        count(snapshot.listeners.len(), "listener"),
    )
}
