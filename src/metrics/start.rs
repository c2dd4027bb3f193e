//! Series created at 0 by their owner, before their first event.
//!
//! A series that appears only with its first event reads as "No data" on a
//! dashboard, cannot be told apart from a scrape that failed, and loses that
//! first event to `rate()` / `increase()` (there is no earlier sample). So each
//! series whose label values are known when its owner is built (the process,
//! a store, a pool, a backend, a listener's certificates) is created then.
//!
//! Left to their first event: `requests_total` (its `status` is whatever the
//! backends answer) and `session_moves_total` (one series per (from, to,
//! reason) would be quadratic in backends; `affinity_lookups_total{result=
//! "moved"}` counts each pool's moves from the start, and the shipped
//! dashboard falls back to 0 while no move happened).

use super::Metrics;
use crate::config::{self, BackendAddr, HealthKind};

/// `config_reloads_total{result}`.
const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];
/// `health_checks_total{result}` (`health` module).
const CHECK_RESULTS: [&str; 2] = ["pass", "fail"];
/// `backend_resolutions_total{result}` (`resolve` module).
const RESOLVE_RESULTS: [&str; 3] = ["ok", "changed", "error"];
/// `notifications_total{result}` (`notify` module).
const NOTIFY_RESULTS: [&str; 3] = ["sent", "failed", "dropped"];
/// `tls_cert_reloads_total{result}` (`tls::watch`).
const CERT_RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

/// The `(op, results)` pairs a store reports in `store_operations_total`.
pub type StoreOps = [(&'static str, &'static [&'static str])];

impl Metrics {
    /// The process's own labelled series.
    pub(super) fn process_at_zero(&self) {
        for r in RELOAD_RESULTS {
            let _ = self.config_reloads.with_label_values(&[r]);
        }
        // tether only runs on a configuration it accepted.
        self.config_last_reload_ok.set(1);
    }

    /// `store.max_sessions` (a restart or upgrade changes it, never a reload).
    pub fn store_bound(&self, store: &str, max_sessions: usize) {
        self.store_max_sessions
            .with_label_values(&[store])
            .set(i64::try_from(max_sessions).unwrap_or(i64::MAX));
    }

    /// `store_operations_total` for each op and result a store can report,
    /// `store_op_seconds` for each op (the Redis store: `store/redis/series.rs`).
    pub fn store_ops_at_zero(&self, store: &str, ops: &StoreOps) {
        for (op, results) in ops {
            for r in *results {
                let _ = self.store_operations.with_label_values(&[store, op, r]);
            }
            let _ = self.store_op_seconds.with_label_values(&[store, op]);
        }
    }

    /// A pool's series (`affinity_lookups_total` is held by the pool itself).
    pub fn pool_at_zero(&self, cfg: &config::Pool) {
        let p = &*cfg.name;
        let _ = self.no_backend.with_label_values(&[p]);
        let _ = self.passive_ejections_refused.with_label_values(&[p]);
        let _ = self.move_latency.with_label_values(&[p]);
        if cfg.notify.is_some() {
            for r in NOTIFY_RESULTS {
                let _ = self.notifications.with_label_values(&[p, r]);
            }
        }
    }

    /// A backend's series beyond those its runtime holds (`backend_up`,
    /// `upstream_connections_active`): at start and when a reload adds it.
    pub fn backend_at_zero(&self, cfg: &config::Pool, b: &config::Backend) {
        let labels = [&*cfg.name, &*b.id];
        let _ = self.sessions.with_label_values(&labels);
        if !matches!(cfg.health.kind, HealthKind::None) {
            for r in CHECK_RESULTS {
                let _ = self
                    .health_checks
                    .with_label_values(&[&*cfg.name, &*b.id, r]);
            }
        }
        if matches!(b.addr, BackendAddr::Name { .. }) {
            for r in RESOLVE_RESULTS {
                let _ = (self.backend_resolutions).with_label_values(&[&*cfg.name, &*b.id, r]);
            }
        }
    }

    /// A backend left the pool (drained out): its series go with it, or they
    /// would stay frozen at their last value.
    pub fn forget_backend(&self, pool: &str, backend: &str) {
        let labels = [pool, backend];
        let _ = self.backend_up.remove_label_values(&labels);
        let _ = self.sessions.remove_label_values(&labels);
        let _ = self
            .upstream_connections_active
            .remove_label_values(&labels);
        for r in CHECK_RESULTS {
            let _ = self.health_checks.remove_label_values(&[pool, backend, r]);
        }
        for r in RESOLVE_RESULTS {
            let _ = (self.backend_resolutions).remove_label_values(&[pool, backend, r]);
        }
    }

    /// A TLS listener's certificates: `tls_cert_reloads_total` per certificate.
    pub fn certs_at_zero<'a>(&self, listener: &str, certs: impl IntoIterator<Item = &'a str>) {
        for cert in certs {
            for r in CERT_RELOAD_RESULTS {
                let _ = (self.tls_cert_reloads).with_label_values(&[listener, cert, r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_are_exported_at_zero_from_the_start() {
        let text = String::from_utf8(Metrics::new().render()).expect("utf-8");
        for r in RELOAD_RESULTS {
            let line = format!("tether_config_reloads_total{{result=\"{r}\"}} 0");
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
        assert!(text.contains("tether_config_last_reload_successful 1"));
    }

    /// Pool `p` with a health-checked backend named by host name, notifying.
    fn pool() -> config::Pool {
        let text = "pools:\n  p:\n    health: { kind: tcp }\n\
                    \x20   notify: { webhook: \"http://127.0.0.1:1/\" }\n\
                    \x20   backends: [{ id: b1, addr: \"localhost:1\" }]\n\
                    listeners: [{ name: l, bind: \"127.0.0.1:1\", pool: p, affinity: { key: source_ip } }]\n";
        let snap =
            config::parse(std::path::Path::new("t.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
        snap.pools[0].clone()
    }

    #[test]
    fn pools_and_backends_are_exported_at_zero_and_forgotten_backends_leave_none() {
        let m = Metrics::new();
        let cfg = pool();
        m.pool_at_zero(&cfg);
        m.backend_at_zero(&cfg, &cfg.backends[0]);
        let text = String::from_utf8(m.render()).expect("utf-8");
        for line in [
            "tether_no_backend_total{pool=\"p\"} 0",
            "tether_passive_ejections_refused_total{pool=\"p\"} 0",
            "tether_session_move_seconds_count{pool=\"p\"} 0",
            "tether_notifications_total{pool=\"p\",result=\"dropped\"} 0",
            "tether_sessions{backend=\"b1\",pool=\"p\"} 0",
            "tether_health_checks_total{backend=\"b1\",pool=\"p\",result=\"fail\"} 0",
            "tether_backend_resolutions_total{backend=\"b1\",pool=\"p\",result=\"error\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        m.forget_backend("p", "b1");
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(!text.contains("backend=\"b1\""), "{text}");
    }
}
