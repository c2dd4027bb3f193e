//! The owner part of a session record, as both stores keep it in memory
//! (the embedded store's map, the Redis store's cache): who owns the key, since
//! when, a pending move announcement and the failback home. `last_seen` and the
//! live-connection count live beside it (they change on every hit and must
//! survive a swap of the owner).

use std::sync::Arc;

use super::{Hit, MoveReason, Session, SessionMeta};

/// Replaced whole (behind an `ArcSwap`) on every change of ownership.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub(crate) backend: Arc<str>,
    pub(crate) since: u64,
    pub(crate) moved_from: Option<Arc<str>>,
    pub(crate) move_reason: Option<MoveReason>,
    pub(crate) home: Option<Arc<str>>,
}

impl From<&Session> for Owner {
    fn from(s: &Session) -> Owner {
        Owner {
            backend: s.backend.clone(),
            since: s.since,
            moved_from: s.moved_from.clone(),
            move_reason: s.move_reason,
            home: s.home.clone(),
        }
    }
}

impl Owner {
    pub(crate) fn is_moved(&self) -> bool {
        self.moved_from.is_some() || self.move_reason.is_some()
    }

    /// The same owner with its move announced (what `take_moved` leaves).
    pub(crate) fn taken(&self) -> Owner {
        Owner {
            moved_from: None,
            move_reason: None,
            ..self.clone()
        }
    }

    /// What a cache lookup hands the router (no allocation: `Arc` clones only).
    pub(crate) fn hit(&self, meta: &Arc<SessionMeta>) -> Hit {
        let moved = match (&self.moved_from, self.move_reason) {
            (Some(from), Some(reason)) => Some((from.clone(), reason)),
            _ => None,
        };
        Hit {
            backend: self.backend.clone(),
            moved,
            home: self.home.clone(),
            meta: meta.clone(),
            provisional: false,
        }
    }

    /// The full record, with `last_seen` kept beside the owner.
    pub(crate) fn session(&self, last_seen: u64) -> Session {
        Session {
            backend: self.backend.clone(),
            since: self.since,
            last_seen,
            moved_from: self.moved_from.clone(),
            move_reason: self.move_reason,
            home: self.home.clone(),
        }
    }
}
