//! Picking up a changed certificate or key without a restart.
//!
//! The files are polled (mtime, size, inode) rather than watched through
//! inotify: no new dependency, and it sees a file replaced by rename, a
//! symlink switched (Kubernetes secrets) or a file edited in place alike. A
//! change is loaded once the files have stayed the same for one poll, so a
//! pair caught half written (new cert, old key) is not mistaken for a bad
//! one. A good pair is swapped in for the next handshake; a bad one leaves the
//! previous certificate serving and logs why, once per change.

use std::sync::Arc;
use std::time::Duration;

use super::acceptor::TlsRt;
use super::certs::{load_pair, FileStamp};

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

type Stamps = (Option<FileStamp>, Option<FileStamp>);

impl TlsRt {
    /// Poll this listener's certificate files until the task is aborted.
    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let rt = self.clone();
        tokio::spawn(async move { rt.watch().await })
    }

    async fn watch(&self) {
        let set = self.resolver.current();
        // What is serving now, and a change seen once but not yet stable.
        let mut serving: Vec<Stamps> = set.entries().iter().map(|e| e.cert.stamps).collect();
        let mut pending: Vec<Option<Stamps>> = vec![None; serving.len()];
        drop(set);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (i, (cert, key)) in self.files.iter().enumerate() {
                let now = (FileStamp::of(cert), FileStamp::of(key));
                if Some(&now) == serving.get(i) {
                    pending[i] = None;
                    continue;
                }
                if pending[i] != Some(now) {
                    pending[i] = Some(now);
                    continue;
                }
                pending[i] = None;
                serving[i] = now;
                self.reload(i).await;
            }
        }
    }

    async fn reload(&self, i: usize) {
        let Some((cert, key)) = self.files.get(i).cloned() else {
            return;
        };
        let name = self
            .resolver
            .current()
            .entries()
            .get(i)
            .map(|e| e.name.clone())
            .unwrap_or_else(|| Arc::from(""));
        // File reads off the async threads.
        let loaded = tokio::task::spawn_blocking(move || load_pair(&cert, &key)).await;
        let label = |result: &str| {
            self.reloads
                .with_label_values(&[&*self.listener, &*name, result])
                .inc()
        };
        match loaded {
            Ok(Ok(c)) => {
                tracing::info!(listener = %self.listener, cert = %name, names = ?c.names, "certificate reloaded: new handshakes use it");
                self.resolver.replace(i, c);
                label("ok");
            }
            Ok(Err(e)) => {
                tracing::error!(listener = %self.listener, cert = %name, error = %e, "certificate reload failed: the previous certificate keeps serving");
                label("error");
            }
            Err(e) => {
                tracing::error!(listener = %self.listener, cert = %name, error = %e, "certificate reload task failed: the previous certificate keeps serving");
                label("error");
            }
        }
    }
}
