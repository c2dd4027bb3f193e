//! A pool at runtime: its backends' live state and the routing decision
//! (spec routing rules 2 to 6).
//!
//! `route(key)` first asks the pool's store for the key's owner (a local hit:
//! no I/O, no allocation). A pinned owner that is still usable wins. Otherwise
//! the pool's hash picks over the eligible backends (bounded load if set) and the
//! choice is recorded insert-if-absent, so racing proxies agree on one owner.
//! A pin whose backend is gone from the config is re-pinned by compare-and-set.
//!
//! Inserted cookies take two other entries. `route_new_cookie` (a cookie id just
//! minted) records a provisional session, memory only (`store/provisional.rs`);
//! `route_cookie` (a verified cookie that came back) confirms it, or records a
//! session this instance never saw. Both pick by the hash alone, without bounded
//! load (its counts are this instance's own), so any instance that sees the
//! cookie first makes the same pick without asking anyone.
//!
//! A `PoolRt` lives as long as its name stays in the config: everything that
//! changes (its config, its backend list, the ring) sits in one [`View`]
//! behind an `ArcSwap`, replaced whole by a health transition, a drain or a
//! reload (`view.rs`), so a request sees one consistent view. Backends are
//! carried from view to view by id with all their state.

mod passive;
#[cfg(test)]
mod tests;
mod view;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use prometheus::IntCounter;

pub use crate::backend::{BackendRt, CloseReason, Health};
use crate::config;
use crate::metrics::Metrics;
use crate::store::{Hit, LiveGuard, MoveReason, PoolStore, Session, StoreError};
pub use passive::{ejection_cap, Failure, Fault};
pub use view::{PoolChanges, View};

struct Lookups {
    hit: IntCounter,
    new: IntCounter,
    moved: IntCounter,
}

pub struct PoolRt {
    pub name: Arc<str>,
    pub store: Arc<dyn PoolStore>,
    view: ArcSwap<View>,
    /// Serializes view replacements (health, drains, reloads): each starts
    /// from the view the previous one stored.
    writer: Mutex<()>,
    /// Serializes passive mark-downs against the ejection cap.
    ejections: Mutex<()>,
    lookups: Lookups,
    metrics: Arc<Metrics>,
    /// The last `MOVES_KEPT` moves made here, newest first (status page).
    moves: Mutex<VecDeque<MoveRecord>>,
}

/// Moves kept per pool for the status page.
pub const MOVES_KEPT: usize = 50;

/// One session move, for the status page. The key itself is never shown.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MoveRecord {
    /// Unix ms.
    pub at: u64,
    /// A short hash of the session key.
    pub session: String,
    pub from: Arc<str>,
    pub to: Arc<str>,
    pub reason: &'static str,
}

/// A short, stable, non-reversible name for a session key (logs, status page).
pub fn key_hash(key: &str) -> String {
    format!(
        "{:012x}",
        crate::affinity::hash::hash_key(key.as_bytes()) >> 16
    )
}

/// Where a request goes.
pub enum Decision {
    Backend {
        backend: Arc<BackendRt>,
        /// Held while the request or tunnel lives: the session is not idle meanwhile.
        live: Option<LiveGuard>,
        /// The session moved here and this request is the first to learn it.
        moved: Option<(Arc<str>, MoveReason)>,
    },
    /// No live backend (rule 6).
    NoBackend,
}

impl PoolRt {
    pub fn new(cfg: config::Pool, store: Arc<dyn PoolStore>, metrics: Arc<Metrics>) -> Self {
        metrics.pool_at_zero(&cfg);
        let lookup = |r| metrics.affinity_lookups.with_label_values(&[&*cfg.name, r]);
        let lookups = Lookups {
            hit: lookup("hit"),
            new: lookup("new"),
            moved: lookup("moved"),
        };
        let backends = cfg
            .backends
            .iter()
            .map(|b| view::new_backend(&cfg, b, &metrics))
            .collect();
        let notifier = view::notifier(&cfg, None, &metrics);
        PoolRt {
            name: cfg.name.clone(),
            view: ArcSwap::from_pointee(View::build(Arc::new(cfg), backends, notifier)),
            writer: Mutex::new(()),
            ejections: Mutex::new(()),
            moves: Mutex::new(VecDeque::with_capacity(MOVES_KEPT)),
            store,
            lookups,
            metrics,
        }
    }

    /// The current view: config, backends and ring, all of one moment.
    pub fn view(&self) -> Guard<Arc<View>> {
        self.view.load()
    }

    /// The current config of this pool.
    pub fn cfg(&self) -> Arc<config::Pool> {
        self.view.load().cfg.clone()
    }

    /// Replace the view with `f(current)`, one writer at a time.
    fn update(&self, f: impl FnOnce(&View) -> View) {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let next = f(&self.view.load());
        self.view.store(Arc::new(next));
    }

