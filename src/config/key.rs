//! Conversion of a listener's `affinity.key`: `cookie`, `header`, `query`
//! and `source_ip` (http listeners), `source_ip`, `sni` and `prefix` (tcp
//! listeners), and the check that a key fits its listener's protocol.

use std::time::Duration;

use serde_yaml::Value;

use super::error::Report;
use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use super::values::{self, Scalar, Zero};

const KEY_KINDS: &str = "`cookie`, `header`, `query`, `source_ip`, `sni`, `prefix`";

pub(crate) fn key(
    r: &mut Report,
    path: &KeyPath,
    value: &Value,
    session_ttl: Duration,
) -> Option<Key> {
    let map = match value {
        Value::String(s) if s == "source_ip" => return Some(Key::SourceIp(IpMask::default())),
        Value::String(s) if s == "sni" => return Some(Key::Sni),
        Value::Mapping(m) if !m.is_empty() => m,
        _ => {
            r.err(
                path,
                "key must be `source_ip`, `sni` or one of `{ cookie: { name: NAME } }`, \
                 `{ header: NAME }`, `{ query: NAME }`, `{ source_ip: { ipv4_mask: N } }`, \
                 `{ prefix: { pattern: REGEX } }`",
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
            "prefix" => prefix(r, &kp, v),
            "sni" => {
                r.err(&kp, "sni takes no settings: write `key: sni`");
                None
            }
            _ => {
                r.err_key(
                    &kp,
                    format!(
                        "unknown key kind `{kind}`, expected one of {KEY_KINDS}{}",
                        super::error::SEE_DOCS
                    ),
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

/// HTTP keys need a listener that reads HTTP; stream keys one that does not.
/// The error points at the key kind, the part that has to change.
pub(crate) fn key_fits(r: &mut Report, path: &KeyPath, key: &Key, protocol: Protocol) -> bool {
    let (kind, http_only) = match key {
        Key::Cookie(_) => ("cookie", true),
        Key::Header { .. } => ("header", true),
        Key::Query { .. } => ("query", true),
        Key::Sni => ("sni", false),
        Key::Prefix(_) => ("prefix", false),
        Key::SourceIp(_) => return true,
    };
    if http_only == protocol.reads_http() {
        return true;
    }
    // `key: sni` is a plain string: the key path itself is where it is written.
    let at = if matches!(key, Key::Sni) {
        path.clone()
    } else {
        path.key(kind)
    };
    let message = if http_only {
        format!("`{kind}` keys need an http listener (`protocol: http` or `https`): a tcp or tls listener reads no HTTP (use source_ip, sni or prefix)")
    } else {
        format!("`{kind}` keys need `protocol: tcp` or `protocol: tls`: an http listener keys by cookie, header, query or source_ip")
    };
    r.err(&at, message);
    false
}

/// `{ prefix: { pattern, max_bytes, timeout } }`: the regex is compiled now.
fn prefix(r: &mut Report, path: &KeyPath, v: &Value) -> Option<Key> {
    let raw: RawPrefix = r.de(path, v)?;
    let max_bytes = raw.max_bytes.unwrap_or(PREFIX_MAX_BYTES);
    if max_bytes == 0 || max_bytes > PREFIX_MAX_BYTES_LIMIT {
        r.err(
            &path.key("max_bytes"),
            format!("max_bytes must be between 1 and {PREFIX_MAX_BYTES_LIMIT}"),
        );
    }
    let timeout = values::duration(
        r,
        &path.key("timeout"),
        raw.timeout.as_ref(),
        PREFIX_TIMEOUT,
        Zero::Rejected,
    );
    let pp = path.key("pattern");
    let pattern = match regex::bytes::Regex::new(&raw.pattern) {
        Ok(re) => re,
        Err(e) => {
            // The regex crate's message spans lines (pattern, caret, error): keep it on one.
            let text = e.to_string();
            let last = text.lines().last().unwrap_or("").trim();
            let why = last.strip_prefix("error: ").unwrap_or(last);
            r.err(
                &pp,
                format!("`{}` is not a valid regex: {why}", raw.pattern),
            );
            return None;
        }
    };
    // captures_len counts the whole match as group 0.
    let groups = pattern.captures_len() - 1;
    if groups != 1 {
        r.err(
            &pp,
            format!(
                "`{}` has {groups} capture groups; it needs exactly one, around the id \
                 (use (?:...) for other groups)",
                raw.pattern
            ),
        );
        return None;
    }
    Some(Key::Prefix(PrefixKey {
        pattern,
        max_bytes: max_bytes.clamp(1, PREFIX_MAX_BYTES_LIMIT),
        timeout,
    }))
}
