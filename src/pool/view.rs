//! A pool's [`View`]: its config, its backends and the ring over those that
//! take new sessions, all of one moment; and how a reload turns one view into
//! the next without losing any backend's state.
//!
//! A reload carries backends over by `id`: the same `BackendRt` (health,
//! counters, live tunnels, drain) with its address and weight updated in
//! place. A backend the new config no longer names stays in the view, marked
//! removed and draining for the pool's `drain_timeout`; at the deadline its
//! sessions move with reason `removed` and it leaves the view (`forget`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::PoolRt;
use crate::affinity::hash::{hash_key, Member, Ring};
use crate::backend::{BackendRt, Health};
use crate::config;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::PoolStore;

pub struct View {
    pub cfg: Arc<config::Pool>,
    /// The configured backends in file order, then those a reload removed
    /// that are still draining.
    pub backends: Vec<Arc<BackendRt>>,
    pub(super) ring: Ring,
    /// Ring member -> index in `backends`.
    pub(super) backend_of: Vec<usize>,
    /// Webhook told about drains and moves; kept across reloads that leave `notify` alone.
    pub notifier: Option<Arc<Notifier>>,
    /// Per ring member: the ring this view would have without it, built the
    /// first time a connection to that member fails (see [`View::pick_excluding`]).
    without: Box<[OnceLock<Without>]>,
}

/// A ring over this view's members minus one, and its member -> backend map.
struct Without {
    ring: Ring,
    backend_of: Vec<usize>,
}

/// What a reload changed in one pool (ids), for the reload summary.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PoolChanges {
    pub added: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
    /// Address or weight changed (sessions stay).
    pub changed: Vec<Arc<str>>,
    /// The pool's own settings (hash, health, timeouts...) changed.
    pub settings: bool,
}

impl PoolChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.settings
    }
}

impl View {
    pub(super) fn build(
        cfg: Arc<config::Pool>,
        backends: Vec<Arc<BackendRt>>,
        notifier: Option<Arc<Notifier>>,
    ) -> View {
        let mut members = Vec::new();
        let mut backend_of = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            if b.takes_new() {
                members.push(Member {
                    id: b.id.clone(),
                    weight: b.weight(),
                });
                backend_of.push(i);
            }
        }
        View {
            ring: Ring::build(cfg.hash, &members),
            without: (0..backend_of.len()).map(|_| OnceLock::new()).collect(),
            backend_of,
            cfg,
            backends,
            notifier,
        }
    }

    /// The ring without member `m`, built once per view and member.
    fn without(&self, m: usize) -> &Without {
        self.without[m].get_or_init(|| {
            let keep: Vec<usize> = (0..self.backend_of.len()).filter(|&x| x != m).collect();
            let members: Vec<Member> = keep
                .iter()
                .map(|&x| self.ring.members()[x].clone())
                .collect();
            Without {
                ring: Ring::build(self.cfg.hash, &members),
                backend_of: keep.iter().map(|&x| self.backend_of[x]).collect(),
            }
        })
    }

    pub fn backend(&self, id: &str) -> Option<&Arc<BackendRt>> {
        self.backends.iter().find(|b| &*b.id == id)
    }

    /// Where `b` sits in this view's list (`None`: not in this view).
    pub fn index_of(&self, b: &Arc<BackendRt>) -> Option<usize> {
        self.backends.iter().position(|x| Arc::ptr_eq(x, b))
    }

    /// The pool hash's choice for `key` over the eligible backends, honouring
    /// slow start and, if `bounded`, bounded load.
    pub(super) fn pick(
        &self,
        store: &dyn PoolStore,
        key: &str,
        bounded: bool,
    ) -> Option<Arc<BackendRt>> {
        let h = hash_key(key.as_bytes());
        self.pick_on(&self.ring, &self.backend_of, store, h, bounded)
    }

    /// The choice for key hash `h` once the backends of `failed` are gone:
    /// the owner the re-pin will give the key when they are marked down (the
    /// ring rebuilt without them, not merely the next slot, which differs for
    /// Maglev), so a client that reconnects after its backend died moves once.
    pub(super) fn pick_excluding(
        &self,
        store: &dyn PoolStore,
        h: u64,
        failed: &[Arc<BackendRt>],
        bounded: bool,
    ) -> Option<Arc<BackendRt>> {
        let on_ring: Vec<usize> = (0..self.backend_of.len())
            .filter(|&m| {
                failed
                    .iter()
                    .any(|f| Arc::ptr_eq(f, &self.backends[self.backend_of[m]]))
            })
            .collect();
        let pick = match on_ring[..] {
            [] => self.pick_on(&self.ring, &self.backend_of, store, h, bounded),
            [m] => {
                let w = self.without(m);
                self.pick_on(&w.ring, &w.backend_of, store, h, bounded)
            }
            // Two or more failed at once: rare enough to walk the full ring.
            _ => {
                let fresh = |i: usize| {
                    let b = &self.backends[i];
                    b.takes_new() && !failed.iter().any(|f| Arc::ptr_eq(f, b))
                };
                let m = self.ring.pick_bounded(h, |m| fresh(self.backend_of[m]))?;
                let i = self.backend_of.get(m).copied().filter(|&i| fresh(i))?;
                return Some(self.backends[i].clone());
            }
        };
        pick.filter(|b| !failed.iter().any(|f| Arc::ptr_eq(f, b)))
    }

    fn pick_on(
        &self,
        ring: &Ring,
        backend_of: &[usize],
        store: &dyn PoolStore,
        h: u64,
        bounded: bool,
    ) -> Option<Arc<BackendRt>> {
        let cap = self.cfg.bounded_load.filter(|_| bounded).map(|c| {
            let n = backend_of.len() as f64;
            let total: u64 = backend_of
                .iter()
                .map(|&i| store.sessions_of(&self.backends[i].id))
                .sum();
            (c * (total + 1) as f64 / n).ceil() as u64
        });
        // `takes_new` again here: a backend marked down a moment ago may still be
        // on this ring until `mark_health` has rebuilt it.
        let m = ring.pick_bounded(h, |m| {
            let b = &self.backends[backend_of[m]];
            b.takes_new()
                && cap.is_none_or(|cap| store.sessions_of(&b.id) < cap)
                && super::ramped(&self.cfg, b, h)
        })?;
        let b = &self.backends[*backend_of.get(m)?];
        if b.takes_new() {
            return Some(b.clone());
        }
        // Every candidate refused: the plain pick is only good if it takes sessions.
        backend_of
            .iter()
            .map(|&i| &self.backends[i])
            .find(|b| b.takes_new())
            .cloned()
    }
}

