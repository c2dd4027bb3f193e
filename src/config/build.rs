//! The loading pipeline: YAML text -> `serde_yaml::Value` -> one raw piece at
//! a time (admin, server, store, each pool, each listener) -> typed sections ->
//! cross-section checks -> [`Snapshot`], or every error found on the way.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::error::{ConfigErrors, Report, SEE_DOCS};
use super::locate::{Index, KeyPath, ALIAS_FACTOR, ALIAS_SLACK};
use super::model::Snapshot;
use super::raw::{RawAdmin, RawServer, RawStore, RawVip, SESSION_TTL, TOP_KEYS};
use super::values::{id_problem, key_text};
use super::{listener, pool, sections, validate};

pub(crate) fn snapshot(file: &Path, text: &str) -> Result<Snapshot, ConfigErrors> {
    // Indexed first: its count of alias expansions stops a file that would
    // become hundreds of megabytes of values before serde_yaml copies it out.
    // (A file yaml-rust2 cannot read has an empty index and no count: only
    // serde_yaml's own repetition limit applies then.)
    let index = Index::build(text);
    if let Some(at) = index.alias_overflow() {
        return Err(ConfigErrors::single(
            file,
            at.line,
            at.col,
            format!(
                "aliases expand the document past {ALIAS_FACTOR} times its own nodes \
                 plus {ALIAS_SLACK}: refused (an anchor referenced too often?)"
            ),
        ));
    }
    let mut root: Value = serde_yaml::from_str(text).map_err(|e| syntax_error(file, &e))?;
    let mut r = Report::new(file, index);
    let top = KeyPath::root();
    if let Err(e) = root.apply_merge() {
        r.err(&top, format!("invalid merge key (`<<`): {e}"));
        return Err(r.finish());
    }
    let map = match root {
        Value::Mapping(m) => m,
        Value::Null => {
            r.err(
                &top,
                "the file is empty: expected `pools` and `listeners` at least",
            );
            return Err(r.finish());
        }
        _ => {
            r.err(
                &top,
                "the file must be a mapping with `admin`, `server`, `store`, `pools`, `listeners`",
            );
            return Err(r.finish());
        }
    };
    for k in map.keys() {
        let name = key_text(k);
        if !TOP_KEYS.contains(&name.as_str()) {
            let expected = TOP_KEYS.join("`, `");
            r.err_key(
                &top.key(&name),
                format!("unknown field `{name}`, expected one of `{expected}`{SEE_DOCS}"),
            );
        }
    }

    let path = top.key("admin");
    let admin = section::<RawAdmin>(&mut r, &path, map.get("admin"))
        .and_then(|raw| sections::admin(&mut r, &path, raw));
    let path = top.key("server");
    let server = section::<RawServer>(&mut r, &path, map.get("server"))
        .map(|raw| sections::server(&mut r, &path, raw));
    let path = top.key("store");
    let store = section::<RawStore>(&mut r, &path, map.get("store"))
        .map(|raw| sections::store(&mut r, &path, raw));
    let session_ttl = store.as_ref().map_or(SESSION_TTL, |s| s.session_ttl);

    let path = top.key("vip");
    let vip = match map.get("vip") {
        None | Some(Value::Null) => None,
        Some(v) => r
            .de::<RawVip>(&path, v)
            .and_then(|raw| super::vip::vip(&mut r, &path, raw, store.as_ref().map(|s| &s.kind))),
    };

    let (pool_names, pools) = pools(&mut r, &top.key("pools"), map.get("pools"));

    let path = top.key("listeners");
    let mut facts = Vec::new();
    let mut listeners = Vec::new();
    match map.get("listeners") {
        Some(Value::Sequence(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let lp = path.idx(i);
                match listener::listener(&mut r, &lp, item, session_ttl) {
                    Some((f, l)) => {
                        facts.push((lp, f));
                        listeners.push(l);
                    }
                    None => listeners.push(None),
                }
            }
        }
        None | Some(Value::Null) | Some(Value::Sequence(_)) => {
            r.err(&path, "at least one listener is required")
        }
        Some(_) => r.err(&path, "listeners must be a list of listeners"),
    }

    validate::cross(
        &mut r,
        &validate::Parts {
            admin: admin.as_ref(),
            server: server.as_ref(),
            pool_names: &pool_names,
            listeners: &facts,
        },
    );
    if r.has_errors() {
        return Err(r.finish());
    }
    let pools: Option<Vec<_>> = pools.into_iter().collect();
    let listeners: Option<Vec<_>> = listeners.into_iter().collect();
    match (admin, server, store, pools, listeners) {
        (Some(admin), Some(server), Some(store), Some(pools), Some(listeners)) => Ok(Snapshot {
            source: file.to_path_buf(),
            admin,
            server,
            store,
            pools,
            listeners,
            vip,
        }),
        _ => {
            // Every `None` above comes with an error; this is a bug guard.
            r.err(
                &top,
                "internal error: a section was dropped without an error",
            );
            Err(r.finish())
        }
    }
}

/// An optional section: absent or empty means all defaults.
fn section<T: DeserializeOwned + Default>(
    r: &mut Report,
    path: &KeyPath,
    value: Option<&Value>,
) -> Option<T> {
    match value {
        None | Some(Value::Null) => Some(T::default()),
        Some(v) => r.de(path, v),
    }
}

/// Every pool name in the file (readable or not) and each pool, in file order.
fn pools(
    r: &mut Report,
    path: &KeyPath,
    value: Option<&Value>,
) -> (Vec<String>, Vec<Option<super::model::Pool>>) {
    let empty = Mapping::new();
    let map = match value {
        Some(Value::Mapping(m)) => m,
        Some(Value::Null) | None => &empty,
        Some(_) => {
            r.err(path, "pools must be a mapping of pool name to settings");
            return (Vec::new(), Vec::new());
        }
    };
    if map.is_empty() {
        r.err(path, "at least one pool is required");
    }
    let mut names = Vec::with_capacity(map.len());
    let mut pools = Vec::with_capacity(map.len());
    for (k, v) in map {
        let name = key_text(k);
        let pp = path.key(&name);
        if let Some(problem) = id_problem("pool name", &name) {
            r.err_key(&pp, problem);
        }
        pools.push(pool::pool(r, &pp, &name, v));
        names.push(name);
    }
    (names, pools)
}

/// A YAML syntax error: one error at serde_yaml's location.
fn syntax_error(file: &Path, e: &serde_yaml::Error) -> ConfigErrors {
    let (line, col) = e
        .location()
        .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
    let message = e
        .to_string()
        .replacen(&format!(" at line {line} column {col}"), "", 1);
    ConfigErrors::single(file, line, col, format!("invalid YAML: {message}"))
}
