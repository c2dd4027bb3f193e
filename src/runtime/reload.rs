//! Live reload: one serialized path for every trigger (the config file
//! changing on disk, SIGHUP, `POST /api/reload`).
//!
//! A reload first loads and validates the whole file (the same errors as
//! `tether check`); an invalid file changes nothing. Then whatever can fail
//! is done before anything changes: binding new sockets, fetching cookie
//! secrets. Only then are pools reconfigured (backends carried over by id),
//! the new [`Live`] published and the listeners swapped, each listener and
//! pool atomically. The outcome goes to the log, to
//! `config_reloads_total{result}`, to the caller and to `GET /api/reload`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::build::{self, AdminListener, PoolEntry};
use super::listeners::{self, ListenerChanges};
use super::{Core, Live, Owned};
use crate::config::{self, Snapshot};
use crate::pool::PoolChanges;
use crate::tls::certs::FileStamp;
use crate::tls::AbortOnDrop;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The config file changed on disk.
    File,
    /// SIGHUP.
    Signal,
    /// `POST /api/reload`.
    Api,
}

pub struct ReloadRequest {
    pub trigger: Trigger,
    /// Where the outcome goes, when the trigger waits for it.
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub pools_added: Vec<Arc<str>>,
    pub pools_removed: Vec<Arc<str>>,
    /// Per pool that stays: backends added, removed (draining), changed.
    pub pools: BTreeMap<Arc<str>, PoolChanges>,
    pub listeners: ListenerChanges,
    /// The admin listener moved to this address.
    pub admin_rebound: Option<String>,
    /// Settings that changed but only apply after a restart or `tether --upgrade`.
    pub not_applied: Vec<&'static str>,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub trigger: Trigger,
    pub at_unix_ms: u64,
    /// The summary, or every error found (each `FILE:LINE:COL: key: message`).
    pub result: Result<Summary, Vec<String>>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "trigger": self.trigger,
            "at_unix_ms": self.at_unix_ms,
        });
        match &self.result {
            Ok(s) => {
                v["result"] = "ok".into();
                v["summary"] = serde_json::to_value(s).unwrap_or_default();
            }
            Err(errors) => {
                v["result"] = "error".into();
                v["error"] = format!(
                    "configuration rejected, the running one is kept: {}",
                    errors.join("; ")
                )
                .into();
                v["errors"] = serde_json::to_value(errors).unwrap_or_default();
            }
        }
        v
    }
}

/// Run reloads one at a time until the request channel closes.
pub(super) fn spawn(
    core: Arc<Core>,
    mut rx: mpsc::Receiver<ReloadRequest>,
    last: Arc<Mutex<Option<Outcome>>>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            super::notify(&[crate::sdnotify::State::Reloading]);
            let result = core.reload().await;
            super::notify_ready(false);
            let outcome = Outcome {
                trigger: req.trigger,
                at_unix_ms: crate::store::now_ms(),
                result,
            };
            match &outcome.result {
                Ok(s) => {
                    core.metrics.config_reloads.with_label_values(&["ok"]).inc();
                    core.metrics.config_last_reload_ok.set(1);
                    let summary = serde_json::to_string(s).unwrap_or_default();
                    tracing::info!(trigger = ?req.trigger, %summary, "configuration reloaded");
                    for what in &s.not_applied {
                        tracing::warn!(setting = what, "changed in the file, but applies only after a restart or `tether --upgrade`");
                    }
                }
                Err(errors) => {
                    core.metrics
                        .config_reloads
                        .with_label_values(&["error"])
                        .inc();
                    core.metrics.config_last_reload_ok.set(0);
                    tracing::error!(trigger = ?req.trigger, "configuration rejected, keeping the running one:\n{}", errors.join("\n"));
                }
            }
            if let Ok(mut l) = last.lock() {
                *l = Some(outcome.clone());
            }
            if let Some(reply) = req.reply {
                let _ = reply.send(outcome);
            }
        }
    }))
}

/// How often the config file is looked at.
const FILE_POLL: Duration = Duration::from_millis(500);

