//! Which requests the admin listener answers at all, whatever the route.
//!
//! Without a token the API trusts whoever reaches the port, and a browser can
//! be made to reach it from any web page: by a cross-site request (a form or
//! a `no-cors` fetch needs no preflight) or by DNS rebinding (a name of the
//! attacker's that resolves to the admin address, so the page is same-origin).
//! So: the `Host` must be an IP literal, `localhost` or an `admin.hosts` name
//! (a rebound name is none of these), else 421; and a request carrying an
//! `Origin` must come from the origin its own `Host` names, else 403. Both
//! compare against what the client sent, not against the listening address,
//! so the status page keeps working through a port forward (`ssh -L`), where
//! the browser's Host and Origin both say the forwarded port. Clients that
//! send no `Origin` (curl, scripts, Prometheus) are not browsers running
//! someone else's page, and pass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use http::{header, StatusCode};
use pingora::http::RequestHeader;

/// Why a request is refused before any route sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refused {
    #[error("Host `{0}` is not a name of this admin listener: it answers IP addresses, localhost and the names in admin.hosts")]
    UnknownHost(String),
    #[error("more than one Host")]
    SeveralHosts,
    #[error("Origin `{origin}` is not this page's own ({scheme}://{host}): cross-site requests are refused")]
    CrossOrigin {
        origin: String,
        scheme: &'static str,
        host: String,
    },
}

impl Refused {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Refused::UnknownHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Refused::SeveralHosts => StatusCode::BAD_REQUEST,
            Refused::CrossOrigin { .. } => StatusCode::FORBIDDEN,
        }
    }
}

/// A host as compared: addresses by value, names case-insensitively.
#[derive(Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// `host[:port]` or `[v6][:port]` (a Host header, an Origin's authority).
/// `None`: not an authority at all.
fn authority(text: &str, default_port: u16) -> Option<(Host, u16)> {
    let (host, port) = match text.strip_prefix('[') {
        Some(v6) => {
            let (ip, rest) = v6.split_once(']')?;
            let ip = ip.parse::<Ipv6Addr>().ok()?;
            let port = match rest {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        }
        None => {
            let (name, port) = match text.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (text, None),
            };
            let host = match name.parse::<Ipv4Addr>() {
                Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                Err(_) if valid_name(name) => Host::Name(name.to_ascii_lowercase()),
                Err(_) => return None,
            };
            (host, port)
        }
    };
    // RFC 3986 allows an empty port: it means the default.
    let port = match port {
        None | Some("") => default_port,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
    };
    Some((host, port))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "https" => 443,
        _ => 80,
    }
}

/// Check `req`, received on a listener serving `scheme` (`http`), against
/// the extra host names `hosts` (lower case).
pub(super) fn check(
    req: &RequestHeader,
    scheme: &'static str,
    hosts: &[Arc<str>],
) -> Result<(), Refused> {
    let mut lines = req.headers.get_all(header::HOST).iter();
    let (first, second) = (lines.next(), lines.next());
    if second.is_some() {
        return Err(Refused::SeveralHosts);
    }
    // An absolute-form target names the host itself (RFC 9112 3.2.2).
    let text = match (req.uri.authority(), first) {
        (Some(a), _) => Some(a.as_str().to_owned()),
        (None, Some(v)) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        // No Host at all: HTTP/1.0 tools. Browsers always send one.
        (None, None) => None,
    };
    let own = match &text {
        Some(text) => {
            let Some((host, port)) = authority(text.trim(), default_port(scheme)) else {
                return Err(Refused::UnknownHost(text.clone()));
            };
            let known = match &host {
                Host::Ip(_) => true,
                Host::Name(n) => n == "localhost" || hosts.iter().any(|h| **h == **n),
            };
            if !known {
                return Err(Refused::UnknownHost(text.clone()));
            }
            Some((host, port))
        }
        None => None,
    };
    let mut origins = req.headers.get_all(header::ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let same = origins.next().is_none()
        && own.is_some_and(|own| {
            // `null` (sandboxed frames, file: pages...) has no `://`: never ours.
            origin
                .split_once("://")
                .filter(|(s, _)| s.eq_ignore_ascii_case(scheme))
                .and_then(|(_, rest)| authority(rest, default_port(scheme)))
                .is_some_and(|theirs| theirs == own)
        });
    if same {
        return Ok(());
    }
    Err(Refused::CrossOrigin {
        origin,
        scheme,
        host: text.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, origin: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/api/reload", None).unwrap();
        if let Some(h) = host {
            r.append_header("host", h).unwrap();
        }
        if let Some(o) = origin {
            r.append_header("origin", o).unwrap();
        }
        r
    }

    fn status(host: Option<&str>, origin: Option<&str>) -> u16 {
        let hosts: Vec<Arc<str>> = vec!["admin.example".into()];
        match check(&req(host, origin), "http", &hosts) {
            Ok(()) => 200,
            Err(e) => e.status().as_u16(),
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "10.1.2.3:1",
            "[::1]:9090",
            "[::1]",
            "[::ffff:127.0.0.1]:80",
            "localhost:9090",
            "LOCALHOST",
            "admin.example:443",
            "Admin.Example",
            "127.0.0.1:",
        ] {
            assert_eq!(status(Some(ok), None), 200, "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "admin.example.evil",
            "::1",
            "[::1",
            "[fe80::1%25eth0]:80",
            "127.0.0.1:99999",
            "127.0.0.1:x",
            "",
            "a b",
        ] {
            assert_eq!(status(Some(bad), None), 421, "{bad:?}");
        }
        assert_eq!(status(None, None), 200, "no Host: not a browser");
    }

    #[test]
    fn origins() {
        let host = Some("127.0.0.1:9090");
        assert_eq!(status(host, Some("http://127.0.0.1:9090")), 200);
        assert_eq!(status(host, Some("HTTP://127.0.0.1:9090")), 200);
        assert_eq!(status(Some("127.0.0.1"), Some("http://127.0.0.1:80")), 200);
        assert_eq!(status(Some("127.0.0.1:80"), Some("http://127.0.0.1")), 200);
        assert_eq!(status(Some("[::1]:9"), Some("http://[0::1]:9")), 200);
        assert_eq!(
            status(Some("Admin.Example:9"), Some("http://admin.example:9")),
            200
        );
        for bad in [
            "null",
            "http://127.0.0.1:9091",
            "https://127.0.0.1:9090",
            "http://localhost:9090",
            "http://evil.example",
            "http://127.0.0.1:9090/",
            "http://127.0.0.1:9090@evil.example",
            "",
        ] {
            assert_eq!(status(host, Some(bad)), 403, "{bad:?}");
        }
        assert_eq!(
            status(None, Some("http://127.0.0.1")),
            403,
            "no Host to match"
        );
        let mut two = req(host, Some("http://127.0.0.1:9090"));
        two.append_header("origin", "http://127.0.0.1:9090")
            .unwrap();
        assert!(check(&two, "http", &[]).is_err(), "two Origins");
        let mut two = req(host, None);
        two.append_header("host", "127.0.0.1:9090").unwrap();
        assert_eq!(check(&two, "http", &[]), Err(Refused::SeveralHosts));
    }
}
