//! The standby/leader loop.
//!
//! States: standby (`held_until` None), holding the lease without the
//! address yet (`add_at` Some: the previous holder's copy may still be on
//! its interface until then, see `lifetime`), leader (`up`). Every tick
//! either renews (holding) or tries to take the lease (standby). The address
//! is only ever added or refreshed right after a successful renewal (or
//! take), with a lifetime counted from when that was sent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::holder::Holder;
use super::lifetime;
use super::netlink::{NetError, Netlink};
use super::state::Shared;
use super::{announce, Cmd, ANNOUNCE_GAP, ANNOUNCE_REPEATS, LEASE};
use crate::store::lease::{Acquire, Leases, Previous, Renew};

/// How long after a lease's expiry, as read, a standby tries to take it:
/// Redis counts a key as expired only once its millisecond clock is past the
/// expiry, and that clock may read up to a millisecond behind ours.
const RETRY_AFTER_EXPIRY: Duration = Duration::from_millis(5);

pub(super) struct Run {
    shared: Arc<Shared>,
    leases: Arc<dyn Leases>,
    net: Netlink,
    /// A leader drops the address once its last successful renewal was sent
    /// this long ago: before the lease can lapse, with room for one late answer.
    hold: Duration,
    /// While we hold the lease: until when it is surely still ours.
    held_until: Option<Instant>,
    /// Holding the lease without the address: from when it may be added.
    add_at: Option<Instant>,
    /// Our copy of the address is up (added, not removed since).
    up: bool,
    /// After a manual release or a preemption: do not take it straight back.
    hold_off: Instant,
    /// The latest instant another node's lease could run out, as last read.
    seen: Option<Instant>,
}