/// Watch the config file: a change that has stayed put for one poll (an
/// editor's write-then-rename, a half-written file) triggers a reload. Polled
/// by (mtime, size, inode) like the certificate files: no inotify dependency,
/// and a replaced file or a switched symlink is seen alike.
pub(super) fn watch_file(core: Arc<Core>, tx: mpsc::Sender<ReloadRequest>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut pending: Option<Option<FileStamp>> = None;
        let mut tick = tokio::time::interval(FILE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = FileStamp::of(&core.path);
            if now.is_none() {
                // Gone for a moment (being replaced): wait for it to come back.
                continue;
            }
            let loaded = core.owned.lock().await.stamp;
            if now == loaded {
                pending = None;
                continue;
            }
            if pending != Some(now) {
                pending = Some(now);
                continue;
            }
            pending = None;
            let req = ReloadRequest {
                trigger: Trigger::File,
                reply: None,
            };
            if tx.send(req).await.is_err() {
                return;
            }
            // Let that reload record the new stamp before looking again.
            tokio::time::sleep(FILE_POLL).await;
        }
    }))
}

impl Core {
    /// Load, validate and apply the config file; nothing changes on error.
    async fn reload(&self) -> Result<Summary, Vec<String>> {
        let mut owned = self.owned.lock().await;
        owned.stamp = FileStamp::of(&self.path);
        let snap = config::load(&self.path)
            .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        for w in snap.warnings() {
            tracing::warn!("{w}");
        }
        self.apply(&mut owned, snap)
            .await
            .map_err(|e| vec![format!("{}: {e}", self.path.display())])
    }

    async fn apply(&self, owned: &mut Owned, snap: Snapshot) -> Result<Summary, super::RunError> {
        let old = self.live.load_full();
        let mut sum = Summary::default();

        // 1. What can fail, before any change.
        let bindings = owned
            .listeners
            .prepare(&snap.listeners, super::vip_ip(&old.snapshot))?;
        let admin_socket = match snap.admin.listen != owned.admin.configured {
            true => Some(listeners::bind("admin", snap.admin.listen)?),
            false => None,
        };
        // The shared cookie secret may come from the store: fetch it now.
        let secret = build::store_secret(&snap, &*self.store).await?;

        // 2. Pools: reconfigure those that stay, start new ones, retire the rest.
        let mut pools: HashMap<Arc<str>, PoolEntry> = HashMap::new();
        for p in &snap.pools {
            match owned.pools.remove(&p.name) {
                Some(e) => {
                    let ch = e.rt.reconfigure(p.clone());
                    crate::resolve::resolve_now(&e.rt, &self.metrics).await;
                    e.checks.sync(true);
                    if !ch.is_empty() {
                        sum.pools.insert(p.name.clone(), ch);
                    }
                    pools.insert(p.name.clone(), e);
                }
                None => {
                    let e = PoolEntry::start(p.clone(), &*self.store, &self.metrics).await;
                    sum.pools_added.push(p.name.clone());
                    pools.insert(p.name.clone(), e);
                }
            }
        }
        for (name, e) in owned.pools.drain() {
            sum.pools_removed.push(name);
            retire(e);
        }
        owned.pools = pools;
        let order = snap
            .pools
            .iter()
            .filter_map(|p| owned.pools.get(&p.name).map(|e| e.rt.clone()))
            .collect();

        // 3. Publish, then move the listeners onto the new pools.
        let snap = Arc::new(snap);
        self.live.store(Arc::new(Live {
            snapshot: snap.clone(),
            pools: order,
        }));
        let live = self.live.load_full();
        let current = |name: &str| owned.listeners.current(name);
        let rts = build::listener_rts(&snap, &live, secret.as_deref(), &self.metrics, current);
        sum.listeners = owned.listeners.apply(rts, bindings, &self.shared);
        if let Some(socket) = admin_socket {
            sum.admin_rebound = Some(snap.admin.listen.to_string());
            owned.admin =
                AdminListener::serve(snap.admin.listen, socket, &self.admin, &self.shared);
        }
        listeners::resize(
            &self.shared.process_limit,
            old.snapshot.server.max_connections,
            snap.server.max_connections,
        );
        if format!("{:?}", old.snapshot.store) != format!("{:?}", snap.store) {
            sum.not_applied.push("store");
        }
        if old.snapshot.vip != snap.vip {
            sum.not_applied.push("vip");
        }
        if old.snapshot.server.threads != snap.server.threads {
            sum.not_applied.push("server.threads");
        }
        Ok(sum)
    }
}

/// A pool gone from the config: its backends drain out; its loops and state
/// are kept until nothing of it can be left.
fn retire(e: PoolEntry) {
    tracing::info!(pool = %e.rt.name, "pool removed: draining");
    e.rt.retire();
    let period = e.rt.retire_period();
    tokio::spawn(async move {
        tokio::time::sleep(period).await;
        drop(e);
    });
}