/// A backend new to the pool. With active checks it waits for its first
/// result (`unknown`: no new sessions); without, it is trusted.
pub(super) fn new_backend(
    cfg: &config::Pool,
    b: &config::Backend,
    metrics: &Metrics,
) -> Arc<BackendRt> {
    metrics.backend_at_zero(cfg, b);
    let labels = [&*cfg.name, &*b.id];
    let be = BackendRt::new(
        b.id.clone(),
        b.addr.clone(),
        b.weight,
        metrics
            .upstream_connections_active
            .with_label_values(&labels),
        metrics.backend_up.with_label_values(&labels),
    );
    if matches!(cfg.health.kind, config::HealthKind::None) {
        be.set_health(Health::Up);
    }
    Arc::new(be)
}

/// The notifier for `cfg`: the previous one when `notify` did not change.
pub(super) fn notifier(
    cfg: &config::Pool,
    prev: Option<(&config::Pool, &Arc<Notifier>)>,
    metrics: &Arc<Metrics>,
) -> Option<Arc<Notifier>> {
    let n = cfg.notify.as_ref()?;
    if let Some((old, keep)) = prev {
        if old.notify.as_ref() == Some(n) {
            return Some(keep.clone());
        }
    }
    Some(Arc::new(Notifier::spawn(
        n.webhook.clone(),
        metrics.clone(),
    )))
}

impl PoolRt {
    /// Apply a reloaded config for this pool (same name). Backends are matched
    /// by id; see the module header for what happens to each.
    pub fn reconfigure(self: &Arc<Self>, cfg: config::Pool) -> PoolChanges {
        let mut ch = PoolChanges::default();
        let mut leaving = Vec::new();
        // A pool that starts notifying gets its notification series.
        self.metrics.pool_at_zero(&cfg);
        let cfg = Arc::new(cfg);
        self.update(|old| {
            ch.settings = settings_changed(&old.cfg, &cfg);
            let checks_off = matches!(cfg.health.kind, config::HealthKind::None);
            let mut list = Vec::with_capacity(cfg.backends.len());
            for b in &cfg.backends {
                let rt = match old.backend(&b.id) {
                    Some(rt) => {
                        if rt.reconfigure(&b.addr, b.weight) {
                            ch.changed.push(b.id.clone());
                        }
                        if rt.removed() {
                            // Named again while it drained out: back in service.
                            rt.set_removed(false);
                            rt.stop_drain();
                            ch.added.push(b.id.clone());
                        }
                        rt.clone()
                    }
                    None => {
                        ch.added.push(b.id.clone());
                        new_backend(&cfg, b, &self.metrics)
                    }
                };
                if checks_off && rt.health() != Health::Up {
                    rt.set_health(Health::Up);
                }
                list.push(rt);
            }
            for b in &old.backends {
                if cfg.backends.iter().any(|c| c.id == b.id) {
                    continue;
                }
                if !b.removed() {
                    b.set_removed(true);
                    ch.removed.push(b.id.clone());
                    leaving.push(b.clone());
                }
                list.push(b.clone());
            }
            let prev = old.notifier.as_ref().map(|n| (&*old.cfg, n));
            let notifier = notifier(&cfg, prev, &self.metrics);
            View::build(cfg.clone(), list, notifier)
        });
        for b in leaving {
            self.drain(&b, cfg.drain_timeout);
        }
        ch
    }

    /// The pool is gone from the config: nothing routes to it any more (no
    /// listener names it); its backends drain out like removed ones.
    pub fn retire(self: &Arc<Self>) {
        let deadline = self.cfg().drain_timeout;
        for b in self.view().backends.iter() {
            if !b.removed() {
                b.set_removed(true);
                self.drain(b, deadline);
            }
        }
    }

    /// A removed backend has drained out: drop it from the view.
    pub(super) fn forget(&self, b: &Arc<BackendRt>) {
        self.update(|v| {
            let list = v
                .backends
                .iter()
                .filter(|x| !Arc::ptr_eq(x, b))
                .cloned()
                .collect();
            View::build(v.cfg.clone(), list, v.notifier.clone())
        });
        self.metrics.forget_backend(&self.name, &b.id);
        tracing::info!(pool = %self.name, backend = %b.id, "removed backend drained out");
    }

    /// How long a retired pool needs before nothing of it is left.
    pub fn retire_period(&self) -> Duration {
        let c = self.cfg();
        c.drain_timeout + c.close_spread + Duration::from_secs(1)
    }
}

/// Did anything but the backend list change?
fn settings_changed(a: &config::Pool, b: &config::Pool) -> bool {
    // The config types carry no PartialEq for every field; their Debug output
    // is complete and stable within one binary, which is all this compares.
    let strip = |p: &config::Pool| {
        let mut p = p.clone();
        p.backends.clear();
        format!("{p:?}")
    };
    strip(a) != strip(b)
}
