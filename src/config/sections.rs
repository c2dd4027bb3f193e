//! Conversion of the `admin`, `server` and `store` sections from their raw
//! form into the typed model, recording every bad value on the way.

use std::sync::Arc;

use super::error::Report;
use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use super::values::{self, Scalar, Zero};

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
    let protect_reads = raw.protect_reads.unwrap_or(false);
    if protect_reads && token.is_none() {
        r.err(
            &path.key("protect_reads"),
            "protect_reads needs a token: set admin.token_file",
        );
    }
    let list = path.key("hosts");
    let hosts = (raw.hosts.iter().flatten().enumerate())
        .filter_map(|(i, s)| admin_host(r, &list.idx(i), s))
        .collect();
    Some(Admin {
        listen: listen?,
        token,
        protect_reads,
        hosts,
    })
}

/// One `admin.hosts` entry: a bare host name, matched on any port.
fn admin_host(r: &mut Report, path: &KeyPath, raw: &Scalar) -> Option<Arc<str>> {
    let text = raw.as_str().trim();
    let unbracketed = text.trim_start_matches('[').trim_end_matches(']');
    let problem = if text.parse::<std::net::IpAddr>().is_ok()
        || unbracketed.parse::<std::net::Ipv6Addr>().is_ok()
    {
        format!("`{text}` is an IP address: those are always answered, list host names only")
    } else if let Some((host, _)) = text.rsplit_once(':') {
        format!("`{text}`: write the name without a port, like `{host}` (any port is accepted)")
    } else if let Some(problem) = values::host_problem(text) {
        format!("`{text}` {problem}")
    } else {
        return Some(text.to_ascii_lowercase().into());
    };
    r.err(path, problem);
    None
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
    let is_redis = matches!(raw.kind, Some(RawStoreKind::Redis));
    if raw.redis.is_some() && !is_redis {
        r.err_key(&path.key("redis"), "redis settings need `kind: redis`");
    }
    if raw.path.is_some() && is_redis {
        r.err_key(
            &path.key("path"),
            "path only applies to `kind: embedded` (the redis store keeps sessions in Redis)",
        );
    }
    let session_ttl = values::duration(
        r,
        &path.key("session_ttl"),
        raw.session_ttl.as_ref(),
        SESSION_TTL,
        Zero::Rejected,
    );
    let provisional_ttl = values::duration(
        r,
        &path.key("provisional_ttl"),
        raw.provisional_ttl.as_ref(),
        PROVISIONAL_TTL,
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
    let kind = match is_redis {
        // On error the report fails the load; the placeholder is never used.
        true => redis(r, &path.key("redis"), raw.redis.unwrap_or_default())
            .map_or(StoreKind::Embedded { path: None }, StoreKind::Redis),
        false => StoreKind::Embedded { path: file },
    };
    Store {
        kind,
        session_ttl,
        max_sessions,
        provisional_ttl,
    }
}

/// `store.redis`: the URL is taken apart here so that a typo is a located
/// load error rather than a failure at the first connection.
fn redis(r: &mut Report, path: &KeyPath, raw: RawRedis) -> Option<RedisConfig> {
    let url_path = path.key("url");
    let text = raw.url.as_ref().map_or(REDIS_URL, |s| s.as_str().trim());
    let url = redis_url(text).map_err(|m| r.err(&url_path, m)).ok();
    let prefix = raw
        .prefix
        .as_ref()
        .map_or(REDIS_PREFIX, |s| s.as_str().trim());
    if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        r.err(
            &path.key("prefix"),
            format!("prefix `{prefix}` must be non-empty, without spaces or control characters"),
        );
    }
    let connect_timeout = values::duration(
        r,
        &path.key("connect_timeout"),
        raw.connect_timeout.as_ref(),
        REDIS_CONNECT_TIMEOUT,
        Zero::Rejected,
    );
    let command_timeout = values::duration(
        r,
        &path.key("command_timeout"),
        raw.command_timeout.as_ref(),
        REDIS_COMMAND_TIMEOUT,
        Zero::Rejected,
    );
    let file_password = raw.password_file.as_ref().and_then(|s| {
        let p = path.key("password_file");
        let text = String::from_utf8(values::read_secret_file(r, &p, s)?);
        text.map_err(|_| r.err(&p, "password_file must contain UTF-8 text"))
            .ok()
    });
    let has_sentinel = raw.sentinel.is_some();
    let sentinel = raw
        .sentinel
        .and_then(|s| sentinel(r, &path.key("sentinel"), s));
    let cluster_path = path.key("cluster");
    let cluster = raw.cluster.and_then(|c| cluster(r, &cluster_path, c));
    if has_sentinel && cluster.is_some() {
        r.err(
            &cluster_path,
            "cluster and sentinel exclude each other: a cluster fails over by itself",
        );
    }
    let ca = match (&raw.ca, url.as_ref().map(|u| u.tls)) {
        (Some(_), Some(false)) => {
            r.err(
                &path.key("ca"),
                "ca applies to TLS only: write the url as rediss://",
            );
            None
        }
        (Some(file), _) => ca_file(r, &path.key("ca"), file),
        (None, _) => None,
    };
    let url = url?;
    if url.host.is_empty() && sentinel.is_none() && cluster.is_none() {
        r.err(
            &url_path,
            "redis.url has no host (only with `sentinel` or `cluster` may it be left out, like redis:///0)",
        );
        return None;
    }
    if cluster.is_some() {
        if url.db != 0 {
            r.err(
                &url_path,
                format!("a Redis Cluster has database 0 only, not {}", url.db),
            );
        }
        // A hash tag in the prefix would put every key in one slot, so one master.
        if prefix.contains('{') {
            r.err(
                &path.key("prefix"),
                format!("prefix `{prefix}` must not contain `{{` with a cluster: a hash tag would put every session in one slot"),
            );
        }
    }
    Some(RedisConfig {
        tls: url.tls,
        ca,
        cluster,
        host: url.host,
        port: url.port,
        db: url.db,
        username: url.username,
        password: file_password.or(url.password),
        prefix: prefix.to_owned(),
        connect_timeout,
        command_timeout,
        sentinel,
    })
}

