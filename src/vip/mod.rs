//! The virtual IP (`vip:`): tether nodes sharing one Redis contend for a
//! lease there; the holder puts the address on its interface and announces it.
//!
//! Data flow: a standby tries `Leases::acquire` every `renew` (and right when
//! the holder's lease runs out); once it holds the lease it adds the address
//! over netlink (`netlink`) and sends gratuitous ARP / unsolicited neighbour
//! advertisements (`announce`). The leader renews every `renew`. Safety rule:
//! a leader whose last successful renewal was *sent* more than
//! `lease - margin` ago removes the address, whatever the reason (Redis
//! unreachable, process stalled), so it is gone before the lease can expire in
//! Redis and another node can take it: never two owners. Monotonic time only.
//!
//! Lease value: `"{token} {priority} {name}"`. The token is stable for one node
//! and config (machine id, node name, config path): a `tether --upgrade`
//! successor, or tether restarted by systemd, continues the node's lease
//! instead of waiting it out; a restart that finds the address on its
//! interface without holding the lease removes it first.

mod announce;
mod netlink;
mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config;
use crate::metrics::Metrics;
use crate::store::lease::{Acquire, Leases, Renew};
use crate::tls::AbortOnDrop;
pub use netlink::NetError;
use netlink::Netlink;
pub use state::Status;
use state::{Holder, Shared};

/// The lease's name in the store.
const LEASE: &str = "vip";
/// Gratuitous ARP / NA repeats when the address arrives, and their spacing.
const ANNOUNCE_REPEATS: u32 = 3;
const ANNOUNCE_GAP: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("vip: the store has no leases (vip needs store.kind: redis)")]
    NoLeases,
    #[error("vip: {0}")]
    Net(#[from] NetError),
}

enum Cmd {
    /// Hand over now (admin API); the answer says whether we were leader.
    Release(oneshot::Sender<bool>),
    /// SIGTERM: remove the address and release the lease, then stop.
    Shutdown(oneshot::Sender<()>),
    /// An upgraded predecessor exits: leave address and lease to the successor
    /// if it renews them, else clean up as for a shutdown.
    HandOver(oneshot::Sender<()>),
}

/// The running VIP task and its status. Dropping it stops the task and leaves
/// the address and lease as they are (a successor continues them).
pub struct Vip {
    shared: Arc<Shared>,
    cmd: mpsc::Sender<Cmd>,
    _task: AbortOnDrop,
}

