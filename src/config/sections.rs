//! Conversion of the `admin`, `server` and `store` sections from their raw
//! form into the typed model, recording every bad value on the way.

use std::sync::Arc;

use super::error::Report;
use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use super::values::{self, Zero};

pub(crate) fn admin(r: &mut Report, path: &KeyPath, raw: RawAdmin) -> Option<Admin> {
    let listen = match &raw.listen {
        Some(s) => values::socket_addr(r, &path.key("listen"), s),
        None => ADMIN_LISTEN.parse().ok(),
    };
    let token = match &raw.token_file {
        Some(s) => {
            let p = path.key("token_file");
            match values::read_secret_file(r, &p, s).map(String::from_utf8) {
                Some(Ok(t)) => Some(Arc::from(t)),
                Some(Err(_)) => {
                    r.err(&p, "token_file must contain UTF-8 text");
                    None
                }
                None => None,
            }
        }
        None => None,
    };
    Some(Admin {
        listen: listen?,
        token,
    })
}

pub(crate) fn server(r: &mut Report, path: &KeyPath, raw: RawServer) -> Server {
    let shutdown_grace = values::duration(
        r,
        &path.key("shutdown_grace"),
        raw.shutdown_grace.as_ref(),
        SHUTDOWN_GRACE,
        Zero::Allowed,
    );
    let upgrade_grace = values::duration(
        r,
        &path.key("upgrade_grace"),
        raw.upgrade_grace.as_ref(),
        UPGRADE_GRACE,
        Zero::Allowed,
    );
    let max_connections = raw.max_connections.unwrap_or(SERVER_MAX_CONNECTIONS);
    if max_connections == 0 {
        r.err(&path.key("max_connections"), "max_connections must be >= 1");
    }
    let list = path.key("trusted_proxies");
    let trusted_proxies = (raw.trusted_proxies.iter().flatten().enumerate())
        .filter_map(|(i, s)| values::cidr(r, &list.idx(i), s))
        .collect();
    let threads = raw.threads.unwrap_or(THREADS);
    if threads > MAX_THREADS {
        r.err(
            &path.key("threads"),
            format!("threads must be at most {MAX_THREADS} (0 = one per core)"),
        );
    }
    Server {
        shutdown_grace,
        upgrade_grace,
        max_connections,
        trusted_proxies,
        threads,
    }
}

pub(crate) fn store(r: &mut Report, path: &KeyPath, raw: RawStore) -> Store {
    if let Some(RawStoreKind::Redis) = raw.kind {
        r.err(
            &path.key("kind"),
            "redis store is not available in this build yet",
        );
    } else if raw.redis.is_some() {
        r.err_key(
            &path.key("redis"),
            "redis settings need `kind: redis` (and the redis store is not available in this build yet)",
        );
    }
    let session_ttl = values::duration(
        r,
        &path.key("session_ttl"),
        raw.session_ttl.as_ref(),
        SESSION_TTL,
        Zero::Rejected,
    );
    let max_sessions = raw.max_sessions.unwrap_or(MAX_SESSIONS);
    if max_sessions == 0 {
        r.err(&path.key("max_sessions"), "max_sessions must be >= 1");
    }
    let file = match &raw.path {
        Some(s) if s.as_str().trim().is_empty() => {
            r.err(
                &path.key("path"),
                "path must not be empty (omit it to keep sessions in memory only)",
            );
            None
        }
        Some(s) => Some(values::resolve(r, s)),
        None => None,
    };
    Store {
        kind: StoreKind::Embedded { path: file },
        session_ttl,
        max_sessions,
    }
}
