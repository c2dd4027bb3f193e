//! Prometheus metrics (prefix `tether_`), names as in the spec.
//!
//! Everything lives in one [`Metrics`] registry created at start. Hot paths do
//! not look labels up per request: [`StatusCounters`] resolves a
//! `(listener, pool, backend)` counter per status code once, and other
//! per-listener/per-pool handles are resolved when the runtime is built.
//! Gauges that mirror state owned elsewhere (sessions per backend) are set
//! just before each scrape. Series whose labels are known before anything
//! happens are created at 0 by their owner (`start`).

mod start;

pub use start::StoreOps;

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub connections_active: IntGaugeVec,
    pub connections_refused: IntCounterVec,
    pub upstream_connections_active: IntGaugeVec,
    pub backend_up: IntGaugeVec,
    pub sessions: IntGaugeVec,
    pub affinity_lookups: IntCounterVec,
    pub session_moves: IntCounterVec,
    pub health_checks: IntCounterVec,
    /// Passive mark-downs refused by `health.passive.max_ejected_percent`.
    pub passive_ejections_refused: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// `tether_config_last_reload_successful`: 0 while the last reload was rejected.
    pub config_last_reload_ok: IntGauge,
    /// `tether_vip_leader`: 1 while this node holds the virtual IP.
    pub vip_leader: IntGauge,
    /// `tether_vip_transitions_total`: changes of this node's VIP role.
    pub vip_transitions: IntCounter,
    /// `tether_backend_resolutions_total{pool,backend,result}`: host-name lookups of backends.
    pub backend_resolutions: IntCounterVec,
    pub store_up: IntGaugeVec,
    pub store_operations: IntCounterVec,
    /// `tether_store_op_seconds{store,op}`: latency of store round trips.
    pub store_op_seconds: HistogramVec,
    /// `tether_store_sessions{store}`: sessions held in this process (provisional ones apart).
    pub store_sessions: IntGaugeVec,
    /// `tether_store_max_sessions{store}`: `store.max_sessions`, the bound of
    /// `store_sessions` + `provisional_sessions`.
    pub store_max_sessions: IntGaugeVec,
    pub sessions_evicted: IntCounterVec,
    pub sessions_expired: IntCounterVec,
    /// Provisional sessions (inserted cookies not back yet) now.
    pub provisional_sessions: IntGaugeVec,
    pub bytes_total: IntCounterVec,
    pub notifications: IntCounterVec,
    pub no_backend: IntCounterVec,
    pub move_latency: HistogramVec,
    pub proxy_protocol_errors: IntCounterVec,
    /// `tether_tls_handshake_failures_total{listener,reason}`.
    pub tls_handshake_failures: IntCounterVec,
    /// `tether_tls_cert_reloads_total{listener,cert,result}`.
    pub tls_cert_reloads: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help).namespace("tether"), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Names are static and unique: registration cannot fail.
    let _ = r.register(Box::new(v.clone()));
    v
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help).namespace("tether"), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(v.clone()));
    v
}

fn single_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace("tether"))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

