//! Conversion of one `pools.NAME` entry (settings, health check, backends)
//! from its raw form into the typed model, recording every bad value.

use std::collections::HashMap;
use std::sync::Arc;

use serde_yaml::Value;

use super::error::Report;
use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use super::values::{self, Zero};

/// One pool; `None` when its section could not be read at all.
pub(crate) fn pool(r: &mut Report, path: &KeyPath, name: &str, value: &Value) -> Option<Pool> {
    let raw: RawPool = r.de(path, value)?;
    let bounded_load = raw.bounded_load.filter(|c| {
        let ok = c.is_finite() && *c > 1.0;
        if !ok {
            r.err(
                &path.key("bounded_load"),
                "bounded_load must be greater than 1.0 (like 1.25); omit it for no bound",
            );
        }
        ok
    });
    let drain_timeout = values::duration(
        r,
        &path.key("drain_timeout"),
        raw.drain_timeout.as_ref(),
        DRAIN_TIMEOUT,
        Zero::Rejected,
    );
    let close_spread = values::duration(
        r,
        &path.key("close_spread"),
        raw.close_spread.as_ref(),
        CLOSE_SPREAD,
        Zero::Allowed,
    );
    let resolve_interval = values::duration(
        r,
        &path.key("resolve_interval"),
        raw.resolve_interval.as_ref(),
        RESOLVE_INTERVAL,
        Zero::Rejected,
    );
    let t = raw.timeouts.unwrap_or_default();
    let tp = path.key("timeouts");
    let timeouts = PoolTimeouts {
        connect: values::duration(
            r,
            &tp.key("connect"),
            t.connect.as_ref(),
            CONNECT_TIMEOUT,
            Zero::Rejected,
        ),
        response_header: values::duration(
            r,
            &tp.key("response_header"),
            t.response_header.as_ref(),
            RESPONSE_HEADER_TIMEOUT,
            Zero::Rejected,
        ),
        response_idle: values::duration(
            r,
            &tp.key("response_idle"),
            t.response_idle.as_ref(),
            RESPONSE_IDLE_TIMEOUT,
            Zero::Rejected,
        ),
    };
    let health = health(r, &path.key("health"), raw.health);
    let notify = raw.notify.and_then(|n| notify(r, &path.key("notify"), n));
    let backends = backends(r, &path.key("backends"), raw.backends.as_ref());
    let tls_given = raw.tls.is_some();
    let tls = raw
        .tls
        .and_then(|t| super::tls::pool_tls(r, &path.key("tls"), t));
    let protocol = protocol(r, path, raw.protocol, tls_given);
    Some(Pool {
        name: Arc::from(name),
        hash: match raw.hash.unwrap_or(RawHash::Maglev) {
            RawHash::Maglev => HashKind::Maglev,
            RawHash::Ketama => HashKind::Ketama,
            RawHash::Rendezvous => HashKind::Rendezvous,
        },
        bounded_load,
        on_backend_down: match raw.on_backend_down.unwrap_or(RawOnBackendDown::Migrate) {
            RawOnBackendDown::Migrate => OnBackendDown::Migrate,
            RawOnBackendDown::Keep => OnBackendDown::Keep,
        },
        failback: match raw.failback.unwrap_or(RawFailback::Stay) {
            RawFailback::Stay => Failback::Stay,
            RawFailback::Return => Failback::Return,
        },
        drain_timeout,
        close_spread,
        resolve_interval,
        timeouts,
        health,
        notify,
        send_proxy: raw.send_proxy.map(|v| match v {
            RawProxyVersion::V1 => ProxyVersion::V1,
            RawProxyVersion::V2 => ProxyVersion::V2,
        }),
        tls,
        protocol,
        backends,
    })
}

/// `pools.NAME.protocol` against the pool's `tls`: `h2` is HTTP/2 over that
/// TLS (there is no other way to agree on h2), `h2c` is cleartext by name.
fn protocol(
    r: &mut Report,
    path: &KeyPath,
    raw: Option<RawUpstreamProtocol>,
    tls: bool,
) -> UpstreamProtocol {
    match (raw.unwrap_or(RawUpstreamProtocol::Http1), tls) {
        (RawUpstreamProtocol::Http1, _) => UpstreamProtocol::Http1,
        (RawUpstreamProtocol::H2, true) => UpstreamProtocol::H2,
        (RawUpstreamProtocol::H2c, false) => UpstreamProtocol::H2c,
        (RawUpstreamProtocol::H2, false) => {
            r.err(
                &path.key("protocol"),
                "protocol h2 is HTTP/2 over TLS and needs the pool's `tls: { sni: ... }`; \
                 for cleartext HTTP/2 write `protocol: h2c`",
            );
            UpstreamProtocol::H2
        }
        (RawUpstreamProtocol::H2c, true) => {
            r.err(
                &path.key("protocol"),
                "protocol h2c is cleartext HTTP/2 and cannot go with the pool's `tls`; \
                 for HTTP/2 over TLS write `protocol: h2`",
            );
            UpstreamProtocol::H2c
        }
    }
}

