//! Scalar conversions shared by every section: durations (`500ms`, `1s`, `10m`,
//! `24h`), `ip:port` addresses, CIDRs, identifiers, cookie/query names, and
//! files read at load time. Each converter records its own error and answers
//! `None`, so the caller can go on and find the next problem.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::error::Report;
use super::locate::KeyPath;
use super::model::BackendAddr;

/// Any YAML scalar (string, number or bool) as its text, so `id: 7` or
/// `interval: 5` reach our own converters and get our own messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scalar(pub String);

impl Scalar {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a plain value (string or number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether zero is an acceptable duration for a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zero {
    /// Grace periods (`shutdown_grace`, `upgrade_grace`): zero means "at once".
    Allowed,
    /// Timeouts, intervals, lifetimes: zero would never work.
    Rejected,
}

/// The longest duration tether accepts, in the config and the admin API: ten
/// years (of humantime's 365.25 days, so `10y` itself passes). Deadlines are
/// computed as `now + d` (in `Instant`s and u64 milliseconds): bounding every
/// input keeps that arithmetic far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600);

/// Why a written duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "invalid duration `{text}` ({reason}): write a number and a unit, like 500ms, 1s, 10m, 24h"
    )]
    Invalid { text: String, reason: String },
    #[error("`{0}` is longer than 10 years, the longest duration tether accepts")]
    TooLong(String),
}

/// `500ms`, `1s`, `10m`, `24h`, `1m30s`...: at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d > MAX_DURATION => Err(DurationError::TooLong(text.to_owned())),
        Ok(d) => Ok(d),
        // humantime says overflow for a fraction finer than a nanosecond too.
        Err(humantime::DurationError::NumberOverflow) if !text.contains('.') => {
            Err(DurationError::TooLong(text.to_owned()))
        }
        Err(e) => Err(DurationError::Invalid {
            text: text.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// `raw` as a duration, or `default` when absent.
pub(crate) fn duration(
    r: &mut Report,
    path: &KeyPath,
    raw: Option<&Scalar>,
    default: Duration,
    zero: Zero,
) -> Duration {
    let Some(raw) = raw else { return default };
    match parse_duration(raw.as_str()) {
        Ok(d) if d.is_zero() && zero == Zero::Rejected => {
            r.err(path, "must be greater than zero");
            default
        }
        Ok(d) => d,
        Err(e) => {
            r.err(path, e.to_string());
            default
        }
    }
}

/// A literal `ip:port` socket address.
pub(crate) fn socket_addr(r: &mut Report, path: &KeyPath, raw: &Scalar) -> Option<SocketAddr> {
    let text = raw.as_str().trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(a);
    }
    let message = if let Ok(ip) = text.parse::<IpAddr>() {
        match ip {
            IpAddr::V4(_) => format!("`{text}` has no port: write ip:port, like {text}:8080"),
            IpAddr::V6(_) => {
                format!("`{text}` has no port: IPv6 addresses are written [ip]:port, like [{text}]:8080")
            }
        }
    } else if let Some((host, port)) = text.rsplit_once(':') {
        if port.parse::<u16>().is_err() {
            format!("`{text}` has an invalid port `{port}` (must be 0-65535)")
        } else {
            format!(
                "`{text}` is not an ip:port address: `{host}` is not an IP address \
                 (host names are not supported yet; write e.g. 127.0.0.1:{port})"
            )
        }
    } else {
        format!("`{text}` is not an ip:port address (like 127.0.0.1:8080 or [::1]:8080)")
    };
    r.err(path, message);
    None
}

/// A backend address: `ip:port`, or `host:port` with a DNS host name.
pub(crate) fn backend_addr(r: &mut Report, path: &KeyPath, raw: &Scalar) -> Option<BackendAddr> {
    let text = raw.as_str().trim();
    let named = text
        .rsplit_once(':')
        .filter(|(host, _)| host.parse::<IpAddr>().is_err() && !host.starts_with('['));
    let Some((host, port)) = named else {
        return socket_addr(r, path, raw).map(BackendAddr::Ip);
    };
    if let Some(problem) = host_problem(host) {
        r.err(path, format!("`{text}`: `{host}` {problem}"));
        return None;
    }
    match port.parse::<u16>() {
        Ok(0) => r.err(path, format!("`{text}`: a backend's port cannot be 0")),
        Ok(port) => {
            return Some(BackendAddr::Name {
                host: host.to_ascii_lowercase().into(),
                port,
            })
        }
        Err(_) => r.err(
            path,
            format!("`{text}` has an invalid port `{port}` (must be 1-65535)"),
        ),
    }
    None
}

/// Why `host` is not a DNS host name (RFC 1123 labels), if it is not.
pub(crate) fn host_problem(host: &str) -> Option<&'static str> {
    if host.is_empty() {
        return Some("is empty: write host:port");
    }
    if host.len() > 253 {
        return Some("is too long for a host name (253 characters at most)");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Some("is not a valid IP address");
    }
    if host.split('.').all(label_ok) {
        None
    } else {
        Some("is neither an IP address nor a valid host name")
    }
}

/// A CIDR (`10.0.0.0/8`, `fd00::/8`); a bare address means just that host.
pub(crate) fn cidr(r: &mut Report, path: &KeyPath, raw: &Scalar) -> Option<IpNet> {
    let text = raw.as_str().trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    r.err(
        path,
        format!("`{text}` is not a CIDR or IP address (like 10.0.0.0/8 or 192.0.2.7)"),
    );
    None
}

/// Pool, backend and listener ids appear in headers and metric labels: they
/// must be non-empty `[A-Za-z0-9._-]+`. Answers the problem, if any.
pub(crate) fn id_problem(what: &str, id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| format!("{what} `{id}` must be non-empty and use only A-Z a-z 0-9 . _ -"))
}

/// An HTTP token (RFC 9110), as cookie names must be.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `raw` resolved against the config file's directory.
pub(crate) fn resolve(r: &Report, raw: &Scalar) -> PathBuf {
    let p = Path::new(raw.as_str());
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        r.base_dir.join(p)
    }
}

/// Reads a file named by the config (`token_file`, `secret_file`), trimmed of
/// surrounding whitespace; a missing, unreadable or empty file is an error.
pub(crate) fn read_secret_file(r: &mut Report, path: &KeyPath, raw: &Scalar) -> Option<Vec<u8>> {
    let key = path.last_key();
    let file = resolve(r, raw);
    match std::fs::read(&file) {
        Ok(bytes) => {
            let trimmed = bytes.trim_ascii();
            if trimmed.is_empty() {
                r.err(path, format!("{key} `{}` is empty", file.display()));
                None
            } else {
                Some(trimmed.to_vec())
            }
        }
        Err(e) => {
            r.err(path, format!("cannot read {key} `{}`: {e}", file.display()));
            None
        }
    }
}

/// A mapping key as text (`1` and `true` are keys too in YAML).
pub(crate) fn key_text(v: &serde_yaml::Value) -> String {
    use serde_yaml::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_owned(),
        _ => "<complex key>".to_owned(),
    }
}
