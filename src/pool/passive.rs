//! Passive health: which failures of real traffic count against a backend
//! ([`Failure::counts`], the one rule every data path goes through), and how
//! much of a pool passive failures may hold down at once
//! (`health.passive.max_ejected_percent`).
//!
//! The rule exists because a client controls much of what a proxy sees go
//! wrong: a client that announces a body and never sends it leaves the
//! backend waiting, and the backend, rightly, does not answer. Counting that
//! would let any client mark any backend down, move its sessions and close
//! its WebSockets. So only what the backend alone can cause counts.

use std::sync::Arc;

use super::{PoolRt, View};
use crate::backend::{BackendRt, Health};
use crate::config::HealthKind;

/// How an exchange with a backend went wrong, as passive health sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The connect was refused or timed out, or its TLS handshake failed.
    Connect,
    /// The connection was reset or closed before a response head.
    Reset,
    /// No response head within `response_header`.
    Silent,
    /// A 5xx answer (counts only with `health.passive.on_5xx`).
    ServerError,
    /// Anything else: an invalid answer, a body cut after the head (a reset
    /// or `response_idle`), the client's own failure or tether's.
    Other,
}

/// One failed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub fault: Fault,
    /// The client had handed tether the whole request (head and body) when
    /// it failed. Until then a silent or closing backend may only be waiting
    /// for the rest, or reacting to what the client sent: not its fault.
    pub request_complete: bool,
}

impl Failure {
    pub fn new(fault: Fault, request_complete: bool) -> Self {
        Failure {
            fault,
            request_complete,
        }
    }

    /// Does it count against the backend? The reason to log when it does:
    /// a connect refused or timed out; once the whole request was sent, a
    /// reset or no response head within `response_header`; a 5xx only when
    /// the pool asks (`on_5xx`). Nothing else, ever.
    pub fn counts(&self, on_5xx: bool) -> Option<&'static str> {
        match (self.fault, self.request_complete) {
            (Fault::Connect, _) => Some("connect failed"),
            (Fault::Reset, true) => Some("reset before the response head"),
            (Fault::Silent, true) => Some("no response head in time"),
            (Fault::ServerError, _) if on_5xx => Some("5xx response"),
            _ => None,
        }
    }
}

/// How many of `backends` passive failures may hold down at once:
/// `percent` of them rounded down, but always at least one.
pub fn ejection_cap(backends: usize, percent: u8) -> usize {
    (backends.saturating_mul(usize::from(percent)) / 100).max(1)
}

impl PoolRt {
    /// Count `f` against backend `b` if the rule says so: `fall` such
    /// failures in a row mark it down, unless the pool's ejection cap is
    /// reached (then it stays up, and the refusal is logged and counted).
    pub fn passive_failure(&self, b: &Arc<BackendRt>, f: Failure) {
        let v = self.view();
        let p = &v.cfg.health.passive;
        if !passive_on(&v) {
            return;
        }
        let Some(why) = f.counts(p.on_5xx) else {
            tracing::debug!(pool = %self.name, backend = %b.id, fault = ?f.fault, request_complete = f.request_complete, "failure not held against the backend");
            return;
        };
        let run = b.passive_failure();
        if run < v.cfg.health.fall {
            return;
        }
        let cap = ejection_cap(v.backends.len(), p.max_ejected_percent);
        let old = {
            // One decision at a time, so two failing backends cannot both
            // take the last slot.
            let _one = self.ejections.lock().unwrap_or_else(|e| e.into_inner());
            if b.health() == Health::Down {
                return;
            }
            let held = v.backends.iter().filter(|x| x.passively_ejected()).count();
            if held >= cap {
                self.metrics
                    .passive_ejections_refused
                    .with_label_values(&[&*self.name])
                    .inc();
                // Once per run of failures; later ones of the same run are only counted.
                if run == v.cfg.health.fall {
                    tracing::warn!(pool = %self.name, backend = %b.id, cause = why, held, cap, max_ejected_percent = p.max_ejected_percent, "passive failures would mark the backend down, but max_ejected_percent of the pool is down already: it stays up");
                }
                return;
            }
            b.eject()
        };
        if let Some(old) = old {
            self.health_changed(b, old, Health::Down, why);
        }
    }

    /// Do request outcomes count towards marking backends down? (Without active
    /// checks nothing would bring a passively downed backend back.)
    pub fn passive_enabled(&self) -> bool {
        passive_on(&self.view())
    }

    /// Do 5xx answers count as passive failures?
    pub fn passive_5xx(&self) -> bool {
        let v = self.view();
        passive_on(&v) && v.cfg.health.passive.on_5xx
    }
}

