//! One backend at runtime: health, admin state (drain), passive failure count,
//! slow-start ramp, and the registry of its live tunnels (WebSockets, later
//! TCP) so tether can close them when the backend goes down or drains out.
//!
//! Everything here is atomics or short critical sections: the data path reads
//! `health()`/`draining()` per request, while the health checker, passive
//! failures and the admin API write.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus::IntGauge;

use crate::config::BackendAddr;
use futures_util::task::AtomicWaker;

/// Monotonic milliseconds since the process started (0 is never a real instant here).
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// A backend's health as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// No check has completed yet.
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// The raw health value of a backend held down by passive failures: `Down`
/// to everyone but the ejection cap, which counts these.
const DOWN_PASSIVE: u8 = 3;

fn health_of(raw: u8) -> Health {
    match raw {
        1 => Health::Up,
        2 | DOWN_PASSIVE => Health::Down,
        _ => Health::Unknown,
    }
}

/// Why tether closes a tunnel; decides the WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The backend went down or drained out: 1012 (service restart), reconnect now.
    Moved = 1,
    /// tether itself is stopping: 1001 (going away).
    Shutdown = 2,
}

/// The registry's tag for a session key (0: none). Never 0 for a key.
pub fn session_tag(key: Option<&str>) -> u64 {
    key.map_or(0, |k| crate::affinity::hash::hash_key(k.as_bytes()) | 1)
}

/// The tunnel's monotonic clock as a tokio instant (the inverse of [`mono_ms`]).
pub fn mono_instant(ms: u64) -> tokio::time::Instant {
    static START: OnceLock<(u64, tokio::time::Instant)> = OnceLock::new();
    let (at, base) = *START.get_or_init(|| (mono_ms(), tokio::time::Instant::now()));
    if ms >= at {
        base + Duration::from_millis(ms - at)
    } else {
        base.checked_sub(Duration::from_millis(at - ms))
            .unwrap_or(base)
    }
}

/// The handle tether keeps on one live tunnel: the tunnel's task polls it
/// with its other events, so a close reaches it whatever it is blocked on.
#[derive(Default)]
pub struct TunnelCtl {
    waker: AtomicWaker,
    /// 0 while open, else a `CloseReason`.
    reason: AtomicU8,
    /// The hash of the session key the tunnel serves (0: none), so a
    /// session's connections can be found when its owner changes elsewhere.
    session: u64,
}

impl TunnelCtl {
    pub fn close(&self, why: CloseReason) {
        self.reason.store(why as u8, Ordering::Release);
        self.waker.wake();
    }

    /// `Some` once `close` was called; until then the task is woken by it.
    pub fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> Option<CloseReason> {
        self.waker.register(cx.waker());
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            2 => Some(CloseReason::Shutdown),
            _ => Some(CloseReason::Moved),
        }
    }
}

/// Removes its tunnel from the registry when the tunnel ends.
pub struct TunnelGuard {
    backend: Arc<BackendRt>,
    id: u64,
    pub ctl: Arc<TunnelCtl>,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if let Ok(mut t) = self.backend.tunnels.lock() {
            t.remove(&self.id);
        }
    }
}

pub struct BackendRt {
    pub id: Arc<str>,
    /// As configured: an address, or a host name (see `resolve`).
    configured: ArcSwap<BackendAddr>,
    /// Where connections go now; `None` while a host name has never resolved.
    addr: ArcSwapOption<SocketAddr>,
    weight: AtomicU32,
    /// Gone from the config by a reload, draining until its sessions move.
    removed: AtomicBool,
    health: AtomicU8,
    /// `mono_ms()` deadline of a drain; 0 = not draining.
    drain_deadline: AtomicU64,
    /// `mono_ms()` of the last transition to up (slow start) or down (move latency).
    changed_at: AtomicU64,
    /// `mono_ms()` when it last came back from down (slow start); 0 = never.
    revived_at: AtomicU64,
    passive_failures: AtomicU32,
    pub upstream_active: IntGauge,
    up_gauge: IntGauge,
    tunnels: Mutex<HashMap<u64, Arc<TunnelCtl>>>,
    /// Idle kept-alive connections of tether's HTTP/1.1 path.
    pub conns: crate::l7::h1::pool::IdlePool,
    next_tunnel: AtomicU64,
    /// The last `CHECKS_KEPT` active check results, oldest first (status page).
    checks: Mutex<VecDeque<CheckRecord>>,
}

