//! tether's own affinity cookie: an opaque, signed session id.
//!
//! Value layout (73 ASCII chars, no separators so it needs no quoting):
//! `ID` (22 chars, base64url of 16 random bytes) + `ISSUED` (8 hex chars, unix
//! seconds) + `MAC` (43 chars, base64url of HMAC-SHA256(secret, ID || ISSUED)).
//! The session key is `ID` alone, so re-issuing the cookie (after half its
//! `Max-Age`) keeps the session. A value that fails any check is treated as
//! absent: the client gets a fresh session, never an error.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::hash::hash_key;
use crate::store::SessionMeta;

const ID_LEN: usize = 22;
const ISSUED_LEN: usize = 8;
const MAC_LEN: usize = 43;
pub const VALUE_LEN: usize = ID_LEN + ISSUED_LEN + MAC_LEN;

/// Signs and verifies cookie values with one secret.
pub struct CookieSigner {
    key: hmac::Key,
    rng: SystemRandom,
}

/// A verified cookie: its session key and when it was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified<'a> {
    pub id: &'a str,
    pub issued: u32,
}

impl CookieSigner {
    pub fn new(secret: &[u8]) -> Self {
        CookieSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            rng: SystemRandom::new(),
        }
    }

    /// Check a cookie value; `None` for anything forged, tampered or malformed.
    pub fn verify<'a>(&self, value: &'a str) -> Option<Verified<'a>> {
        if value.len() != VALUE_LEN || !value.is_ascii() {
            return None;
        }
        let (signed, mac) = value.split_at(ID_LEN + ISSUED_LEN);
        let mut tag = [0u8; 33];
        let n = URL_SAFE_NO_PAD.decode_slice(mac, &mut tag).ok()?;
        hmac::verify(&self.key, signed.as_bytes(), &tag[..n]).ok()?;
        let issued = u32::from_str_radix(&signed[ID_LEN..], 16).ok()?;
        Some(Verified {
            id: &signed[..ID_LEN],
            issued,
        })
    }

    /// The session id of a well-formed value, *not yet verified*: only for
    /// finding the session whose stamp [`Self::verify_with`] checks.
    pub fn id_of(value: &str) -> Option<&str> {
        (value.len() == VALUE_LEN && value.is_ascii()).then(|| &value[..ID_LEN])
    }

    /// Like [`Self::verify`], but skips the HMAC when `meta` (the session's
    /// state in the store) holds the fingerprint of this exact value, verified
    /// before; a successful full check records the fingerprint. A forged value
    /// never matches: its fingerprint differs from the genuine one's.
    pub fn verify_with<'a>(
        &self,
        value: &'a str,
        meta: Option<&SessionMeta>,
    ) -> Option<Verified<'a>> {
        let stamp = Self::stamp(value);
        if meta.is_some_and(|m| m.stamp() == stamp) {
            let issued = u32::from_str_radix(value.get(ID_LEN..ID_LEN + ISSUED_LEN)?, 16).ok()?;
            return Some(Verified {
                id: &value[..ID_LEN],
                issued,
            });
        }
        let v = self.verify(value)?;
        if let Some(m) = meta {
            m.set_stamp(stamp);
        }
        Some(v)
    }

    /// Fingerprint of a whole cookie value (never 0, which means "none").
    fn stamp(value: &str) -> u64 {
        hash_key(value.as_bytes()) | 1
    }

    /// A fresh random session id (22 chars).
    pub fn new_id(&self) -> Option<String> {
        let mut raw = [0u8; 16];
        self.rng.fill(&mut raw).ok()?;
        Some(URL_SAFE_NO_PAD.encode(raw))
    }

    /// The cookie value for `id` issued at `now` (unix seconds).
    pub fn sign(&self, id: &str, now: u32) -> String {
        let mut value = String::with_capacity(VALUE_LEN);
        value.push_str(id);
        value.push_str(&format!("{now:08x}"));
        let tag = hmac::sign(&self.key, value.as_bytes());
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut value);
        value
    }
}

/// Generate a random 32-byte secret.
pub fn random_secret() -> Option<Vec<u8>> {
    let mut s = vec![0u8; 32];
    SystemRandom::new().fill(&mut s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = CookieSigner::new(b"0123456789abcdef0123456789abcdef");
        let id = s.new_id().unwrap();
        assert_eq!(id.len(), ID_LEN);
        let v = s.sign(&id, 1_700_000_000);
        assert_eq!(v.len(), VALUE_LEN);
        let ok = s.verify(&v).unwrap();
        assert_eq!(ok.id, id);
        assert_eq!(ok.issued, 1_700_000_000);
        // flip each position: never verifies
        for i in 0..v.len() {
            let mut b = v.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            if t != v {
                assert!(s.verify(&t).is_none(), "tampered at {i}");
            }
        }
        // the stamp fast path: verified once, then recognised; a tampered value is not
        let meta = SessionMeta::default();
        assert_eq!(s.verify_with(&v, Some(&meta)), Some(ok));
        assert_ne!(meta.stamp(), 0);
        assert_eq!(s.verify_with(&v, Some(&meta)), Some(ok));
        let mut t = v.clone().into_bytes();
        t[40] = if t[40] == b'A' { b'B' } else { b'A' };
        assert!(s
            .verify_with(std::str::from_utf8(&t).unwrap(), Some(&meta))
            .is_none());
        assert_eq!(CookieSigner::id_of(&v), Some(&v[..22]));
        let other = CookieSigner::new(b"another-secret-another-secret-xx");
        assert!(other.verify(&v).is_none());
        assert!(s.verify("short").is_none());
        assert!(s.verify(&format!("{v}x")).is_none());
    }
}
