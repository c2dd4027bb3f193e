//! Conversion of one `listeners[i]` entry, including its affinity key
//! (`cookie`, `header`, `query`, `source_ip`), into the typed model.

use std::sync::Arc;
use std::time::Duration;

use serde_yaml::Value;

use super::error::Report;
use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use super::validate::Facts;
use super::values::{self, Scalar, Zero};

const KEY_KINDS: &str = "`cookie`, `header`, `query`, `source_ip`";

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
        other => {
            let spelled = format!("{other:?}").to_lowercase();
            r.err(
                &path.key("protocol"),
                format!("protocol `{spelled}` is not supported yet (only `http` for now)"),
            );
            Protocol::Http
        }
    };
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
    if raw.proxy_protocol.is_some() {
        r.err(
            &path.key("proxy_protocol"),
            "proxy_protocol is not supported yet",
        );
    }
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
    };
    let ap = path.key("affinity");
    let key = key(r, &ap.key("key"), &raw.affinity.key, session_ttl);
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
    let listener = match (bind, key) {
        (Some(bind), Some(key)) => Some(Listener {
            name: facts.name.clone(),
            bind,
            protocol,
            pool: facts.pool.clone(),
            max_connections,
            timeouts,
            max_header_bytes,
            affinity: Affinity { key, fallback },
        }),
        _ => None,
    };
    Some((facts, listener))
}

fn key(r: &mut Report, path: &KeyPath, value: &Value, session_ttl: Duration) -> Option<Key> {
    let map = match value {
        Value::String(s) if s == "source_ip" => return Some(Key::SourceIp(IpMask::default())),
        Value::Mapping(m) if !m.is_empty() => m,
        _ => {
            r.err(
                path,
                "key must be `source_ip` or one of `{ cookie: { name: NAME } }`, \
                 `{ header: NAME }`, `{ query: NAME }`, `{ source_ip: { ipv4_mask: N } }`",
            );
            return None;
        }
    };
    let mut out = None;
    for (i, (k, v)) in map.iter().enumerate() {
        let kind = values::key_text(k);
        let kp = path.key(&kind);
        if i > 0 {
            r.err_key(&kp, format!("key takes exactly one of {KEY_KINDS}"));
            continue;
        }
        out = match kind.as_str() {
            "cookie" => cookie(r, &kp, v, session_ttl),
            "header" => header(r, &kp, v),
            "query" => query(r, &kp, v),
            "source_ip" => source_ip(r, &kp, v),
            _ => {
                r.err_key(
                    &kp,
                    format!("unknown key kind `{kind}`, expected one of {KEY_KINDS}"),
                );
                None
            }
        };
    }
    out
}

fn cookie(r: &mut Report, path: &KeyPath, v: &Value, session_ttl: Duration) -> Option<Key> {
    let raw: RawCookie = r.de(path, v)?;
    let name = raw.name.as_str();
    let name_ok = values::is_token(name);
    if !name_ok {
        r.err(
            &path.key("name"),
            format!("`{name}` is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
        );
    }
    let insert = if raw.insert.unwrap_or(false) {
        let max_age = values::duration(
            r,
            &path.key("max_age"),
            raw.max_age.as_ref(),
            session_ttl,
            Zero::Rejected,
        );
        let secret = match &raw.secret_file {
            Some(s) => Some(secret(r, &path.key("secret_file"), s)?),
            None => None,
        };
        Some(CookieInsert { max_age, secret })
    } else {
        for (key, given) in [
            ("max_age", raw.max_age.is_some()),
            ("secret_file", raw.secret_file.is_some()),
        ] {
            if given {
                r.err_key(
                    &path.key(key),
                    format!("{key} only applies with `insert: true`"),
                );
            }
        }
        None
    };
    name_ok.then(|| {
        Key::Cookie(CookieKey {
            name: name.to_owned(),
            insert,
        })
    })
}

fn secret(r: &mut Report, path: &KeyPath, raw: &Scalar) -> Option<Vec<u8>> {
    let bytes = values::read_secret_file(r, path, raw)?;
    if bytes.len() < MIN_SECRET_BYTES {
        r.err(
            path,
            format!(
                "the secret in `{}` is {} bytes; it must be at least {MIN_SECRET_BYTES}",
                raw.as_str(),
                bytes.len()
            ),
        );
        return None;
    }
    Some(bytes)
}

fn header(r: &mut Report, path: &KeyPath, v: &Value) -> Option<Key> {
    let raw: Scalar = r.de(path, v)?;
    let text = raw.as_str();
    match http::HeaderName::from_bytes(text.as_bytes()) {
        Ok(name) if name.as_str().starts_with("x-tether-") => {
            r.err(path, format!("`{text}`: X-Tether-* headers are removed from client requests; pick another header"));
            None
        }
        Ok(name) => Some(Key::Header { name }),
        Err(_) => {
            r.err(path, format!("`{text}` is not a valid header name"));
            None
        }
    }
}

fn query(r: &mut Report, path: &KeyPath, v: &Value) -> Option<Key> {
    let raw: Scalar = r.de(path, v)?;
    let name = raw.as_str();
    let bad = |c: char| c.is_whitespace() || c.is_control() || "&=#?".contains(c);
    if name.is_empty() || name.chars().any(bad) {
        r.err(
            path,
            format!("`{name}` is not a valid query parameter name"),
        );
        return None;
    }
    Some(Key::Query {
        name: name.to_owned(),
    })
}

fn source_ip(r: &mut Report, path: &KeyPath, v: &Value) -> Option<Key> {
    let raw: RawSourceIp = match v {
        Value::Null => RawSourceIp::default(),
        _ => r.de(path, v)?,
    };
    let default = IpMask::default();
    let mut mask = |key: &str, given: Option<u8>, max: u8| match given {
        Some(m) if m == 0 || m > max => {
            r.err(&path.key(key), format!("{key} must be between 1 and {max}"));
            max
        }
        Some(m) => m,
        None => max,
    };
    Some(Key::SourceIp(IpMask {
        ipv4: mask("ipv4_mask", raw.ipv4_mask, default.ipv4),
        ipv6: mask("ipv6_mask", raw.ipv6_mask, default.ipv6),
    }))
}