fn sentinel(r: &mut Report, path: &KeyPath, raw: RawSentinel) -> Option<RedisSentinel> {
    let master = raw.master.as_str().trim();
    if master.is_empty() {
        r.err(&path.key("master"), "master must name the sentinel master");
    }
    if raw.nodes.is_empty() {
        r.err(
            &path.key("nodes"),
            "at least one sentinel node (host:port) is required",
        );
    }
    let list = path.key("nodes");
    let mut nodes = Vec::new();
    for (i, node) in raw.nodes.iter().enumerate() {
        match host_port(node.as_str().trim(), SENTINEL_PORT) {
            Ok((host, _)) if host.is_empty() => r.err(&list.idx(i), "sentinel node has no host"),
            Ok(node) => nodes.push(node),
            Err(m) => r.err(&list.idx(i), format!("sentinel node: {m}")),
        }
    }
    (!master.is_empty() && !nodes.is_empty() && nodes.len() == raw.nodes.len()).then(|| {
        RedisSentinel {
            master: master.to_owned(),
            nodes,
        }
    })
}

fn cluster(r: &mut Report, path: &KeyPath, raw: RawCluster) -> Option<RedisCluster> {
    let list = path.key("nodes");
    if raw.nodes.is_empty() {
        r.err(&list, "at least one cluster node (host:port) is required");
    }
    let mut nodes = Vec::new();
    for (i, node) in raw.nodes.iter().enumerate() {
        match host_port(node.as_str().trim(), 6379) {
            Ok((host, _)) if host.is_empty() => r.err(&list.idx(i), "cluster node has no host"),
            Ok(node) => nodes.push(node),
            Err(m) => r.err(&list.idx(i), format!("cluster node: {m}")),
        }
    }
    (!nodes.is_empty() && nodes.len() == raw.nodes.len()).then_some(RedisCluster { nodes })
}

/// `store.redis.ca`: PEM certificates, checked here so that a wrong file is a
/// located load error rather than a TLS failure at the first connection.
fn ca_file(r: &mut Report, path: &KeyPath, raw: &Scalar) -> Option<Vec<u8>> {
    let file = values::resolve(r, raw);
    let pem = match std::fs::read(&file) {
        Ok(pem) => pem,
        Err(e) => {
            r.err(path, format!("cannot read ca `{}`: {e}", file.display()));
            return None;
        }
    };
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Some(pem),
        Ok(_) => {
            r.err(
                path,
                format!("ca `{}` holds no PEM certificate", file.display()),
            );
            None
        }
        Err(e) => {
            r.err(path, format!("ca `{}`: {e}", file.display()));
            None
        }
    }
}

/// `redis[s]://[user[:password]@]host[:port][/db]`, taken apart.
struct RedisUrl {
    tls: bool,
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: Option<String>,
}

/// Parses a Redis URL; messages never repeat the password.
fn redis_url(url: &str) -> Result<RedisUrl, String> {
    let (tls, rest) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            let scheme = url.split_once("://").map_or(url, |(s, _)| s);
            return Err(format!(
                "`{scheme}` is not a redis URL: write redis://host:port/db or rediss://host:port/db"
            ));
        }
    };
    if rest.contains(['?', '#']) {
        return Err(
            "redis.url takes no query parameters (set connect_timeout and command_timeout as keys)"
                .into(),
        );
    }
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    let decode = |s: &str, what: &str| {
        let text = percent_encoding::percent_decode_str(s).decode_utf8();
        let text =
            text.map_err(|_| format!("the {what} in redis.url is not valid UTF-8 once decoded"))?;
        Ok::<_, String>((!text.is_empty()).then(|| text.into_owned()))
    };
    let (username, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        Some((user, pass)) => (decode(user, "user name")?, decode(pass, "password")?),
        None => (None, None),
    };
    let (host, port) = host_port(hostport, 6379).map_err(|m| format!("redis.url: {m}"))?;
    let db = match db {
        "" => 0,
        n => n.parse::<u32>().map_err(|_| {
            format!("database `{n}` in redis.url must be a number (like redis://127.0.0.1:6379/0)")
        })?,
    };
    Ok(RedisUrl {
        tls,
        host,
        port,
        db: i64::from(db),
        username,
        password,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the host may be empty (checked by the caller).
fn host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (ip, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: an IPv6 address needs its closing `]`"))?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{ip}` is not an IPv6 address"));
        }
        match after {
            "" => (ip, None),
            p => match p.strip_prefix(':') {
                Some(p) => (ip, Some(p)),
                None => return Err(format!("`{text}`: expected `:port` after `]`")),
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!(
                    "`{text}`: write IPv6 addresses in brackets, like [::1]:6379"
                ))
            }
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if !host.chars().all(valid) {
        return Err(format!("`{host}` is not a host name or IP address"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("invalid port `{p}` (must be 1-65535)")),
        },
    };
    Ok((host.to_owned(), port))
}
