//! The routing decision of one HTTP request (spec rules 1 to 6), shared by
//! pingora's path (`router`, HTTP/2) and tether's own HTTP/1.1 path (`h1`):
//! read the key the listener's affinity names, verify or mint the inserted
//! cookie, take the listener's fallback when there is no key, and ask the
//! pool. A request is seen through [`Source`], so each path reads its own
//! representation of the head; nothing here allocates on a cached hit.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::HeaderName;

use super::listener::ListenerRt;
use crate::affinity::cookie::CookieSigner;
use crate::affinity::key::IpKey;
use crate::config::{Fallback, Key};
use crate::pool::Decision;

/// What the decision reads of a request.
pub trait Source {
    /// The value of cookie `name`.
    fn cookie(&self, name: &str) -> Option<&str>;
    /// The first value of header `name`, trimmed, if usable as a key.
    fn header(&self, name: &HeaderName) -> Option<&str>;
    /// The raw query parameter `name`.
    fn query(&self, name: &str) -> Option<&str>;
}

/// pingora's request head (its HTTP/2 path, and its HTTP/1.1 one where a
/// listener keeps it).
impl Source for pingora::http::RequestHeader {
    fn cookie(&self, name: &str) -> Option<&str> {
        crate::affinity::key::cookie(&self.headers, name)
    }

    fn header(&self, name: &HeaderName) -> Option<&str> {
        crate::affinity::key::header(&self.headers, name)
    }

    fn query(&self, name: &str) -> Option<&str> {
        crate::affinity::key::query(self.uri.query(), name)
    }
}

/// The session key, borrowed from the request where it can be.
pub enum SessionKey<'a> {
    None,
    Borrowed(&'a str),
    Ip(IpKey),
    /// A freshly minted cookie's id.
    Owned(String),
}

impl SessionKey<'_> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            SessionKey::None => None,
            SessionKey::Borrowed(s) => Some(s),
            SessionKey::Ip(k) => Some(k.as_str()),
            SessionKey::Owned(s) => Some(s),
        }
    }
}

/// Where a request goes.
pub struct Routed<'a> {
    pub key: SessionKey<'a>,
    /// A cookie value to set on the answer (new, or re-signed at half its age).
    pub set_cookie: Option<String>,
    pub decision: Decision,
}

pub enum Outcome<'a> {
    Route(Routed<'a>),
    /// tether answers itself with this status (400: no key under `reject`;
    /// 503: the store failed).
    Answer(u16),
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Decide the backend of a request of listener `l` from `client_ip`.
pub async fn decide<'a>(
    l: &ListenerRt,
    req: &'a impl Source,
    client_ip: Option<IpAddr>,
) -> Outcome<'a> {
    let mut key = SessionKey::None;
    let mut set_cookie = None;
    // A store hit found while checking the cookie, reused as the decision.
    let mut early: Option<Decision> = None;
    // Our own cookie came back (verified): its session gets confirmed.
    let mut returned = false;
    match &l.cfg.affinity.key {
        Key::Cookie(c) => match (&c.insert, &l.signer) {
            (Some(ins), Some(signer)) => {
                let now = now_secs();
                let max_age = ins.max_age.as_secs().min(u64::from(u32::MAX)) as u32;
                let raw = req.cookie(&c.name);
                // The session's stamp lets a cookie verified before skip the HMAC.
                let hit = raw
                    .and_then(CookieSigner::id_of)
                    .and_then(|id| l.pool.route_hit(id));
                let meta = match &hit {
                    Some(Decision::Backend { live: Some(g), .. }) => Some(g.meta()),
                    _ => None,
                };
                match raw.and_then(|v| signer.verify_with(v, meta)) {
                    Some(v) => {
                        key = SessionKey::Borrowed(v.id);
                        early = hit;
                        returned = true;
                        if now.saturating_sub(v.issued) >= max_age / 2 {
                            set_cookie = Some(signer.sign(v.id, now));
                        }
                    }
                    None => {
                        let Some(id) = signer.new_id() else {
                            return Outcome::Answer(500);
                        };
                        set_cookie = Some(signer.sign(&id, now));
                        key = SessionKey::Owned(id);
                    }
                }
            }
            _ => {
                key = req
                    .cookie(&c.name)
                    .map_or(SessionKey::None, SessionKey::Borrowed)
            }
        },
        Key::Header { name } => {
            key = req
                .header(name)
                .map_or(SessionKey::None, SessionKey::Borrowed)
        }
        Key::Query { name } => {
            key = req
                .query(name)
                .map_or(SessionKey::None, SessionKey::Borrowed)
        }
        Key::SourceIp(mask) => {
            if let Some(ip) = client_ip {
                key = SessionKey::Ip(IpKey::new(ip, *mask));
            }
        }
        // Stream keys: the config allows them on tcp listeners only.
        Key::Sni | Key::Prefix(_) => {}
    }
    let minted = matches!(key, SessionKey::Owned(_));
    if key.as_str().is_none() {
        match l.cfg.affinity.fallback {
            Fallback::Reject => return Outcome::Answer(400),
            Fallback::Random => {
                return Outcome::Route(Routed {
                    key,
                    set_cookie,
                    decision: l.pool.route_random(),
                })
            }
            Fallback::SourceIp => match client_ip {
                Some(ip) => key = SessionKey::Ip(IpKey::new(ip, Default::default())),
                None => return Outcome::Answer(400),
            },
        }
    }
    let decision = match early {
        Some(d) => d,
        None => {
            let Some(k) = key.as_str() else {
                return Outcome::Answer(400);
            };
            // A minted cookie's session is provisional until the cookie comes back.
            let routed = match (minted, returned) {
                (true, _) => Ok(l.pool.route_new_cookie(k)),
                (false, true) => l.pool.route_cookie(k).await,
                (false, false) => l.pool.route(k).await,
            };
            match routed {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(pool = %l.pool.name, error = %e, "affinity store failed");
                    return Outcome::Answer(503);
                }
            }
        }
    };
    Outcome::Route(Routed {
        key,
        set_cookie,
        decision,
    })
}