impl Run {
    pub fn new(shared: Arc<Shared>, leases: Arc<dyn Leases>, net: Netlink) -> Run {
        let lease = shared.cfg.lease;
        let margin = (lease / 5).max(Duration::from_millis(200));
        Run {
            shared,
            leases,
            net,
            hold: lease.saturating_sub(margin),
            held_until: None,
            add_at: None,
            up: false,
            hold_off: Instant::now(),
            seen: None,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => next = self.tick().await,
                cmd = rx.recv() => {
                    if !self.command(cmd).await {
                        return;
                    }
                }
            }
        }
    }

    /// Handle one command; false when the task must end.
    async fn command(&mut self, cmd: Option<Cmd>) -> bool {
        match cmd {
            Some(Cmd::Release(reply)) => {
                let was = self.up;
                if self.held_until.is_some() {
                    self.step_down(true, "released by the admin API").await;
                    self.hold_off = Instant::now() + 2 * self.shared.cfg.lease;
                }
                let _ = reply.send(was);
                true
            }
            Some(Cmd::Shutdown(reply)) => {
                if self.held_until.is_some() {
                    self.step_down(true, "shutting down").await;
                }
                let _ = reply.send(());
                false
            }
            Some(Cmd::HandOver(reply)) => {
                if let Some(until) = self.held_until {
                    if !successor_renews(&*self.leases, until).await {
                        self.step_down(true, "the successor does not renew the lease")
                            .await;
                    }
                }
                let _ = reply.send(());
                false
            }
            None => false,
        }
    }

    /// One round; returns when the next one is due.
    async fn tick(&mut self) -> Instant {
        let renew = self.shared.cfg.renew;
        match self.held_until {
            Some(until) => self.renew(until).await,
            None if Instant::now() < self.hold_off => {
                // Not contending for now (just handed over): still follow who leads.
                if let Ok(Some(v)) = self.leases.holder(LEASE).await {
                    let name = Holder::parse(&v).map_or(v.clone(), |h| h.name);
                    self.shared.set_holder(&name);
                }
                self.hold_off.min(Instant::now() + renew)
            }
            None => self.contend().await,
        }
    }

    /// Holding the lease: renew it, then refresh (or add) the address.
    async fn renew(&mut self, until: Instant) -> Instant {
        let shared = self.shared.clone();
        let (cfg, me) = (&shared.cfg, &shared.me);
        // The attempt itself may not outlive our right to the address.
        let sent = Instant::now();
        let renewal = self
            .leases
            .renew(LEASE, &me.value, cfg.lease, cfg.min_replicas);
        match tokio::time::timeout_at(until, renewal).await {
            Ok(Ok(Renew::Extended { wanted_by })) => {
                self.held_until = Some(sent + self.hold);
                let w = wanted_by.as_deref().and_then(Holder::parse);
                if w.is_some_and(|w| w.priority > me.priority && w.value != me.value) {
                    self.step_down(true, "preempted by a node of higher priority")
                        .await;
                    self.hold_off = Instant::now() + cfg.lease;
                    return self.next_tick();
                }
                if self.up || self.add_at.is_some_and(|a| Instant::now() >= a) {
                    self.put_address(sent).await;
                }
            }
            Ok(Ok(Renew::Lost)) => self.step_down(false, "lease lost").await,
            Ok(Err(e)) => tracing::warn!(error = %e, "vip: renewal failed"),
            Err(_) => tracing::warn!("vip: renewal still unanswered at the deadline"),
        }
        if self.held_until.is_some_and(|u| Instant::now() >= u) {
            self.step_down(false, "lease not renewed in time").await;
        }
        self.next_tick()
    }

    /// Standby: try to take the lease; right when the holder's time runs out otherwise.
    async fn contend(&mut self) -> Instant {
        let (cfg, me) = (self.shared.cfg.clone(), self.shared.me.clone());
        let sent = Instant::now();
        let mut next = sent + cfg.renew;
        match self
            .leases
            .acquire(LEASE, &me.value, cfg.lease, cfg.min_replicas)
            .await
        {
            Ok(Acquire::Taken { previous }) => {
                let answered = Instant::now();
                self.held_until = Some(sent + self.hold);
                self.shared.set_holder(&me.name);
                let add_at = match previous {
                    // Its holder removed its copy before releasing.
                    Previous::Released => answered,
                    // Our own hold: the copy on our interface is ours (an
                    // upgrade's predecessor's). Without one, this node may
                    // have crashed while waiting, so wait as for a lapse.
                    Previous::Ours if self.has_copy().await => answered,
                    Previous::Ours | Previous::Lapsed => {
                        // The old lease had expired by the time Redis let us
                        // take it; unless it vanished before the expiry we had
                        // read (the store lost it), when its holder may have
                        // renewed it up to then: a whole lease more.
                        let expired_by = match self.seen {
                            Some(s) if s > answered => answered + cfg.lease,
                            _ => answered,
                        };
                        lifetime::free_at(expired_by, cfg.lease)
                    }
                };
                self.add_at = Some(add_at);
                if add_at <= Instant::now() {
                    self.put_address(sent).await;
                } else {
                    let wait_ms = add_at.saturating_duration_since(answered).as_millis() as u64;
                    tracing::info!(wait_ms, ?previous, "vip: lease taken; the address follows once the previous holder's copy must have expired");
                }
                return self.next_tick();
            }
            Ok(Acquire::Held { holder, left }) => {
                let ends = Instant::now() + left;
                let seen = self.seen.map_or(ends, |s| s.max(ends));
                self.seen = Some(seen);
                let h = Holder::parse(&holder);
                self.shared
                    .set_holder(h.as_ref().map_or(holder.as_str(), |h| h.name.as_str()));
                if cfg.preempt && h.as_ref().is_some_and(|h| h.priority < me.priority) {
                    if let Err(e) = self.leases.request(LEASE, &me.value, cfg.lease).await {
                        tracing::warn!(error = %e, "vip: asking for the address");
                    }
                }
                // Retry just after the latest expiry read so far, not this
                // read's: an earlier answer that came back late puts its
                // reading later, and a take answered before `seen` counts as
                // a lease the store lost (a whole lease more to wait).
                next = next.min(seen + RETRY_AFTER_EXPIRY);
            }
            Err(e) => tracing::debug!(error = %e, "vip: cannot reach the lease"),
        }
        next
    }

    fn next_tick(&self) -> Instant {
        let now = Instant::now();
        let renew = self.shared.cfg.renew;
        match self.held_until {
            Some(until) => {
                let next = (now + renew).min(until);
                match self.add_at {
                    Some(a) if !self.up && a > now => next.min(a),
                    _ => next,
                }
            }
            None if now < self.hold_off => self.hold_off.min(now + renew),
            None => now + renew,
        }
    }

    /// Whether the address is on our interface now (errors: assume not).
    async fn has_copy(&self) -> bool {
        let cfg = &self.shared.cfg;
        match self.net.ifindex(&cfg.interface).await {
            Ok(i) => self.net.has_address(i, cfg.address).await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Add the address, or refresh its lifetime, backed by the renewal (or
    /// take) sent at `sent`.
    async fn put_address(&mut self, sent: Instant) {
        let cfg = self.shared.cfg.clone();
        let Some(secs) = lifetime::lifetime(cfg.lease, sent.elapsed()) else {
            tracing::warn!(
                late_ms = sent.elapsed().as_millis() as u64,
                "vip: the renewal's answer came too late to back the address; waiting for the next one"
            );
            return;
        };
        let set = async {
            let ifindex = self.net.ifindex(&cfg.interface).await?;
            self.net.set_address(ifindex, cfg.address, secs).await?;
            Ok::<u32, NetError>(ifindex)
        }
        .await;
        let ifindex = match set {
            Ok(i) => i,
            Err(e) if self.up => {
                tracing::warn!(error = %e, address = %cfg.address, "vip: cannot refresh the address's lifetime (it runs out by itself unless a later renewal refreshes it)");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, address = %cfg.address, interface = %cfg.interface, "vip: cannot add the address; giving the lease back");
                if let Err(e) = self
                    .leases
                    .release(LEASE, &self.shared.me.value, false)
                    .await
                {
                    tracing::warn!(error = %e, "vip: releasing the lease (it expires by itself)");
                }
                (self.held_until, self.add_at) = (None, None);
                self.shared.set_holder("");
                self.hold_off = Instant::now() + cfg.lease;
                return;
            }
        };
        if !lifetime::refresh_landed_in_time(cfg.lease, secs, sent.elapsed()) {
            // Held up (stopped?) between reading the clock and the kernel
            // applying the change: the copy may outlive what the standbys
            // wait for. Off at once; the next renewal puts it back.
            tracing::error!(
                late_ms = sent.elapsed().as_millis() as u64,
                "vip: the address was set too late to be trusted to expire in time; removing it"
            );
            self.remove_copy().await;
            self.add_at = Some(Instant::now());
            return;
        }
        self.shared
            .set_address_until(Some(sent + Duration::from_secs(secs.into())));
        if self.up {
            return;
        }
        (self.up, self.add_at) = (true, None);
        self.shared.became(true);
        tracing::info!(address = %cfg.address, interface = %cfg.interface, lifetime_s = secs, "vip: acquired, this node is the leader");
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let (ifname, ip) = (shared.cfg.interface.clone(), shared.cfg.address.addr());
            for n in 0..ANNOUNCE_REPEATS {
                if n > 0 {
                    tokio::time::sleep(ANNOUNCE_GAP).await;
                }
                if !shared.may_announce() {
                    return;
                }
                if let Err(e) = announce::announce(&ifname, ifindex, ip, 1, Duration::ZERO).await {
                    tracing::warn!(error = %e, "vip: announcing the address");
                    return;
                }
            }
        });
    }

    /// Take our copy of the address off the interface. True when it is gone.
    async fn remove_copy(&mut self) -> bool {
        let cfg = &self.shared.cfg;
        let removed = async {
            let ifindex = self.net.ifindex(&cfg.interface).await?;
            self.net.del_address(ifindex, cfg.address).await
        }
        .await;
        self.shared.set_address_until(None);
        if self.up {
            self.up = false;
            self.shared.became(false);
        }
        match removed {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, address = %cfg.address, "vip: cannot remove the address (it runs out by itself)");
                false
            }
        }
    }

    /// Stop holding the lease: the address goes first; then, when handing
    /// over, the lease (so the standby need not wait it out). The release is
    /// clean (the next holder adds the address at once) only when our copy
    /// was up and is now gone: while we waited for the previous holder's
    /// copy to expire, it may still be there.
    async fn step_down(&mut self, release: bool, why: &str) {
        let was_up = self.up;
        let removed = self.remove_copy().await;
        (self.held_until, self.add_at) = (None, None);
        // Whoever leads next is learned from the lease.
        self.shared.set_holder("");
        tracing::warn!(address = %self.shared.cfg.address, why, "vip: stepped down, this node is standby");
        if release {
            let clean = was_up && removed;
            if let Err(e) = self
                .leases
                .release(LEASE, &self.shared.me.value, clean)
                .await
            {
                tracing::warn!(error = %e, "vip: releasing the lease (it expires by itself)");
            }
        }
    }
}

/// Does someone else (the successor, with the same token) keep renewing the
/// lease, now that we stopped? Watched until shortly before `until`, when our
/// own right to the address ends.
async fn successor_renews(leases: &dyn Leases, until: Instant) -> bool {
    let Ok(Some(first)) = leases.left(LEASE).await else {
        return false;
    };
    let t0 = Instant::now();
    while Instant::now() + Duration::from_millis(100) < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match leases.left(LEASE).await {
            // More time left than our last renewal could give: renewed since.
            Ok(Some(now)) if now + t0.elapsed() > first + Duration::from_millis(50) => return true,
            Ok(Some(_)) => {}
            _ => return false,
        }
    }
    false
}