fn single_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace("tether"))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::unset();
        m.process_at_zero();
        m
    }

    fn unset() -> Self {
        let r = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Request duration, first byte in to last byte out",
            )
            .namespace("tether")
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["listener", "pool"],
        )
        .unwrap_or_else(|e| panic!("metric request_duration_seconds: {e}"));
        let _ = r.register(Box::new(request_duration.clone()));
        Metrics {
            requests_total: counter(
                &r,
                "requests_total",
                "Requests answered",
                &["listener", "pool", "backend", "status"],
            ),
            request_duration,
            connections_active: gauge(
                &r,
                "connections_active",
                "Open client connections",
                &["listener"],
            ),
            connections_refused: counter(
                &r,
                "connections_refused_total",
                "Client connections closed at accept (limits)",
                &["listener"],
            ),
            upstream_connections_active: gauge(
                &r,
                "upstream_connections_active",
                "Requests and tunnels in flight to a backend",
                &["pool", "backend"],
            ),
            backend_up: gauge(
                &r,
                "backend_up",
                "1 if the backend is up",
                &["pool", "backend"],
            ),
            sessions: gauge(
                &r,
                "sessions",
                "Sessions pinned to a backend",
                &["pool", "backend"],
            ),
            affinity_lookups: counter(
                &r,
                "affinity_lookups_total",
                "Affinity decisions",
                &["pool", "result"],
            ),
            session_moves: counter(
                &r,
                "session_moves_total",
                "Sessions re-pinned",
                &["pool", "from", "to", "reason"],
            ),
            health_checks: counter(
                &r,
                "health_checks_total",
                "Health check results",
                &["pool", "backend", "result"],
            ),
            passive_ejections_refused: counter(
                &r,
                "passive_ejections_refused_total",
                "Passive mark-downs refused: the pool's max_ejected_percent were down already",
                &["pool"],
            ),
            backend_resolutions: counter(
                &r,
                "backend_resolutions_total",
                "Host-name lookups of backends (result ok, changed or error)",
                &["pool", "backend", "result"],
            ),
            vip_leader: single_gauge(&r, "vip_leader", "1 while this node holds the virtual IP"),
            vip_transitions: single_counter(
                &r,
                "vip_transitions_total",
                "Changes of this node's virtual IP role",
            ),
            config_reloads: counter(
                &r,
                "config_reloads_total",
                "Configuration reloads",
                &["result"],
            ),
            config_last_reload_ok: single_gauge(
                &r,
                "config_last_reload_successful",
                "0 while the last configuration reload was rejected (the running config stays), else 1",
            ),
            store_up: gauge(
                &r,
                "store_up",
                "1 if the affinity store is reachable",
                &["store"],
            ),
            store_operations: counter(
                &r,
                "store_operations_total",
                "Affinity store operations",
                &["store", "op", "result"],
            ),
            store_op_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new("store_op_seconds", "Affinity store round trips")
                        .namespace("tether")
                        .buckets(vec![
                            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                            0.25, 0.5, 1.0,
                        ]),
                    &["store", "op"],
                )
                .unwrap_or_else(|e| panic!("metric store_op_seconds: {e}"));
                let _ = r.register(Box::new(h.clone()));
                h
            },
            store_sessions: gauge(
                &r,
                "store_sessions",
                "Sessions the store holds in this process (embedded: all; redis: its local cache), provisional ones apart",
                &["store"],
            ),
            store_max_sessions: gauge(
                &r,
                "store_max_sessions",
                "store.max_sessions: the bound of store_sessions + provisional_sessions (idle ones are evicted beyond)",
                &["store"],
            ),
            sessions_evicted: counter(
                &r,
                "sessions_evicted_total",
                "Idle sessions evicted by max_sessions",
                &["store"],
            ),
            sessions_expired: counter(
                &r,
                "sessions_expired_total",
                "Idle sessions expired by session_ttl",
                &["store"],
            ),
            provisional_sessions: gauge(
                &r,
                "provisional_sessions",
                "Sessions of inserted cookies that have not come back yet (memory only)",
                &["store"],
            ),
            bytes_total: counter(
                &r,
                "bytes_total",
                "Body bytes proxied",
                &["listener", "direction"],
            ),
            notifications: counter(
                &r,
                "notifications_total",
                "Webhook notifications (sent, failed after retries, dropped on a full queue)",
                &["pool", "result"],
            ),
            no_backend: counter(
                &r,
                "no_backend_total",
                "Requests answered 503 because no backend of the pool was live",
                &["pool"],
            ),
            proxy_protocol_errors: counter(
                &r,
                "proxy_protocol_errors_total",
                "Connections closed over their PROXY header (untrusted, malformed, timeout, closed)",
                &["listener", "reason"],
            ),
            tls_handshake_failures: counter(
                &r,
                "tls_handshake_failures_total",
                "TLS handshakes that failed (timeout, closed, protocol, incompatible, alert, no_cert, other)",
                &["listener", "reason"],
            ),
            tls_cert_reloads: counter(
                &r,
                "tls_cert_reloads_total",
                "Certificate files reloaded after a change on disk (ok, or error: the old one kept serving)",
                &["listener", "cert", "result"],
            ),
            move_latency: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "session_move_seconds",
                        "From a backend's mark-down to the first answered request of a session moved off it",
                    )
                    .namespace("tether")
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0]),
                    &["pool"],
                )
                .unwrap_or_else(|e| panic!("metric session_move_seconds: {e}"));
                let _ = r.register(Box::new(h.clone()));
                h
            },
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Metrics {
    /// Mirror the counters a store keeps itself (read at each scrape): its
    /// sessions as `store_sessions`, its provisional sessions as `provisional_sessions` and
    /// `store_operations_total{op="provisional",result=created|confirmed|expired|evicted|unrecorded}`,
    /// and, for the embedded store, journal lines dropped by a writer that fell
    /// behind as `store_operations_total{op="journal",result="dropped"}`.
    pub fn mirror_store(&self, kind: &str, st: &crate::store::StoreStats) {
        self.store_sessions
            .with_label_values(&[kind])
            .set(i64::try_from(st.sessions).unwrap_or(i64::MAX));
        let p = &st.provisional;
        self.provisional_sessions
            .with_label_values(&[kind])
            .set(i64::try_from(p.sessions).unwrap_or(i64::MAX));
        let mut counters = vec![
            ("provisional", "created", p.created),
            ("provisional", "confirmed", p.confirmed),
            ("provisional", "expired", p.expired),
            ("provisional", "evicted", p.evicted),
            ("provisional", "unrecorded", p.unrecorded),
        ];
        if kind == "embedded" {
            counters.push(("journal", "dropped", st.journal_dropped));
        }
        for (op, result, n) in counters {
            let c = self.store_operations.with_label_values(&[kind, op, result]);
            c.inc_by(n.saturating_sub(c.get()));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `requests_total` handles for one (listener, pool, backend), one per status code,
/// resolved on first use so the per-request cost is an index and an atomic add.
pub struct StatusCounters {
    vec: IntCounterVec,
    labels: [String; 3],
    by_status: Box<[OnceLock<IntCounter>]>,
}

impl StatusCounters {
    pub fn new(vec: &IntCounterVec, listener: &str, pool: &str, backend: &str) -> Self {
        StatusCounters {
            vec: vec.clone(),
            labels: [listener.to_owned(), pool.to_owned(), backend.to_owned()],
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn inc(&self, status: u16) {
        let slot = status.clamp(100, 599) as usize - 100;
        self.by_status[slot]
            .get_or_init(|| {
                let s = status.to_string();
                let [l, p, b] = &self.labels;
                self.vec.with_label_values(&[l.as_str(), p, b, &s])
            })
            .inc();
    }
}
