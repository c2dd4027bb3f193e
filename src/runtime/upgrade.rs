//! The zero-downtime binary upgrade, both sides, over [`crate::upgrade`]'s
//! socket handoff.
//!
//! Successor (`tether --upgrade`): receive the predecessor's listening sockets,
//! ask it to let go, then open the store (so it reads everything the
//! predecessor wrote) and start as usual on the inherited sockets. Meanwhile
//! clients queue in the sockets' backlog: nothing is refused or reset.
//!
//! Predecessor: on a successor's request, send the sockets; on its release,
//! stop accepting, hand the store over (write it out, then never again) and
//! answer; then drain for `upgrade_grace` (see `runtime::shutdown`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::build::{self, AdminListener};
use super::{Core, RunError};
use crate::tls::AbortOnDrop;
use crate::upgrade::{Offer, Predecessor};

/// The admin socket's name in the handoff: `@` cannot start a listener name.
pub(super) const ADMIN: &str = "@admin";

/// How long a successor waits for the predecessor to answer at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The successor's side: the predecessor's sockets by listener name.
pub(super) async fn take_over(
    path: &Path,
) -> Result<HashMap<String, std::net::TcpListener>, RunError> {
    let mut p = Predecessor::connect(path, CONNECT_TIMEOUT).await?;
    let sockets = p.receive_sockets().await?;
    tracing::info!(
        sockets = sockets.len(),
        "upgrade: received the listening sockets"
    );
    p.release().await?;
    tracing::info!("upgrade: the predecessor stopped accepting and handed the store over");
    Ok(sockets)
}

/// The rendezvous where a successor finds this process. Another tether
/// already running on the same config is an error: two processes would
/// share (and corrupt) one store file.
pub(super) fn offer(path: &Path) -> Result<Offer, RunError> {
    Ok(Offer::bind(path)?)
}

/// Serve successors until one has taken over; then `done` is told.
pub(super) fn serve_successors(
    core: Arc<Core>,
    offer: Offer,
    done: mpsc::Sender<()>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut offer = offer;
        loop {
            let successor = hand_sockets(&core, &offer).await;
            // The rendezvous is freed first, so the successor can bind it once told.
            match successor.released(offer).await {
                Ok(()) => {
                    tracing::info!("upgrade: the successor took over");
                    let _ = done.send(()).await;
                    return;
                }
                Err(e) => {
                    // Gone between its release and our answer: nobody accepts now.
                    tracing::error!(error = %e, "upgrade: the successor died while taking over; serving again");
                    core.resume().await;
                    offer = match Offer::bind(&core.path) {
                        Ok(o) => o,
                        Err(e) => {
                            tracing::error!(error = %e, "upgrade: no further upgrades possible");
                            return;
                        }
                    };
                }
            }
        }
    }))
}

/// Wait for a successor, give it the sockets, and once it asks for the
/// release stop accepting and hand the store over. Successors that go away
/// before asking change nothing.
async fn hand_sockets(core: &Core, offer: &Offer) -> crate::upgrade::Successor {
    loop {
        let mut s = match offer.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: successor refused");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Held until the end: no reload may change the sockets meanwhile.
        let mut owned = core.owned.lock().await;
        let mut sockets = owned.listeners.sockets();
        if let Some(a) = owned.admin.socket() {
            sockets.push((ADMIN.to_owned(), a));
        }
        let fds: Vec<(&str, &tokio::net::TcpListener)> =
            sockets.iter().map(|(n, s)| (n.as_str(), &**s)).collect();
        tracing::info!(
            sockets = fds.len(),
            pid = s.pid(),
            "upgrade: a successor asks for the sockets"
        );
        if let Err(e) = s.send_sockets(&fds).await {
            tracing::warn!(error = %e, "upgrade: sending the sockets failed; still serving");
            continue;
        }
        if let Err(e) = s.wait_release().await {
            tracing::warn!(error = %e, "upgrade: the successor went away before taking over; still serving");
            continue;
        }
        owned.listeners.close();
        owned.admin.close();
        if let Err(e) = core.store.hand_over().await {
            tracing::error!(error = %e, "upgrade: writing out the store for the successor");
        }
        return s;
    }
}

impl Core {
    /// A handoff failed after this process stopped accepting: bind and serve
    /// the current config's listeners again. An embedded store stays retired
    /// (not written to its file) until the next restart.
    async fn resume(&self) {
        let mut owned = self.owned.lock().await;
        let snap = self.live.load().snapshot.clone();
        match owned
            .listeners
            .prepare(&snap.listeners, super::vip_ip(&snap))
        {
            Ok(bindings) => {
                let live = self.live.load_full();
                let secret = match build::store_secret(&snap, &*self.store).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "upgrade: resuming without the cookie secret");
                        None
                    }
                };
                let rts =
                    build::listener_rts(&snap, &live, secret.as_deref(), &self.metrics, |_| None);
                owned.listeners.apply(rts, bindings, &self.shared);
            }
            Err(e) => tracing::error!(error = %e, "upgrade: cannot listen again"),
        }
        match super::listeners::bind("admin", snap.admin.listen) {
            Ok(s) => {
                owned.admin = AdminListener::serve(snap.admin.listen, s, &self.admin, &self.shared)
            }
            Err(e) => tracing::error!(error = %e, "upgrade: cannot serve the admin API again"),
        }
        if matches!(
            snap.store.kind,
            crate::config::StoreKind::Embedded { path: Some(_) }
        ) {
            tracing::warn!(
                "upgrade: the embedded store is no longer written to its file until restart"
            );
        }
    }
}

/// SIGUSR2: start `tether --upgrade` on the same config next to this process.
pub(super) fn start_successor(path: &Path) {
    let mut cmd = crate::upgrade::successor_command(path);
    if let Some(f) = LOG_FORMAT.get() {
        cmd.arg("--log-format").arg(f);
    }
    match cmd.spawn() {
        Ok(mut child) => {
            tracing::info!(pid = child.id(), "upgrade: started a successor");
            // Reaped here if it fails early; otherwise it outlives this process.
            std::thread::spawn(move || {
                if let Ok(st) = child.wait() {
                    if !st.success() {
                        tracing::error!(status = %st, "upgrade: the successor exited");
                    }
                }
            });
        }
        Err(e) => tracing::error!(error = %e, "upgrade: cannot start a successor"),
    }
}

/// The `--log-format` this process was started with, passed on to a successor.
pub(super) static LOG_FORMAT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