    /// Recompute the ring after a change in health, drain or membership: only
    /// backends that take new sessions are on it (rule 3).
    pub fn rebuild_ring(&self) {
        self.update(|v| View::build(v.cfg.clone(), v.backends.clone(), v.notifier.clone()));
    }

    /// Apply a health transition (active checks; passive failures go through
    /// `passive_failure`, which caps them).
    pub fn mark_health(&self, b: &Arc<BackendRt>, h: Health, cause: &'static str) {
        let old = b.set_health(h);
        self.health_changed(b, old, h, cause);
    }

    /// What follows a backend's move from `old` to `h`: the ring, and with
    /// `migrate` the live connections of a backend gone down.
    fn health_changed(&self, b: &Arc<BackendRt>, old: Health, h: Health, cause: &'static str) {
        if old == h {
            return;
        }
        match h {
            Health::Down => {
                tracing::warn!(pool = %self.name, backend = %b.id, cause, "backend down")
            }
            _ => {
                tracing::info!(pool = %self.name, backend = %b.id, cause, state = h.as_str(), "backend state")
            }
        }
        self.rebuild_ring();
        if h == Health::Down && self.cfg().on_backend_down == config::OnBackendDown::Migrate {
            // Frozen or blackholed backends keep their sockets open: only we can end them.
            b.close_tunnels(CloseReason::Moved, Duration::ZERO);
        }
    }

    /// Drain backend `b`: no new sessions now; at the deadline its sessions
    /// move (reason `drain`, or `removed` for a backend a reload removed) and
    /// its live connections close, spread out; a removed one then leaves the view.
    pub fn drain(self: &Arc<Self>, b: &Arc<BackendRt>, deadline: Duration) {
        // The API bounds what it parses, but a deadline read from a shared store
        // may come from anywhere: `Instant + deadline` must not overflow.
        let deadline = deadline.min(config::MAX_DURATION);
        let b = b.clone();
        let token = b.start_drain(deadline);
        tracing::info!(pool = %self.name, backend = %b.id, ?deadline, removed = b.removed(), "draining");
        self.rebuild_ring();
        let pool = Arc::downgrade(self);
        let end = tokio::time::Instant::now() + deadline;
        tokio::spawn(async move {
            let notice = pool
                .upgrade()
                .and_then(|p| p.cfg().notify.as_ref().map(|n| n.before));
            if let Some(before) = notice {
                tokio::time::sleep_until(end.checked_sub(before).unwrap_or(end)).await;
                if let Some(p) = pool.upgrade().filter(|_| b.drain_is(token)) {
                    if let Some(n) = &p.view().notifier {
                        let left = end.saturating_duration_since(tokio::time::Instant::now());
                        let at = crate::store::now_ms() + left.as_millis() as u64;
                        n.drain_pending(&p.name, &b.id, at, p.store.sessions_of(&b.id));
                    }
                }
            }
            tokio::time::sleep_until(end).await;
            let Some(p) = pool.upgrade().filter(|_| b.drain_is(token)) else {
                return;
            };
            b.close_tunnels(CloseReason::Moved, p.cfg().close_spread);
            if b.removed() {
                p.forget(&b);
            }
        });
    }

    /// Close this instance's connections of a session whenever its owner
    /// changes under it (another instance moved it; Redis overrode an outage
    /// decision): they follow the old owner, so the client reconnects to the
    /// new one, and every instance agrees where the session lives.
    pub fn watch_owners(self: &Arc<Self>) {
        let pool = Arc::downgrade(self);
        self.store.on_owner_change(Box::new(move |key, old| {
            let Some(p) = pool.upgrade() else { return };
            let Some(b) = p.backend(old) else { return };
            let n = b.close_tunnels_of(crate::backend::session_tag(Some(key)), CloseReason::Moved);
            if n > 0 {
                tracing::info!(pool = %p.name, backend = %b.id, session = %key_hash(key), connections = n,
                    "session moved elsewhere: closing its connections here");
            }
        }));
    }

    /// A long-lived connection of session `key`, pinned to `from`, was
    /// refused there and connected to `to` instead, the re-pin's own choice:
    /// move the session now, so the store (and every instance) agrees with
    /// where its connection lives, even if `from` comes back before anything
    /// marks it down. Requests do not do this (rule 5): they end at once.
    pub async fn follow_connection(&self, key: &str, from: &Arc<BackendRt>, to: &Arc<BackendRt>) {
        let Some(hit) = self.store.lookup(key) else {
            return;
        };
        // A provisional session belongs to the hash on every instance anyway.
        if hit.provisional || *hit.backend != *from.id {
            return;
        }
        if let Err(e) = self.relocate(key, hit, to.clone(), MoveReason::Down).await {
            tracing::warn!(pool = %self.name, error = %e, "recording a connection's new backend");
        }
    }

