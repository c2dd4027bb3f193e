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
use crate::pool::{BackendRt, PoolRt};
use crate::tls::TlsRt;

pub struct ListenerRt {
    pub cfg: config::Listener,
    pub pool: Arc<PoolRt>,
    /// Present when the key is a tether-inserted cookie.
    pub signer: Option<CookieSigner>,
    pub trusted_proxies: Vec<IpNet>,
    /// `requests_total` per backend, in the order of the pool's view when
    /// this listener was built (see `status_for`).
    status: Vec<(Arc<BackendRt>, StatusCounters)>,
    /// `requests_total` for answers tether gives itself (400, 431, 503...), `backend=""`.
    pub own_status: StatusCounters,
    metrics: Arc<Metrics>,
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
    /// `tls`: the listener's TLS state, carried over from the previous build
    /// when its settings did not change (see [`ListenerRt::tls_for`]).
    pub fn new(
        cfg: config::Listener,
        pool: Arc<PoolRt>,
        signer: Option<CookieSigner>,
        trusted_proxies: Vec<IpNet>,
        m: &Arc<Metrics>,
        tls: Option<Arc<TlsRt>>,
    ) -> Self {
        let pool_cfg = pool.cfg();
        let (l, p) = (&*cfg.name, &*pool.name);
        let status: Vec<_> = pool
            .view()
            .backends
            .iter()
            .map(|b| {
                (
                    b.clone(),
                    StatusCounters::new(&m.requests_total, l, p, &b.id),
                )
            })
            .collect();
        if let Some(t) = pool_cfg.tls.as_ref().filter(|t| !t.verify) {
            // Never silently off: the config had to say so, and every start says it again.
            tracing::warn!(listener = l, pool = p, sni = %t.sni, "upstream TLS certificate verification is OFF (verify: false): any certificate is accepted");
        }
        ListenerRt {
            tls,
            status,
            own_status: StatusCounters::new(&m.requests_total, l, p, ""),
            metrics: m.clone(),
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

    /// A new TLS state for `cfg` (certificates loaded now), or `None` for a plain listener.
    pub fn tls_for(cfg: &config::Listener, m: &Metrics) -> Option<Arc<TlsRt>> {
        cfg.tls
            .as_ref()
            .map(|t| Arc::new(TlsRt::new(&cfg.name, t, m)))
    }

    /// Count a response of backend `b` (index `i` in the view it was routed
    /// with). The index hits unless a reload changed the pool since this
    /// listener was built; then the counter is looked up by labels.
    pub fn count_status(&self, i: usize, b: &Arc<BackendRt>, status: u16) {
        if let Some((x, c)) = self.status.get(i) {
            if Arc::ptr_eq(x, b) {
                return c.inc(status);
            }
        }
        match self.status.iter().find(|(x, _)| Arc::ptr_eq(x, b)) {
            Some((_, c)) => c.inc(status),
            None => StatusCounters::new(
                &self.metrics.requests_total,
                &self.cfg.name,
                &self.pool.name,
                &b.id,
            )
            .inc(status),
        }
    }

    /// Do new sessions of this listener honour the pool's bounded load? Not
    /// inserted cookies: their owner is the hash's alone, so any instance
    /// that sees the cookie first makes the same pick.
    pub fn bounded_picks(&self) -> bool {
        !matches!(&self.cfg.affinity.key, config::Key::Cookie(c) if c.insert.is_some())
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}