/// `health.service`: a gRPC service name, sent as a protobuf string.
fn grpc_service(r: &mut Report, path: &KeyPath, raw: Option<String>) -> String {
    let service = raw.unwrap_or_default();
    if service.chars().any(|c| c.is_whitespace() || c.is_control()) {
        r.err(
            path,
            format!("health service `{service}` must be a service name like `app.v1.Devices`, without spaces"),
        );
    }
    service
}

fn notify(r: &mut Report, path: &KeyPath, raw: RawNotify) -> Option<Notify> {
    // Zero is allowed: the drain is then announced at its deadline, just before the moves.
    let before = values::duration(
        r,
        &path.key("before"),
        raw.before.as_ref(),
        NOTIFY_BEFORE,
        Zero::Allowed,
    );
    match webhook(raw.webhook.as_str().trim()) {
        Ok(webhook) => Some(Notify { webhook, before }),
        Err(message) => {
            r.err(&path.key("webhook"), message);
            None
        }
    }
}

/// `http://host[:port][/path]`; the problem in words otherwise.
fn webhook(text: &str) -> Result<Webhook, String> {
    let example = "like http://127.0.0.1:8000/tether-events";
    let not_http = || format!("`{text}` is not an http:// URL: write one {example}");
    if !text.contains("://") {
        // http::Uri would call a bare `host/path` an "invalid format"; say what is missing.
        return Err(not_http());
    }
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL ({e}): write one {example}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https webhooks are not supported yet".to_owned()),
        _ => return Err(not_http()),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{text}` has no host: write one {example}"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{text}`: user names and passwords in the URL are not supported"
        ));
    }
    let bracketed = authority.host();
    let host = bracketed.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{text}` has no host: write one {example}"));
    }
    // Read the port text ourselves: `Authority::port` answers None both for no
    // port and for one that is not a u16, and the latter must not become 80.
    let after_host = authority.as_str().get(bracketed.len()..).unwrap_or("");
    let port = match after_host.strip_prefix(':') {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "`{text}` has an invalid port `{p}` (must be 1-65535)"
                ))
            }
        },
    };
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Ok(Webhook {
        host: host.to_owned(),
        port,
        path: if path.is_empty() { "/" } else { path }.to_owned(),
    })
}

fn health(r: &mut Report, path: &KeyPath, raw: Option<RawHealth>) -> Health {
    let given = raw.is_some();
    let h = raw.unwrap_or_default();
    let default_kind = if given {
        RawHealthKind::Http
    } else {
        RawHealthKind::None
    };
    let kind = h.kind.unwrap_or(default_kind);
    if kind != RawHealthKind::Http {
        let http_only = [
            ("path", h.path.is_some()),
            ("expect_status", h.expect_status.is_some()),
            ("method", h.method.is_some()),
            ("host", h.host.is_some()),
        ];
        for (key, set) in http_only {
            if set {
                r.err_key(
                    &path.key(key),
                    format!("{key} only applies to `kind: http`"),
                );
            }
        }
    }
    if kind != RawHealthKind::Grpc && h.service.is_some() {
        r.err_key(&path.key("service"), "service only applies to `kind: grpc`");
    }
    let interval = values::duration(
        r,
        &path.key("interval"),
        h.interval.as_ref(),
        HEALTH_INTERVAL,
        Zero::Rejected,
    );
    let timeout = values::duration(
        r,
        &path.key("timeout"),
        h.timeout.as_ref(),
        HEALTH_TIMEOUT,
        Zero::Rejected,
    );
    if timeout > interval {
        // Point at whichever of the two the file actually sets.
        let key = if h.timeout.is_some() {
            "timeout"
        } else {
            "interval"
        };
        r.err(
            &path.key(key),
            format!(
                "health timeout ({}) must not exceed the interval ({})",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    let rise = h.rise.unwrap_or(HEALTH_RISE);
    let fall = h.fall.unwrap_or(HEALTH_FALL);
    for (key, n) in [("rise", rise), ("fall", fall)] {
        if n == 0 {
            r.err(&path.key(key), format!("{key} must be >= 1"));
        }
    }
    let slowstart = values::duration(
        r,
        &path.key("slowstart"),
        h.slowstart.as_ref(),
        HEALTH_SLOWSTART,
        Zero::Allowed,
    );
    let passive = passive(r, &path.key("passive"), h.passive, kind);
    let kind = match kind {
        RawHealthKind::None => HealthKind::None,
        RawHealthKind::Tcp => HealthKind::Tcp,
        RawHealthKind::Grpc => HealthKind::Grpc {
            service: grpc_service(r, &path.key("service"), h.service),
        },
        RawHealthKind::Http => {
            let method = method(r, &path.key("method"), h.method);
            let host = h.host.filter(|host| {
                // It goes verbatim into a request header: no spaces, no line breaks.
                let ok = !host.is_empty()
                    && host.bytes().all(|b| b.is_ascii_graphic())
                    && http::HeaderValue::from_str(host).is_ok();
                if !ok {
                    r.err(
                        &path.key("host"),
                        format!(
                            "health host `{host}` must be a host name or host:port without spaces"
                        ),
                    );
                }
                ok
            });
            let hpath = h.path.unwrap_or_else(|| HEALTH_PATH.to_owned());
            if !hpath.starts_with('/') || hpath.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                r.err(
                    &path.key("path"),
                    format!("health path `{hpath}` must start with `/` and contain no spaces"),
                );
            }
            let sp = path.key("expect_status");
            let codes = h
                .expect_status
                .unwrap_or_else(|| vec![i64::from(HEALTH_EXPECT_STATUS)]);
            if codes.is_empty() {
                r.err(&sp, "expect_status needs at least one status code");
            }
            let mut expect_status = Vec::with_capacity(codes.len());
            for (i, code) in codes.into_iter().enumerate() {
                match u16::try_from(code) {
                    Ok(c) if (100..=599).contains(&c) => expect_status.push(c),
                    _ => r.err(
                        &sp.idx(i),
                        format!("status {code} is not an HTTP status (100-599)"),
                    ),
                }
            }
            HealthKind::Http {
                method,
                path: hpath,
                host,
                expect_status,
            }
        }
    };
    Health {
        kind,
        interval,
        timeout,
        rise,
        fall,
        slowstart,
        passive,
    }
}

/// The probe's method: any token; the standard ones in any case (`head` is HEAD).
fn method(r: &mut Report, path: &KeyPath, raw: Option<String>) -> http::Method {
    const STANDARD: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
    ];
    let Some(raw) = raw else {
        return HEALTH_METHOD;
    };
    let upper = raw.trim().to_ascii_uppercase();
    if upper == "CONNECT" {
        r.err(
            path,
            "CONNECT cannot be a health check method (it opens a tunnel)",
        );
        return HEALTH_METHOD;
    }
    let text = if STANDARD.contains(&upper.as_str()) {
        upper.as_str()
    } else {
        raw.trim()
    };
    match http::Method::from_bytes(text.as_bytes()) {
        Ok(m) if values::is_token(text) => m,
        _ => {
            r.err(
                path,
                format!("`{raw}` is not an HTTP method (a token like GET, HEAD or OPTIONS)"),
            );
            HEALTH_METHOD
        }
    }
}

/// Passive health; off by default with `kind: none`, whose backends could never come back.
fn passive(
    r: &mut Report,
    path: &KeyPath,
    raw: Option<RawPassive>,
    kind: RawHealthKind,
) -> Passive {
    let p = raw.unwrap_or_default();
    let active = kind != RawHealthKind::None;
    let enabled = p.enabled.unwrap_or(active);
    if enabled && !active {
        r.err(
            &path.key("enabled"),
            "passive health needs an active check (kind: http, grpc or tcp) to bring a backend back up",
        );
    }
    let on_5xx = p.on_5xx.unwrap_or(false);
    if on_5xx && !enabled {
        r.err(
            &path.key("on_5xx"),
            "on_5xx only applies when passive health is enabled",
        );
    }
    let mp = path.key("max_ejected_percent");
    let max_ejected_percent = match p.max_ejected_percent {
        None => PASSIVE_MAX_EJECTED_PERCENT,
        Some(n) => {
            if !enabled {
                r.err(
                    &mp,
                    "max_ejected_percent only applies when passive health is enabled",
                );
            }
            u8::try_from(n)
                .ok()
                .filter(|n| *n <= 100)
                .unwrap_or_else(|| {
                    r.err(
                        &mp,
                        format!("max_ejected_percent must be an integer from 0 to 100, not {n}"),
                    );
                    PASSIVE_MAX_EJECTED_PERCENT
                })
        }
    };
    Passive {
        enabled: enabled && active,
        on_5xx: on_5xx && enabled,
        max_ejected_percent,
    }
}

fn backends(r: &mut Report, path: &KeyPath, value: Option<&Value>) -> Vec<Backend> {
    let items = match value {
        None | Some(Value::Null) => {
            r.err(path, "a pool needs at least one backend");
            return Vec::new();
        }
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            r.err(
                path,
                "backends must be a list like `- { id: app-1, addr: \"127.0.0.1:9001\" }`",
            );
            return Vec::new();
        }
    };
    if items.is_empty() {
        r.err(path, "a pool needs at least one backend");
    }
    let mut seen: HashMap<String, KeyPath> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let bp = path.idx(i);
        let Some(raw) = r.de::<RawBackend>(&bp, item) else {
            continue;
        };
        let idp = bp.key("id");
        let id = raw.id.as_str();
        if let Some(problem) = values::id_problem("backend id", id) {
            r.err(&idp, problem);
        } else if let Some(first) = seen.get(id) {
            let line = r.line_of(first);
            r.err(
                &idp,
                format!("duplicate backend id `{id}` (first used at line {line})"),
            );
        } else {
            seen.insert(id.to_owned(), idp);
        }
        let addr = values::backend_addr(r, &bp.key("addr"), &raw.addr);
        let weight = raw.weight.unwrap_or(WEIGHT);
        if weight == 0 {
            r.err(&bp.key("weight"), "weight must be >= 1");
        }
        if let Some(addr) = addr {
            out.push(Backend {
                id: Arc::from(id),
                addr,
                weight,
            });
        }
    }
    out
}
