//! The subscriber: other instances' changes, from `{prefix}:events` into this
//! instance's cache (within one pub/sub hop, well under 100 ms).
//!
//! It runs while the link is Up, on a connection of its own (on a cluster, to
//! one node, masters first, from a random one per instance: every node hears
//! every `PUBLISH`; when that node goes away the next one is tried). Each time it has
//! (re)subscribed it asks for a revalidation of the cache (`sync.rs`), since
//! anything published while it was not subscribed is lost; after an outage that
//! revalidation also writes back what Redis lacks. It drops its connection when
//! the link goes down (a stalled Redis would otherwise leave it waiting forever)
//! and when the store is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::cache::Apply;
use super::link::State;
use super::scripts;
use super::Shared;

/// Pause before subscribing again after a failed attempt or a closed connection.
const RETRY: Duration = Duration::from_millis(200);

pub(super) async fn subscriber(weak: Weak<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(mut state) = weak.upgrade().map(|s| s.link.watch()) else {
        return;
    };
    // Where this instance subscribes first on a cluster: instances spread over the masters.
    let mut start = rand::random::<u32>() as usize;
    loop {
        // Wait for the link to be up.
        while *state.borrow_and_update() != State::Up {
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let mut pubsub = match subscribe(&shared, start).await {
            Some(p) => p,
            None => {
                // The next attempt starts at the next node (cluster).
                start = start.wrapping_add(1);
                drop(shared);
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        shared.request_revalidate(false);
        drop(shared);
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => match weak.upgrade() {
                        Some(shared) => shared.on_message(msg.get_payload_bytes()),
                        None => return,
                    },
                    None => break,
                },
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *state.borrow() == State::Down {
                        break;
                    }
                }
                _ = stop.changed() => return,
            }
        }
        drop(messages);
        start = start.wrapping_add(1);
        tracing::debug!("redis store: events subscription ended, subscribing again");
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {},
            _ = stop.changed() => return,
        }
    }
}

async fn subscribe(shared: &Arc<Shared>, start: usize) -> Option<redis::aio::PubSub> {
    let (mut pubsub, node) = match shared.link.pubsub(start).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "redis store: no events connection");
            return None;
        }
    };
    let channel = shared.keys.channel.clone();
    let limit = shared.link.cfg.command_timeout;
    match tokio::time::timeout(limit, pubsub.subscribe(channel)).await {
        Ok(Ok(())) => {
            tracing::debug!(node, "redis store: events subscribed");
            Some(pubsub)
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "redis store: subscribe failed");
            None
        }
        Err(_) => None,
    }
}

impl Shared {
    /// One message from the events channel.
    pub(super) fn on_message(&self, payload: &[u8]) {
        let Some((header, body)) = scripts::parse_message(payload) else {
            tracing::warn!("redis store: unreadable event ignored");
            return;
        };
        match &*header.t {
            "drain" | "enable" => return self.on_operator(&header, body),
            // This instance applied its own changes from the script's reply.
            _ if header.i == self.instance => return,
            _ => {}
        }
        let Some(cache) = self.pools.get(&*header.p).map(|c| c.value().clone()) else {
            return;
        };
        match &*header.t {
            "set" => {
                if let Some(s) = scripts::parse_stored(body) {
                    // Keys not cached here stay so: they warm up lazily on use.
                    cache.apply(&header.k, s.v, &s.session, Apply::IfCached);
                }
            }
            "del" => {
                let ver = std::str::from_utf8(body)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                cache.remove_if(&header.k, |e| e.record().ver < ver);
            }
            _ => {}
        }
    }
}