impl Vip {
    /// Start contending for `cfg`'s address. A stale copy of the address on
    /// the interface (a crashed predecessor's) is removed first unless this
    /// node still holds the lease.
    pub async fn start(
        cfg: config::Vip,
        leases: Arc<dyn Leases>,
        replicas: u32,
        metrics: &Metrics,
        config_path: &std::path::Path,
    ) -> Result<Vip, VipError> {
        let net = Netlink::new()?;
        let me = Holder::mine(&cfg, config_path);
        let shared = Arc::new(Shared::new(cfg, me, metrics, replicas));
        let ifindex = net.ifindex(&shared.cfg.interface).await?;
        if net.has_address(ifindex, shared.cfg.address).await? {
            let ours = matches!(leases.holder(LEASE).await, Ok(Some(v)) if v == shared.me.value);
            if !ours {
                tracing::warn!(address = %shared.cfg.address, interface = %shared.cfg.interface,
                    "vip: removing a stale copy of the address (this node does not hold the lease)");
                net.del_address(ifindex, shared.cfg.address).await?;
            }
        }
        let (cmd, rx) = mpsc::channel(4);
        let task = tokio::spawn(run(shared.clone(), leases, net, rx));
        Ok(Vip {
            shared,
            cmd,
            _task: AbortOnDrop(task),
        })
    }

    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Hand the address over now (maintenance). False when not the leader.
    pub async fn release(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Release(tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Stop for good (SIGTERM): the address goes, then the lease, so a
    /// standby takes over at once instead of after the lease.
    pub async fn shutdown(&self) {
        self.stop(Cmd::Shutdown).await;
    }

    /// The predecessor of an upgrade is about to exit: stop renewing and
    /// watch the lease for one lease period. If the successor renews it, the
    /// address stays for it; if not (the successor died), the address goes
    /// and the lease is released, so no stale address outlives its lease.
    pub async fn hand_over(&self) {
        self.stop(Cmd::HandOver).await;
    }

    async fn stop(&self, cmd: fn(oneshot::Sender<()>) -> Cmd) {
        let (tx, rx) = oneshot::channel();
        let limit = self.shared.cfg.lease * 2;
        if self.cmd.send(cmd(tx)).await.is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

/// The standby/leader loop.
async fn run(
    shared: Arc<Shared>,
    leases: Arc<dyn Leases>,
    net: Netlink,
    mut rx: mpsc::Receiver<Cmd>,
) {
    let cfg = shared.cfg.clone();
    // Removed before the lease can lapse, with room for one late answer.
    let margin = (cfg.lease / 5).max(Duration::from_millis(200));
    let hold = cfg.lease.saturating_sub(margin);
    // While leader: until when the address may stay without a new renewal.
    let mut valid_until: Option<Instant> = None;
    // After a manual release: do not take it straight back.
    let mut hold_off = Instant::now();
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            cmd = rx.recv() => {
                match cmd {
                    Some(Cmd::Release(reply)) => {
                        let was = valid_until.is_some();
                        if was {
                            step_down(&shared, &net, &*leases, true, "released by the admin API").await;
                            valid_until = None;
                            hold_off = Instant::now() + 2 * cfg.lease;
                        }
                        let _ = reply.send(was);
                    }
                    Some(Cmd::Shutdown(reply)) => {
                        if valid_until.is_some() {
                            step_down(&shared, &net, &*leases, true, "shutting down").await;
                        }
                        let _ = reply.send(());
                        return;
                    }
                    Some(Cmd::HandOver(reply)) => {
                        if let Some(until) = valid_until {
                            if !successor_renews(&*leases, until).await {
                                step_down(&shared, &net, &*leases, true, "the successor does not renew the lease").await;
                            }
                        }
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                }
                continue;
            }
        }
        let now = Instant::now();
        match valid_until {
            Some(until) => {
                // Leader: renew; the attempt itself may not outlive our right to the address.
                let sent = now;
                let renewal = tokio::time::timeout_at(
                    until,
                    leases.renew(LEASE, &shared.me.value, cfg.lease, shared.replicas),
                )
                .await;
                match renewal {
                    Ok(Ok(Renew::Extended { wanted_by })) => {
                        valid_until = Some(sent + hold);
                        if let Some(w) = wanted_by.as_deref().and_then(Holder::parse) {
                            if w.priority > shared.me.priority && w.value != shared.me.value {
                                step_down(
                                    &shared,
                                    &net,
                                    &*leases,
                                    true,
                                    "preempted by a node of higher priority",
                                )
                                .await;
                                valid_until = None;
                                hold_off = Instant::now() + cfg.lease;
                            }
                        }
                    }
                    Ok(Ok(Renew::Lost)) => {
                        step_down(&shared, &net, &*leases, false, "lease lost").await;
                        valid_until = None;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "vip: renewal failed"),
                    Err(_) => tracing::warn!("vip: renewal still unanswered at the deadline"),
                }
                if valid_until.is_some_and(|u| Instant::now() >= u) {
                    step_down(&shared, &net, &*leases, false, "lease not renewed in time").await;
                    valid_until = None;
                }
                next = match valid_until {
                    Some(u) => (Instant::now() + cfg.renew).min(u),
                    None => Instant::now() + cfg.renew,
                };
            }
            None if now < hold_off => {
                // Not contending for now (just handed over): still follow who leads.
                if let Ok(Some(v)) = leases.holder(LEASE).await {
                    shared.set_holder(Holder::parse(&v).map_or(v.clone(), |h| h.name).as_str());
                }
                next = hold_off.min(Instant::now() + cfg.renew);
            }
            None => {
                // Standby: try to take it; right when the holder's time runs out otherwise.
                let sent = now;
                next = now + cfg.renew;
                match leases.acquire(LEASE, &shared.me.value, cfg.lease).await {
                    Ok(Acquire::Taken) => {
                        if take_up(&shared, &net, &*leases).await {
                            valid_until = Some(sent + hold);
                            next = (Instant::now() + cfg.renew).min(sent + hold);
                        } else {
                            hold_off = Instant::now() + cfg.lease;
                        }
                    }
                    Ok(Acquire::Held { holder, left }) => {
                        let h = Holder::parse(&holder);
                        shared.set_holder(h.as_ref().map_or(holder.as_str(), |h| h.name.as_str()));
                        if cfg.preempt
                            && h.as_ref().is_some_and(|h| h.priority < shared.me.priority)
                        {
                            if let Err(e) = leases.request(LEASE, &shared.me.value, cfg.lease).await
                            {
                                tracing::warn!(error = %e, "vip: asking for the address");
                            }
                        }
                        next = next.min(Instant::now() + left + Duration::from_millis(5));
                    }
                    Err(e) => tracing::debug!(error = %e, "vip: cannot reach the lease"),
                }
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

/// We hold the lease: put the address up and announce it. On failure the
/// lease is given back (another node may do better) and false returned.
async fn take_up(shared: &Shared, net: &Netlink, leases: &dyn Leases) -> bool {
    let cfg = &shared.cfg;
    let added = async {
        let ifindex = net.ifindex(&cfg.interface).await?;
        net.add_address(ifindex, cfg.address).await?;
        Ok::<u32, NetError>(ifindex)
    }
    .await;
    match added {
        Ok(ifindex) => {
            shared.became(true);
            tracing::info!(address = %cfg.address, interface = %cfg.interface, "vip: acquired, this node is the leader");
            let (ifname, ip) = (cfg.interface.clone(), cfg.address.addr());
            tokio::spawn(async move {
                if let Err(e) =
                    announce::announce(&ifname, ifindex, ip, ANNOUNCE_REPEATS, ANNOUNCE_GAP).await
                {
                    tracing::warn!(error = %e, "vip: announcing the address");
                }
            });
            true
        }
        Err(e) => {
            tracing::error!(error = %e, address = %cfg.address, interface = %cfg.interface, "vip: cannot add the address; giving the lease back");
            let _ = leases.release(LEASE, &shared.me.value).await;
            false
        }
    }
}

/// Stop being the leader: the address goes first; then, when handing over,
/// the lease (so the standby need not wait it out).
async fn step_down(shared: &Shared, net: &Netlink, leases: &dyn Leases, release: bool, why: &str) {
    let cfg = &shared.cfg;
    let removed = async {
        let ifindex = net.ifindex(&cfg.interface).await?;
        net.del_address(ifindex, cfg.address).await
    }
    .await;
    if let Err(e) = removed {
        tracing::error!(error = %e, address = %cfg.address, "vip: cannot remove the address");
    }
    shared.became(false);
    // Whoever leads next is learned from the lease.
    shared.set_holder("");
    tracing::warn!(address = %cfg.address, why, "vip: stepped down, this node is standby");
    if release {
        if let Err(e) = leases.release(LEASE, &shared.me.value).await {
            tracing::warn!(error = %e, "vip: releasing the lease (it expires by itself)");
        }
    }
}
