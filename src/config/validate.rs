//! Checks that span sections: unique listener names and binds, listeners
//! naming existing pools, per-listener limits within the process limit, and
//! the admin address not colliding with a listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::error::Report;
use super::locate::KeyPath;
use super::model::{Admin, Server};

/// What the checks need of a listener; known even when its affinity or
/// another part of it is broken, so those errors hide no duplicates.
pub(crate) struct Facts {
    pub name: Arc<str>,
    /// `None`: the bind did not parse (already reported).
    pub bind: Option<SocketAddr>,
    pub pool: Arc<str>,
    pub max_connections: usize,
}

/// What the cross-section checks look at. Sections that could not be read are
/// `None` (their own errors are already reported); `pool_names` holds every
/// pool named in the file, readable or not, so no reference errors cascade.
pub(crate) struct Parts<'a> {
    pub admin: Option<&'a Admin>,
    pub server: Option<&'a Server>,
    pub pool_names: &'a [String],
    pub listeners: &'a [(KeyPath, Facts)],
}

pub(crate) fn cross(r: &mut Report, parts: &Parts<'_>) {
    let mut names: HashMap<&str, &KeyPath> = HashMap::new();
    let mut binds: Vec<(SocketAddr, &str, &KeyPath)> = Vec::new();
    for (path, l) in parts.listeners {
        let name = &*l.name;
        if let Some(first) = names.get(name) {
            let line = r.line_of(&first.key("name"));
            r.err(
                &path.key("name"),
                format!("duplicate listener name `{name}` (first used at line {line})"),
            );
        } else {
            names.insert(name, path);
        }

        if let Some(bind) = l.bind {
            binds_check(r, &mut binds, parts.admin, path, name, bind);
        }

        // With no pools at all, "at least one pool is required" says it all.
        let names = parts.pool_names;
        if !names.is_empty() && !names.iter().any(|p| *p == *l.pool) {
            let known = names.join(", ");
            r.err(
                &path.key("pool"),
                format!("no pool named `{}` (pools: {known})", l.pool),
            );
        }

        if let Some(server) = parts.server {
            if l.max_connections > server.max_connections {
                r.err(
                    &path.key("max_connections"),
                    format!(
                        "max_connections {} exceeds server.max_connections {}",
                        l.max_connections, server.max_connections
                    ),
                );
            }
        }
    }
}

/// `bind` against the binds seen so far and against `admin.listen`.
fn binds_check<'a>(
    r: &mut Report,
    binds: &mut Vec<(SocketAddr, &'a str, &'a KeyPath)>,
    admin: Option<&Admin>,
    path: &'a KeyPath,
    name: &'a str,
    bind: SocketAddr,
) {
    let bind_path = path.key("bind");
    if let Some((other, other_name, other_path)) = binds.iter().find(|(b, ..)| overlaps(*b, bind)) {
        let line = r.line_of(&other_path.key("bind"));
        let message = if *other == bind {
            format!("duplicate bind {bind}: already used by listener `{other_name}` (line {line})")
        } else {
            format!("bind {bind} overlaps {other} of listener `{other_name}` (line {line})")
        };
        r.err(&bind_path, message);
    }
    binds.push((bind, name, path));
    if let Some(admin) = admin {
        if overlaps(admin.listen, bind) {
            r.err(
                &bind_path,
                format!("bind {bind} collides with admin.listen {}", admin.listen),
            );
        }
    }
}

/// Whether two sockets could not both be bound: same port (other than the
/// ephemeral 0) and the same address, or a wildcard covering the other one
/// (`0.0.0.0` covers IPv4, `[::]` is dual-stack and covers both).
pub(crate) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers =
        |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a.ip() == b.ip() || covers(a, b) || covers(b, a)
}

#[cfg(test)]
mod tests {
    use super::overlaps;

    fn a(s: &str) -> std::net::SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn overlapping_binds() {
        assert!(overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("[::1]:80"), a("[::]:80")));
        assert!(overlaps(a("127.0.0.1:80"), a("[::]:80")));
        assert!(!overlaps(a("0.0.0.0:80"), a("[::1]:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