    /// Undo a drain: back in rotation.
    pub fn enable(&self, b: &BackendRt) {
        b.stop_drain();
        tracing::info!(pool = %self.name, backend = %b.id, "enabled");
        self.rebuild_ring();
    }

    /// Another live backend for a retry of one request or connection after
    /// the `tried` ones failed (no re-pin, rule 5): the one the re-pin will
    /// choose once they are marked down, so the client moves once.
    /// `bounded`: as for the key's re-pin (not for inserted cookies).
    pub fn pick_alternative(
        &self,
        key_hash: u64,
        tried: &[Arc<BackendRt>],
        bounded: bool,
    ) -> Option<(usize, Arc<BackendRt>)> {
        let v = self.view();
        let b = v.pick_excluding(&*self.store, key_hash, tried, bounded)?;
        Some((v.index_of(&b)?, b))
    }

    pub fn backend(&self, id: &str) -> Option<Arc<BackendRt>> {
        self.view().backend(id).cloned()
    }

    /// The hot path: a cached owner that is still usable and has no move to
    /// announce. No I/O, no allocation, no lock beyond the store's shard read.
    /// A provisional session is left to `route_cookie`, which confirms it.
    pub fn route_hit(&self, key: &str) -> Option<Decision> {
        let hit = self.store.lookup(key)?;
        let v = self.view();
        if hit.provisional || hit.moved.is_some() || wants_failback(&v, &hit).is_some() {
            return None;
        }
        let b = v.backend(&hit.backend).filter(|b| b.keeps_sessions())?;
        self.lookups.hit.inc();
        Some(self.decide(b.clone(), hit, None))
    }

    /// Route a request carrying session key `key` (rules 2, 3, 4, 6).
    pub async fn route(&self, key: &str) -> Result<Decision, StoreError> {
        self.route_as(key, true).await
    }

    /// Route a request whose tether cookie (verified, id `key`) came back: its
    /// provisional session is confirmed; a session unknown here is placed by
    /// the hash alone and recorded as confirmed.
    pub async fn route_cookie(&self, key: &str) -> Result<Decision, StoreError> {
        self.route_as(key, false).await
    }

    /// Route a request that was just given a new tether cookie with id `key`:
    /// the hash alone picks, and the session stays provisional (in memory, no
    /// I/O) until the cookie comes back.
    pub fn route_new_cookie(&self, key: &str) -> Decision {
        let v = self.view();
        let Some(b) = v.pick(&*self.store, key, false) else {
            return self.no_backend();
        };
        let hit = self.store.insert_provisional(key, b.id.clone());
        self.lookups.new.inc();
        // A fresh random id has no owner yet: `hit` is the pick.
        let b = v
            .backend(&hit.backend)
            .filter(|o| o.keeps_sessions())
            .cloned()
            .unwrap_or(b);
        self.decide(b, hit, None)
    }

    /// `bounded`: new sessions honour bounded load (not for inserted cookies).
    async fn route_as(&self, key: &str, bounded: bool) -> Result<Decision, StoreError> {
        if let Some(d) = self.route_hit(key) {
            return Ok(d);
        }
        let v = self.view.load_full();
        let found = match self.store.lookup(key) {
            Some(hit) if hit.provisional => self.store.confirm(key).await?,
            other => other,
        };
        if let Some(hit) = found {
            if let Some(home) = wants_failback(&v, &hit) {
                return self.relocate(key, hit, home, MoveReason::Failback).await;
            }
            if v.backend(&hit.backend).is_some_and(|b| b.keeps_sessions()) {
                return self.follow(key).await;
            }
            return self.repin(&v, key, hit, bounded).await;
        }
        let Some(b) = v.pick(&*self.store, key, bounded) else {
            return Ok(self.no_backend());
        };
        let hit = self.store.insert_if_absent(key, b.id.clone()).await?;
        self.lookups.new.inc();
        match v.backend(&hit.backend).filter(|b| b.keeps_sessions()) {
            Some(b) => Ok(self.decide(b.clone(), hit, None)),
            // Another instance won the race with a backend we cannot use: move it.
            None => self.repin(&v, key, hit, bounded).await,
        }
    }

    fn no_backend(&self) -> Decision {
        self.metrics
            .no_backend
            .with_label_values(&[&*self.name])
            .inc();
        Decision::NoBackend
    }

    /// A backend for a request that records nothing (`fallback: random`).
    pub fn route_random(&self) -> Decision {
        let v = self.view();
        if v.backend_of.is_empty() {
            return Decision::NoBackend;
        }
        let i = v.backend_of[rand::random::<usize>() % v.backend_of.len()];
        Decision::Backend {
            backend: v.backends[i].clone(),
            live: None,
            moved: None,
        }
    }

