//! The virtual IP (`vip:`): tether nodes sharing one Redis contend for a
//! lease there; the holder puts the address on its interface and announces it.
//!
//! Data flow: a standby tries `Leases::acquire` every `renew` (and right when
//! the holder's lease runs out); once it holds the lease it adds the address
//! over netlink (`netlink`) and sends gratuitous ARP / unsolicited neighbour
//! advertisements (`announce`). The leader renews every `renew` (`run`).
//!
//! Never two owners, by two rules (monotonic time only):
//! - a leader whose last successful renewal was *sent* more than
//!   `lease - margin` ago removes the address, whatever the reason (Redis
//!   unreachable, a replica not confirming), so it is gone before the lease
//!   can expire in Redis and another node can take it;
//! - a leader that cannot act at all (SIGKILL, OOM kill, SIGSTOP, a paused
//!   VM) loses the address anyway: it carries a kernel lifetime of the lease
//!   rounded up to seconds, refreshed after each renewal, and a new leader
//!   adds it only once the old copy must have run out (`lifetime`).
//!
//! Lease value: `"{token} {priority} {name}"`; the token is unique per node
//! and stable for a `tether --upgrade` successor or a restart by systemd,
//! which continue the node's lease instead of waiting it out (`holder`). A
//! restart that finds the address on its interface without holding the lease
//! removes it first.

mod announce;
mod holder;
mod lifetime;
mod netlink;
mod run;
mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config;
use crate::metrics::Metrics;
use crate::store::lease::Leases;
use crate::tls::AbortOnDrop;
use holder::{Holder, Identity};
pub use netlink::NetError;
use netlink::Netlink;
use state::Shared;
pub use state::Status;

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
        metrics: &Metrics,
        config_path: &std::path::Path,
    ) -> Result<Vip, VipError> {
        let net = Netlink::new()?;
        let me = Holder::mine(&cfg, config_path, &Identity::current());
        let shared = Arc::new(Shared::new(cfg, me, metrics));
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
        let task = tokio::spawn(run::Run::new(shared.clone(), leases, net).run(rx));
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
