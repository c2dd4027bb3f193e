//! Kept-alive connections to one backend, for tether's own HTTP/1.1 path.
//!
//! A connection goes back to the pool only after a complete exchange whose
//! framing left it clean (no close-delimited body, no `Connection: close`,
//! nothing unread). An idle connection the backend closed meanwhile is found
//! when the next request is written and answered by EOF or a reset before any
//! byte of a response (the keep-alive reuse race): the caller retries such a
//! request once on a fresh connection if it is idempotent and has no body.
//! Requests that may not be sent twice get a connection that has just proven
//! alive, or a new one.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

use crate::tls::client::Upstream;

/// Idle connections kept per backend (nginx's `keepalive` is per worker).
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused: backends
/// commonly close idle keep-alive connections after 60 s (nginx 75 s,
/// Node.js 5 s); reusing one they are about to close loses the race.
const MAX_IDLE_AGE: Duration = Duration::from_secs(4);
/// Reused for a request that may not be replayed only if it was last used
/// this recently: a backend rarely closes a connection it just answered on.
const SAFE_REUSE_AGE: Duration = Duration::from_millis(500);

/// Does an idle connection have nothing to read? EOF (the backend closed
/// it), an error, or bytes nobody asked for all make it unusable.
fn quiet(conn: &mut Upstream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(conn).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// One idle connection.
pub struct Idle {
    pub conn: Upstream,
    addr: SocketAddr,
    since: Instant,
}

/// A backend's idle connections, most recently used last (LIFO keeps the
/// busy few warm and lets the rest age out).
#[derive(Default)]
pub struct IdlePool {
    idle: Mutex<Vec<Idle>>,
}

impl IdlePool {
    /// An idle connection to `addr`; `replayable`: the request may be sent
    /// again if the connection turns out dead.
    pub fn take(&self, addr: SocketAddr, replayable: bool) -> Option<Upstream> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        while let Some(mut c) = idle.pop() {
            let age = now.saturating_duration_since(c.since);
            if c.addr != addr || age > MAX_IDLE_AGE || !quiet(&mut c.conn) {
                continue; // dropped: closed
            }
            if !replayable && age > SAFE_REUSE_AGE {
                // Too old to bet a non-replayable request on; older ones are
                // below it, so the rest of the list is no better.
                idle.clear();
                return None;
            }
            return Some(c.conn);
        }
        None
    }

    /// Keep `conn` for the next request to `addr`.
    pub fn put(&self, conn: Upstream, addr: SocketAddr) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            addr,
            since: Instant::now(),
        });
    }

    /// Close every idle connection (the backend went down, or was removed).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
