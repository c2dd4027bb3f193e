//! Certificate selection by SNI for one listener, swappable at run time.
//!
//! The set of certificates is immutable and held behind an `ArcSwap`: a
//! handshake loads the current set without a lock, and a reload builds a
//! whole new set (a certificate's names may change with it) and swaps it in,
//! so the next handshake sees it and running ones keep what they picked.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use super::certs::LoadedCert;

/// One named certificate of a listener.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Arc<str>,
    pub cert: LoadedCert,
}

/// The certificates of a listener and the lookup tables built from their names.
#[derive(Debug)]
pub struct CertSet {
    entries: Vec<Entry>,
    /// Exact DNS name -> entry; the first certificate listed wins a name.
    exact: HashMap<String, usize>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl CertSet {
    /// `default` indexes `entries`, which is not empty (the config checked both).
    pub fn new(entries: Vec<Entry>, default: usize) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for n in &e.cert.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        // An out-of-range default cannot come from a checked config; fall back to the first.
        let default = if default < entries.len() { default } else { 0 };
        CertSet {
            entries,
            exact,
            wildcard,
            default,
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry for `sni`: an exact name, then a wildcard one level up, then the default.
    pub fn pick(&self, sni: Option<&str>) -> Option<&Entry> {
        let i = sni
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|s| {
                self.exact.get(&s).copied().or_else(|| {
                    let (_, parent) = s.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(self.default);
        self.entries.get(i)
    }

    /// This set with entry `idx` replaced by `cert`.
    pub fn with_replaced(&self, idx: usize, cert: LoadedCert) -> CertSet {
        let mut entries = self.entries.clone();
        if let Some(e) = entries.get_mut(idx) {
            e.cert = cert;
        }
        CertSet::new(entries, self.default)
    }
}

/// rustls' hook into the current set.
#[derive(Debug)]
pub struct Resolver {
    set: ArcSwap<CertSet>,
}

impl Resolver {
    pub fn new(set: CertSet) -> Resolver {
        Resolver {
            set: ArcSwap::from_pointee(set),
        }
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }

    /// Replace entry `idx`; the next handshake uses it.
    pub fn replace(&self, idx: usize, cert: LoadedCert) {
        let next = self.set.load().with_replaced(idx, cert);
        self.set.store(Arc::new(next));
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set
            .load()
            .pick(hello.server_name())
            .map(|e| e.cert.key.clone())
    }
}
