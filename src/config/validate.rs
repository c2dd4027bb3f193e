//! Checks that span sections: unique listener names and binds, listeners
//! naming existing pools, per-listener limits within the process limit, and
//! the admin address not colliding with a listener.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::error::Report;
use super::locate::KeyPath;
use super::model::{Admin, Listener, Server};

/// What the cross-section checks look at. Sections that could not be read are
/// `None` (their own errors are already reported); `pool_names` holds every
/// pool named in the file, readable or not, so no reference errors cascade.
pub(crate) struct Parts<'a> {
    pub admin: Option<&'a Admin>,
    pub server: Option<&'a Server>,
    pub pool_names: &'a [String],
    pub listeners: &'a [(KeyPath, Option<Listener>)],
}

pub(crate) fn cross(r: &mut Report, parts: &Parts<'_>) {
    let mut names: HashMap<&str, &KeyPath> = HashMap::new();
    let mut binds: Vec<(SocketAddr, &str, &KeyPath)> = Vec::new();
    for (path, l) in parts.listeners {
        let Some(l) = l else { continue };
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

        let bind_path = path.key("bind");
        if let Some((other, other_name, other_path)) =
            binds.iter().find(|(b, ..)| overlaps(*b, l.bind))
        {
            let line = r.line_of(&other_path.key("bind"));
            let message = if *other == l.bind {
                format!(
                    "duplicate bind {}: already used by listener `{other_name}` (line {line})",
                    l.bind
                )
            } else {
                format!(
                    "bind {} overlaps {other} of listener `{other_name}` (line {line})",
                    l.bind
                )
            };
            r.err(&bind_path, message);
        }
        binds.push((l.bind, name, path));

        if let Some(admin) = parts.admin {
            if overlaps(admin.listen, l.bind) {
                r.err(
                    &bind_path,
                    format!(
                        "bind {} collides with admin.listen {}",
                        l.bind, admin.listen
                    ),
                );
            }
        }

        if !parts.pool_names.iter().any(|p| *p == *l.pool) {
            let known = if parts.pool_names.is_empty() {
                "none".to_owned()
            } else {
                parts.pool_names.join(", ")
            };
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
