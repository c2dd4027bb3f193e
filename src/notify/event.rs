//! The JSON body of a notification, and the per-window tally of moved
//! sessions that becomes `moved` events.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::store::{now_ms, MoveReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A drain deadline is near: its sessions will move (sent `before` it).
    DrainPending,
    /// Sessions left `backend` during one batch window.
    Moved,
}

/// One webhook POST body.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    pub event: Kind,
    pub pool: String,
    pub backend: String,
    pub reason: MoveReason,
    /// Unix ms of the drain deadline; `null` for moves, which already happened.
    pub deadline: Option<u64>,
    pub sessions: u64,
    /// Moved sessions per new owner (`moved` only); sorted so bodies are stable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<BTreeMap<String, u64>>,
    /// Unix ms when the event was made: retries can deliver it much later.
    pub time: u64,
}

/// The moves from one (pool, backend, reason) within the open window.
struct Batch {
    pool: String,
    from: String,
    reason: MoveReason,
    sessions: u64,
    to: HashMap<String, u64>,
}

/// Moves counted since the window opened.
///
/// A `Vec` scanned linearly: a window holds one batch per backend that lost
/// sessions in that second, which is a handful even in a mass failover, and a
/// scan needs no key allocation on the data path.
#[derive(Default)]
pub(crate) struct Tally {
    batches: Vec<Batch>,
}

impl Tally {
    /// Counts one move; answers whether it opened the window (the tally was empty).
    pub(crate) fn add(&mut self, pool: &str, from: &str, to: &str, reason: MoveReason) -> bool {
        let opened = self.batches.is_empty();
        let found = self
            .batches
            .iter_mut()
            .find(|b| b.reason == reason && b.from == from && b.pool == pool);
        let batch = match found {
            Some(b) => b,
            None => {
                self.batches.push(Batch {
                    pool: pool.to_owned(),
                    from: from.to_owned(),
                    reason,
                    sessions: 0,
                    to: HashMap::new(),
                });
                let last = self.batches.len() - 1;
                &mut self.batches[last]
            }
        };
        batch.sessions += 1;
        match batch.to.get_mut(to) {
            Some(n) => *n += 1,
            None => {
                batch.to.insert(to.to_owned(), 1);
            }
        }
        opened
    }

    /// Closes the window: one `moved` event per batch, in the order they opened.
    pub(crate) fn into_events(self) -> impl Iterator<Item = Event> {
        let time = now_ms();
        self.batches.into_iter().map(move |b| Event {
            event: Kind::Moved,
            pool: b.pool,
            backend: b.from,
            reason: b.reason,
            deadline: None,
            sessions: b.sessions,
            to: Some(b.to.into_iter().collect()),
            time,
        })
    }
}

/// The event announcing that `backend`'s drain ends at `deadline_unix_ms`.
pub(crate) fn drain_pending(
    pool: &str,
    backend: &str,
    deadline_unix_ms: u64,
    sessions: u64,
) -> Event {
    Event {
        event: Kind::DrainPending,
        pool: pool.to_owned(),
        backend: backend.to_owned(),
        reason: MoveReason::Drain,
        deadline: Some(deadline_unix_ms),
        sessions,
        to: None,
        time: now_ms(),
    }
}