/// Active check results kept per backend.
pub const CHECKS_KEPT: usize = 20;

/// One active check result, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckRecord {
    /// Unix ms.
    pub at: u64,
    pub ok: bool,
    /// Why it failed ("" when it passed).
    pub detail: String,
}

impl BackendRt {
    pub fn new(
        id: Arc<str>,
        addr: BackendAddr,
        weight: u32,
        upstream_active: IntGauge,
        up_gauge: IntGauge,
    ) -> Self {
        BackendRt {
            id,
            addr: ArcSwapOption::from(addr.ip().map(Arc::new)),
            configured: ArcSwap::from_pointee(addr),
            weight: AtomicU32::new(weight),
            removed: AtomicBool::new(false),
            health: AtomicU8::new(Health::Unknown as u8),
            drain_deadline: AtomicU64::new(0),
            changed_at: AtomicU64::new(0),
            revived_at: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            upstream_active,
            up_gauge,
            tunnels: Mutex::new(HashMap::new()),
            conns: Default::default(),
            next_tunnel: AtomicU64::new(1),
            checks: Mutex::new(VecDeque::with_capacity(CHECKS_KEPT)),
        }
    }

    /// Where connections go now (`None`: a host name that never resolved).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    /// The address as written in the config.
    pub fn configured(&self) -> Arc<BackendAddr> {
        self.configured.load_full()
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Acquire)
    }

    /// Apply a reload's address and weight. Returns whether anything changed.
    /// A changed host name keeps the last resolved address until it resolves.
    pub fn reconfigure(&self, addr: &BackendAddr, weight: u32) -> bool {
        let mut changed = self.weight.swap(weight, Ordering::AcqRel) != weight;
        if **self.configured.load() != *addr {
            self.configured.store(Arc::new(addr.clone()));
            if let Some(ip) = addr.ip() {
                self.addr.store(Some(Arc::new(ip)));
            }
            changed = true;
        }
        changed
    }

    /// A resolution of the configured host name; true when the address changed.
    pub fn set_resolved(&self, to: SocketAddr) -> bool {
        if self.addr() == Some(to) {
            return false;
        }
        self.addr.store(Some(Arc::new(to)));
        true
    }

    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn set_removed(&self, removed: bool) {
        self.removed.store(removed, Ordering::Release);
    }

    pub fn health(&self) -> Health {
        health_of(self.health.load(Ordering::Acquire))
    }

    /// Set the health; returns the previous value. A passive ejection ends
    /// here: whatever set the state now owns it.
    pub fn set_health(&self, h: Health) -> Health {
        let old = self.health.swap(h as u8, Ordering::AcqRel);
        self.health_stored(old, h)
    }

    /// Mark it down for passive failures (`PoolRt::passive_failure` decides
    /// whether the pool's ejection cap allows it). `None` when it already was
    /// down, held by either cause; else the previous state.
    pub fn eject(&self) -> Option<Health> {
        let old = self
            .health
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (health_of(cur) != Health::Down).then_some(DOWN_PASSIVE)
            })
            .ok()?;
        Some(self.health_stored(old, Health::Down))
    }

    /// Held down by passive failures (counted against `max_ejected_percent`),
    /// not by active checks.
    pub fn passively_ejected(&self) -> bool {
        self.health.load(Ordering::Acquire) == DOWN_PASSIVE
    }

    /// The side effects of a new state `h` replacing the raw state `old`.
    fn health_stored(&self, old: u8, h: Health) -> Health {
        let old = health_of(old);
        self.up_gauge.set(i64::from(h == Health::Up));
        if old != h {
            self.changed_at.store(mono_ms(), Ordering::Release);
            if old == Health::Down && h == Health::Up {
                self.revived_at.store(mono_ms(), Ordering::Release);
            }
            self.passive_failures.store(0, Ordering::Release);
        }
        old
    }

    /// How long ago health last changed (`None` if it never did).
    pub fn since_change(&self) -> Option<Duration> {
        match self.changed_at.load(Ordering::Acquire) {
            0 => None,
            t => Some(Duration::from_millis(mono_ms().saturating_sub(t))),
        }
    }

    /// How long ago it came back from down (`None`: never was down). A backend
    /// that was up from the start does not slow-start.
    pub fn since_revived(&self) -> Option<Duration> {
        match self.revived_at.load(Ordering::Acquire) {
            0 => None,
            t => Some(Duration::from_millis(mono_ms().saturating_sub(t))),
        }
    }

    pub fn draining(&self) -> bool {
        self.drain_deadline.load(Ordering::Acquire) != 0
    }

    /// Draining and past its deadline: its sessions must move.
    pub fn drained_out(&self) -> bool {
        let d = self.drain_deadline.load(Ordering::Acquire);
        d != 0 && mono_ms() >= d
    }

    /// Start draining until `deadline` from now; returns the deadline token.
    pub fn start_drain(&self, deadline: Duration) -> u64 {
        let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        let at = mono_ms().saturating_add(ms);
        self.drain_deadline.store(at, Ordering::Release);
        at
    }

    /// Is the drain that ends at `token` still the current one?
    pub fn drain_is(&self, token: u64) -> bool {
        self.drain_deadline.load(Ordering::Acquire) == token
    }

    pub fn stop_drain(&self) {
        self.drain_deadline.store(0, Ordering::Release);
    }

    /// May new sessions land here?
    pub fn takes_new(&self) -> bool {
        self.health() == Health::Up && !self.draining()
    }

    /// May a pinned session stay here? (rule 2: `up`, or `unknown` while its first check is pending)
    pub fn keeps_sessions(&self) -> bool {
        self.health() != Health::Down && !self.drained_out()
    }

    /// The state shown by the admin API.
    pub fn state(&self) -> &'static str {
        match self.health() {
            Health::Down => "down",
            _ if self.removed() => "removed",
            _ if self.draining() => "draining",
            h => h.as_str(),
        }
    }

    /// Count one passive failure; the length of the run of them so far.
    pub fn passive_failure(&self) -> u32 {
        self.passive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1)
    }

    pub fn passive_success(&self) {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Release);
        }
    }

    /// Remember an active check result (the last `CHECKS_KEPT` are kept).
    pub fn record_check(&self, ok: bool, detail: String) {
        if let Ok(mut c) = self.checks.lock() {
            if c.len() == CHECKS_KEPT {
                c.pop_front();
            }
            c.push_back(CheckRecord {
                at: crate::store::now_ms(),
                ok,
                detail,
            });
        }
    }

    /// The recent active check results, oldest first.
    pub fn checks(&self) -> Vec<CheckRecord> {
        self.checks
            .lock()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Register a live tunnel of the session whose key hashes to `session`
    /// (0: none); it leaves the registry when the guard drops.
    pub fn register_tunnel(self: &Arc<Self>, session: u64) -> TunnelGuard {
        let id = self.next_tunnel.fetch_add(1, Ordering::Relaxed);
        let ctl = Arc::new(TunnelCtl {
            session,
            ..TunnelCtl::default()
        });
        if let Ok(mut t) = self.tunnels.lock() {
            t.insert(id, ctl.clone());
        }
        TunnelGuard {
            backend: self.clone(),
            id,
            ctl,
        }
    }

    pub fn live_tunnels(&self) -> usize {
        self.tunnels.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Close the live tunnels of one session (its key's hash): its owner
    /// changed and they are on the wrong backend. Returns how many.
    pub fn close_tunnels_of(&self, session: u64, why: CloseReason) -> usize {
        if session == 0 {
            return 0;
        }
        let Ok(t) = self.tunnels.lock() else {
            return 0;
        };
        let mut n = 0;
        for ctl in t.values().filter(|c| c.session == session) {
            ctl.close(why);
            n += 1;
        }
        n
    }

    /// Close every live tunnel, spread evenly over `spread` (zero: all at once).
    pub fn close_tunnels(self: &Arc<Self>, why: CloseReason, spread: Duration) {
        let all: Vec<Arc<TunnelCtl>> = match self.tunnels.lock() {
            Ok(t) => t.values().cloned().collect(),
            Err(_) => return,
        };
        if all.is_empty() {
            return;
        }
        tracing::info!(backend = %self.id, tunnels = all.len(), spread = ?spread, "closing live connections");
        if spread.is_zero() {
            for t in all {
                t.close(why);
            }
            return;
        }
        let step = spread / all.len() as u32;
        tokio::spawn(async move {
            for t in all {
                t.close(why);
                tokio::time::sleep(step).await;
            }
        });
    }
}