    fn decide(
        &self,
        backend: Arc<BackendRt>,
        hit: Hit,
        moved: Option<(Arc<str>, MoveReason)>,
    ) -> Decision {
        Decision::Backend {
            backend,
            live: Some(LiveGuard::new(hit.meta)),
            moved,
        }
    }

    /// The pinned backend is unusable: move the session to the hash's choice
    /// among live backends (rule 4).
    async fn repin(
        &self,
        v: &View,
        key: &str,
        old: Hit,
        bounded: bool,
    ) -> Result<Decision, StoreError> {
        let Some(to) = v.pick(&*self.store, key, bounded) else {
            return Ok(self.no_backend());
        };
        let reason = match v.backend(&old.backend) {
            None => MoveReason::Removed,
            Some(b) if b.health() == Health::Down => MoveReason::Down,
            Some(b) if b.removed() => MoveReason::Removed,
            Some(_) => MoveReason::Drain,
        };
        self.relocate(key, old, to, reason).await
    }

    /// Move `key` from `old` to backend `to` by compare-and-set, then follow
    /// whatever owner the store settled on (another instance may have won).
    async fn relocate(
        &self,
        key: &str,
        old: Hit,
        to: Arc<BackendRt>,
        reason: MoveReason,
    ) -> Result<Decision, StoreError> {
        let mut rec = Session::new(to.id.clone());
        rec.moved_from = Some(old.backend.clone());
        rec.move_reason = Some(reason);
        // Remember where a session came from while its home may come back.
        rec.home = match reason {
            MoveReason::Down | MoveReason::Drain => {
                old.home.clone().or_else(|| Some(old.backend.clone()))
            }
            MoveReason::Removed | MoveReason::Failback => None,
        };
        if self.store.compare_and_set(key, &old.backend, rec).await? {
            self.lookups.moved.inc();
            self.metrics
                .session_moves
                .with_label_values(&[&*self.name, &*old.backend, &*to.id, reason.as_str()])
                .inc();
            if let Some(n) = &self.view().notifier {
                n.moved(&self.name, &old.backend, &to.id, reason);
            }
            self.record_move(key, &old.backend, &to.id, reason);
        }
        self.follow(key).await
    }

    /// Route to the owner the store holds now, announcing a pending move once.
    async fn follow(&self, key: &str) -> Result<Decision, StoreError> {
        let Some(hit) = self.store.lookup(key) else {
            return Ok(self.no_backend());
        };
        let Some(b) = self.backend(&hit.backend).filter(|b| b.keeps_sessions()) else {
            return Ok(self.no_backend());
        };
        self.lookups.hit.inc();
        let moved = match &hit.moved {
            Some(_) if self.store.take_moved(key, &hit.backend).await? => hit.moved.clone(),
            _ => None,
        };
        Ok(self.decide(b, hit, moved))
    }

    fn record_move(&self, key: &str, from: &Arc<str>, to: &Arc<str>, reason: MoveReason) {
        if let Ok(mut m) = self.moves.lock() {
            if m.len() == MOVES_KEPT {
                m.pop_back();
            }
            m.push_front(MoveRecord {
                at: crate::store::now_ms(),
                session: key_hash(key),
                from: from.clone(),
                to: to.clone(),
                reason: reason.as_str(),
            });
        }
    }

    /// The recent moves, newest first.
    pub fn recent_moves(&self) -> Vec<MoveRecord> {
        self.moves
            .lock()
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Time since `backend` went down (for the move-latency histogram).
    pub fn observe_move(&self, from: &str, reason: MoveReason) {
        if reason != MoveReason::Down {
            return;
        }
        if let Some(d) = self.backend(from).and_then(|b| b.since_change()) {
            self.metrics
                .move_latency
                .with_label_values(&[&*self.name])
                .observe(d.as_secs_f64());
        }
    }
}

/// With `failback: return`, the home backend to move a session back to, once
/// it takes sessions again.
fn wants_failback(v: &View, hit: &Hit) -> Option<Arc<BackendRt>> {
    if v.cfg.failback != config::Failback::Return {
        return None;
    }
    let home = hit
        .home
        .as_ref()
        .filter(|h| h.as_ref() != hit.backend.as_ref())?;
    v.backend(home).filter(|b| b.takes_new()).cloned()
}

/// Slow start: may a new session with hash `h` land on `b` yet? Decided from
/// the key's own bits, so every instance agrees.
fn ramped(cfg: &config::Pool, b: &BackendRt, h: u64) -> bool {
    let ss = cfg.health.slowstart;
    if ss.is_zero() {
        return true;
    }
    let ramp = crate::health::slowstart_ramp(b.since_revived(), ss);
    // The top bits pick the ring slot; the low 32 bits are independent of it.
    ramp >= 1.0 || ((h & 0xffff_ffff) as f64 / 4_294_967_296.0) < ramp
}
