//! A listener at runtime (http, https, tcp and tls alike): its config, its
//! pool, its cookie signer, its TLS acceptor and its pre-resolved metric handles.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::affinity::cookie::CookieSigner;
use crate::config;
use crate::l4::ProxyErrors;
use crate::metrics::{Metrics, StatusCounters};
use crate::pool::PoolRt;
use crate::tls::TlsRt;

pub struct ListenerRt {
    pub cfg: config::Listener,
    pub pool: Arc<PoolRt>,
    /// Present when the key is a tether-inserted cookie.
    pub signer: Option<CookieSigner>,
    pub trusted_proxies: Vec<IpNet>,
    /// `requests_total` per backend (pool order); the last entry is for answers
    /// tether gives itself (400, 431, 503...) with `backend=""`.
    pub status: Vec<StatusCounters>,
    pub duration: Histogram,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub connections: IntGauge,
    pub refused: IntCounter,
    /// `proxy_protocol_errors_total` by reason (`proxy_protocol: accept`).
    pub proxy_errors: ProxyErrors,
    /// `https` and `tls` listeners: the handshake and the certificates.
    pub tls: Option<Arc<TlsRt>>,
}

impl ListenerRt {
    pub fn new(
        cfg: config::Listener,
        pool: Arc<PoolRt>,
        signer: Option<CookieSigner>,
        trusted_proxies: Vec<IpNet>,
        m: &Metrics,
    ) -> Self {
        let (l, p) = (&*cfg.name, &*pool.cfg.name);
        let mut status: Vec<_> = pool
            .backends
            .iter()
            .map(|b| StatusCounters::new(&m.requests_total, l, p, &b.id))
            .collect();
        status.push(StatusCounters::new(&m.requests_total, l, p, ""));
        if let Some(t) = pool.cfg.tls.as_ref().filter(|t| !t.verify) {
            // Never silently off: the config had to say so, and every start says it again.
            tracing::warn!(listener = l, pool = p, sni = %t.sni, "upstream TLS certificate verification is OFF (verify: false): any certificate is accepted");
        }
        ListenerRt {
            tls: cfg.tls.as_ref().map(|t| Arc::new(TlsRt::new(l, t, m))),
            status,
            duration: m.request_duration.with_label_values(&[l, p]),
            bytes_in: m.bytes_total.with_label_values(&[l, "in"]),
            bytes_out: m.bytes_total.with_label_values(&[l, "out"]),
            connections: m.connections_active.with_label_values(&[l]),
            refused: m.connections_refused.with_label_values(&[l]),
            proxy_errors: ProxyErrors::new(&m.proxy_protocol_errors, l),
            cfg,
            pool,
            signer,
            trusted_proxies,
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}