fn passive_on(v: &View) -> bool {
    v.cfg.health.passive.enabled && !matches!(v.cfg.health.kind, HealthKind::None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::metrics::Metrics;
    use crate::store::{MemoryStore, Store};

    /// Pool `app` over `n` backends with passive health on, `fall: 1`.
    fn pool(n: usize, passive: &str) -> Arc<PoolRt> {
        let backends: String = (0..n)
            .map(|i| format!("      - {{ id: b{i}, addr: \"127.0.0.1:{}\" }}\n", 9000 + i))
            .collect();
        let text = format!(
            "pools:\n  app:\n    health: {{ kind: tcp, fall: 1, passive: {passive} }}\n    backends:\n{backends}\
             listeners:\n  - {{ name: web, bind: \"127.0.0.1:1\", pool: app, affinity: {{ key: source_ip }} }}\n"
        );
        let snap =
            config::parse(std::path::Path::new("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let store = MemoryStore::open(&snap.store).expect("open");
        let p = Arc::new(PoolRt::new(
            snap.pools[0].clone(),
            store.pool("app"),
            Arc::new(Metrics::new()),
        ));
        for b in p.view().backends.iter() {
            p.mark_health(b, Health::Up, "test");
        }
        p
    }

    fn down(p: &PoolRt) -> Vec<String> {
        p.view()
            .backends
            .iter()
            .filter(|b| b.health() == Health::Down)
            .map(|b| b.id.to_string())
            .collect()
    }

    const RESET: Failure = Failure {
        fault: Fault::Reset,
        request_complete: true,
    };

    #[tokio::test]
    async fn passive_failures_hold_at_most_the_cap_down_and_active_checks_are_not_limited() {
        let p = pool(4, "{ max_ejected_percent: 50 }");
        let b = p.view().backends.to_vec();
        // A client's stalled body (an incomplete request) never counts.
        p.passive_failure(&b[0], Failure::new(Fault::Silent, false));
        assert!(down(&p).is_empty());
        for x in &b[..3] {
            p.passive_failure(x, RESET);
        }
        assert_eq!(down(&p), ["b0", "b1"], "two of four at 50%");
        assert!(b[0].passively_ejected() && !b[2].passively_ejected());
        // Active checks are not capped, nor counted against the cap.
        p.mark_health(&b[3], Health::Down, "active check");
        assert_eq!(down(&p), ["b0", "b1", "b3"]);
        p.passive_failure(&b[2], RESET);
        assert_eq!(down(&p), ["b0", "b1", "b3"]);
        // b0 comes back: its slot is free for b2.
        p.mark_health(&b[0], Health::Up, "active check");
        p.passive_failure(&b[2], RESET);
        assert_eq!(down(&p), ["b1", "b2", "b3"]);
    }

    #[tokio::test]
    async fn an_active_mark_down_keeps_its_cause() {
        let p = pool(2, "{ max_ejected_percent: 50 }");
        let b = p.view().backends.to_vec();
        p.mark_health(&b[0], Health::Down, "active check");
        // Already down: passive failures do not take it over (nor a slot).
        p.passive_failure(&b[0], RESET);
        assert!(!b[0].passively_ejected());
        p.passive_failure(&b[1], RESET);
        assert_eq!(down(&p), ["b0", "b1"]);
    }

    #[test]
    fn only_what_the_backend_caused_counts() {
        use Fault::*;
        for complete in [true, false] {
            assert!(Failure::new(Connect, complete).counts(false).is_some());
            assert!(Failure::new(Other, complete).counts(true).is_none());
            assert_eq!(
                Failure::new(ServerError, complete).counts(true),
                Some("5xx response")
            );
            assert!(Failure::new(ServerError, complete).counts(false).is_none());
        }
        for fault in [Reset, Silent] {
            assert!(Failure::new(fault, true).counts(false).is_some());
            // The client had not sent everything: the backend may be waiting for it.
            assert!(Failure::new(fault, false).counts(true).is_none());
        }
    }

    #[test]
    fn the_cap_rounds_down_but_always_allows_one() {
        assert_eq!(ejection_cap(4, 50), 2);
        assert_eq!(ejection_cap(3, 50), 1);
        assert_eq!(ejection_cap(1, 50), 1);
        assert_eq!(ejection_cap(1, 0), 1);
        assert_eq!(ejection_cap(10, 10), 1);
        assert_eq!(ejection_cap(10, 100), 10);
        assert_eq!(ejection_cap(0, 100), 1);
    }
}
