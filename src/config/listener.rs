//! Conversion of one `listeners[i]` entry into the typed model; its
//! affinity key is converted by `key`.

use std::sync::Arc;
use std::time::Duration;

use serde_yaml::Value;

use super::error::Report;
use super::key::{key, key_fits};
use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use super::validate::Facts;
use super::values::{self, Scalar, Zero};

/// One listener: what the cross-section checks need, and the listener itself
/// when every part of it converted. `None` when it could not be read at all.
/// `session_ttl` is the default `max_age` of inserted cookies.
pub(crate) fn listener(
    r: &mut Report,
    path: &KeyPath,
    value: &Value,
    session_ttl: Duration,
) -> Option<(Facts, Option<Listener>)> {
    let raw: RawListener = r.de(path, value)?;
    let name = raw.name.as_str();
    if let Some(problem) = values::id_problem("listener name", name) {
        r.err(&path.key("name"), problem);
    }
    let bind = values::socket_addr(r, &path.key("bind"), &raw.bind);
    let protocol = match raw.protocol.unwrap_or(RawProtocol::Http) {
        RawProtocol::Http => Protocol::Http,
        RawProtocol::Https => Protocol::Https,
        RawProtocol::Tcp => Protocol::Tcp,
        RawProtocol::Tls => Protocol::Tls,
    };
    let tls = super::tls::listener_tls(r, path, raw.tls, protocol);
    let h2c = raw.h2c.unwrap_or(false);
    if h2c && protocol != Protocol::Http {
        r.err(
            &path.key("h2c"),
            "h2c only applies to `protocol: http` (https negotiates h2 by ALPN)",
        );
    }
    if raw.pool.as_str().is_empty() {
        r.err(&path.key("pool"), "pool must name a pool");
    }
    let max_connections = raw.max_connections.unwrap_or(LISTENER_MAX_CONNECTIONS);
    if max_connections == 0 {
        r.err(&path.key("max_connections"), "max_connections must be >= 1");
    }
    let max_header_bytes = raw.max_header_bytes.unwrap_or(MAX_HEADER_BYTES);
    if max_header_bytes < MIN_HEADER_BYTES {
        r.err(
            &path.key("max_header_bytes"),
            format!("max_header_bytes must be at least {MIN_HEADER_BYTES}"),
        );
    }
    let proxy_protocol = matches!(raw.proxy_protocol, Some(RawProxyProtocol::Accept));
    let t = raw.timeouts.unwrap_or_default();
    let tp = path.key("timeouts");
    let mut dur = |key: &str, raw: Option<&Scalar>, default| {
        values::duration(r, &tp.key(key), raw, default, Zero::Rejected)
    };
    let timeouts = ListenerTimeouts {
        client_header: dur(
            "client_header",
            t.client_header.as_ref(),
            CLIENT_HEADER_TIMEOUT,
        ),
        idle: dur("idle", t.idle.as_ref(), IDLE_TIMEOUT),
        keepalive: dur("keepalive", t.keepalive.as_ref(), KEEPALIVE_TIMEOUT),
        half_closed: dur("half_closed", t.half_closed.as_ref(), HALF_CLOSED_TIMEOUT),
    };
    let backlog = raw.backlog.unwrap_or(DEFAULT_BACKLOG);
    if backlog == 0 || backlog > BACKLOG_MAX {
        r.err(
            &path.key("backlog"),
            format!("backlog must be between 1 and {BACKLOG_MAX}"),
        );
    }
    let ap = path.key("affinity");
    let key = key(r, &ap.key("key"), &raw.affinity.key, session_ttl)
        .filter(|k| key_fits(r, &ap.key("key"), k, protocol));
    let fallback = match raw.affinity.fallback.unwrap_or(RawFallback::SourceIp) {
        RawFallback::SourceIp => Fallback::SourceIp,
        RawFallback::Random => Fallback::Random,
        RawFallback::Reject => Fallback::Reject,
    };
    let facts = Facts {
        name: Arc::from(name),
        bind,
        pool: Arc::from(raw.pool.as_str()),
        max_connections,
    };
    let listener = match (bind, key, tls) {
        (Some(bind), Some(key), Ok(tls)) => Some(Listener {
            name: facts.name.clone(),
            bind,
            protocol,
            pool: facts.pool.clone(),
            max_connections,
            timeouts,
            max_header_bytes,
            backlog,
            proxy_protocol,
            tls,
            h2c,
            http1_engine: match raw.http1_engine {
                Some(RawHttp1Engine::Pingora) => Http1Engine::Pingora,
                _ => Http1Engine::Tether,
            },
            access_log: raw.access_log.unwrap_or(false),
            affinity: Affinity { key, fallback },
        }),
        _ => None,
    };
    Some((facts, listener))
}
