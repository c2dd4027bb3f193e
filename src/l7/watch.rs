//! The upstream response timeouts pingora cannot express: `response_header`
//! for the response head and `response_idle` for the quiet gaps of its body.
//!
//! pingora gives an HTTP/1 upstream one read timeout
//! (`peer.options.read_timeout`), copied into the upstream session when the
//! request starts and applied to every read, head and body alike; no proxy
//! hook sees that session to change it once the head is in. So pingora gets
//! the longer of the two ([`Plan`]) and a [`Watch`] enforces the shorter one
//! during its phase: a task that sleeps to the phase's deadline and asks the
//! kernel (`TCP_INFO`) how long the backend's side of the socket has really
//! been quiet. Past the limit it shuts the socket down (a duplicate of the
//! descriptor, so a closed and reused number can never be hit); pingora sees
//! the connection end and fails the request, and the router asks
//! [`Watch::fired`] to report it as the timeout it was.
//!
//! The kernel's view keeps the limits about the backend alone, as pingora's
//! per-read timeout does: in the head phase the clock runs from the last byte
//! exchanged with the backend (request bytes it still has to take, or a 1xx
//! or partial head from it, stop it), so a request body still uploading never
//! eats into `response_header`; in the body phase it runs from the last byte
//! received, and stops while response bytes wait unread in the socket (a slow
//! client holds tether back, not the backend).
//!
//! A body cut this way that pingora cannot tell from a clean end (a body
//! delimited by the connection's close) is failed by the router on
//! [`Watch::fired`], so the client never takes a cut body for a whole one.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::PoolTimeouts;
use crate::tls::AbortOnDrop;

/// The two waits of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// From the request to the (final) response head: `response_header`.
    Head,
    /// Between reads of the response body: `response_idle`.
    Body,
}

/// Who bounds which phase of a pool's responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    /// pingora's read timeout: the longer limit, so it never cuts the phase
    /// that has the shorter one too early.
    pub read_timeout: Duration,
    /// The shorter limit and its phase, left to a [`Watch`]; `None` when
    /// both are equal and pingora's timeout alone is exact.
    pub watched: Option<(Phase, Duration)>,
}

impl Plan {
    pub fn new(t: &PoolTimeouts) -> Plan {
        let (head, idle) = (t.response_header, t.response_idle);
        let watched = match head.cmp(&idle) {
            std::cmp::Ordering::Less => Some((Phase::Head, head)),
            std::cmp::Ordering::Greater => Some((Phase::Body, idle)),
            std::cmp::Ordering::Equal => None,
        };
        Plan {
            read_timeout: head.max(idle),
            watched,
        }
    }
}

const IDLE: u8 = 0;
const ARMED: u8 = 1;
const FIRED: u8 = 2;

struct Shared {
    state: AtomicU8,
    sock: OwnedFd,
}

/// The watch over one request's upstream connection.
pub(super) struct Watch {
    shared: Arc<Shared>,
    watched: Phase,
    limit: Duration,
    /// The phase the response is in; `None` once it is over.
    phase: Option<Phase>,
    task: Option<AbortOnDrop>,
}

impl Watch {
    /// Watch the upstream connection `fd` of a request whose head is about
    /// to be sent. `None`: nothing to watch under `plan`, or the descriptor
    /// could not be duplicated (pingora's longer timeout still applies).
    pub fn start(fd: RawFd, plan: &Plan) -> Option<Watch> {
        let (watched, limit) = plan.watched?;
        // SAFETY: pingora passes the descriptor of the connection this request
        // is about to use; it stays open for the whole call, and the clone we
        // keep is ours to close.
        let sock = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| tracing::debug!(error = %e, "no response watch: dup failed"))
            .ok()?;
        let mut w = Watch {
            shared: Arc::new(Shared {
                state: AtomicU8::new(IDLE),
                sock,
            }),
            watched,
            limit,
            phase: None,
            task: None,
        };
        w.enter(Some(Phase::Head));
        Some(w)
    }

    fn enter(&mut self, phase: Option<Phase>) {
        if self.phase == phase {
            return;
        }
        self.phase = phase;
        let st = &self.shared.state;
        if phase == Some(self.watched) {
            if st
                .compare_exchange(IDLE, ARMED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let task = tokio::spawn(run(self.shared.clone(), self.watched, self.limit));
                self.task = Some(AbortOnDrop(task));
            }
        } else {
            // A fired watch stays fired: the router still has to report it.
            let _ = st.compare_exchange(ARMED, IDLE, Ordering::AcqRel, Ordering::Acquire);
            self.task = None;
        }
    }

    /// The final response head arrived (not a 1xx one, which the head phase
    /// outlasts); the body phase follows if the response has a body.
    pub fn head_received(&mut self, has_body: bool) {
        self.enter(has_body.then_some(Phase::Body));
    }

    /// The response body ended.
    pub fn body_ended(&mut self) {
        self.enter(None);
    }

    /// The phase whose limit made the watch cut the connection, if it did.
    pub fn fired(&self) -> Option<Phase> {
        (self.shared.state.load(Ordering::Acquire) == FIRED).then_some(self.watched)
    }

    /// The watched phase is over and passed without a cut: nothing is left
    /// to watch or to report.
    pub fn spent(&self) -> bool {
        let past = match self.watched {
            Phase::Head => self.phase != Some(Phase::Head),
            Phase::Body => self.phase.is_none(),
        };
        past && self.fired().is_none()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Disarm before the task is aborted: an abort lands at the task's next
        // poll, and a cut after this point could hit a connection pingora has
        // meanwhile put back in its pool.
        let _ =
            self.shared
                .state
                .compare_exchange(ARMED, IDLE, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Sleep to the phase's deadline, ask the kernel, and cut or sleep again.
async fn run(shared: Arc<Shared>, phase: Phase, limit: Duration) {
    let mut wake = Instant::now() + limit;
    loop {
        tokio::time::sleep_until(wake).await;
        let fd = shared.sock.as_raw_fd();
        let quiet = match quiet_for(fd, phase) {
            Some(q) if q >= limit => {
                if shared
                    .state
                    .compare_exchange(ARMED, FIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
                }
                return;
            }
            Some(q) => q,
            // No answer from the kernel: look again a whole limit later.
            None => Duration::ZERO,
        };
        wake = Instant::now() + (limit - quiet);
    }
}

/// How long the backend's side of socket `fd` has been quiet, as `phase`
/// counts it (see the module header); `None` if the kernel cannot tell.
fn quiet_for(fd: RawFd, phase: Phase) -> Option<Duration> {
    let t = sock::tcp_times(fd)?;
    let quiet = match phase {
        // Request bytes the backend has not taken yet: it is not waiting on
        // us, we are waiting on it, as for any write.
        Phase::Head if t.unsent => 0,
        Phase::Head => t.since_sent_ms.min(t.since_received_ms),
        // Bytes (or the close) waiting for tether to read: not the backend's silence.
        Phase::Body if sock::readable(fd) => 0,
        Phase::Body => t.since_received_ms,
    };
    Some(Duration::from_millis(u64::from(quiet)))
}

/// The two socket questions, the only unsafe code of the watch.
mod sock {
    use std::os::fd::RawFd;

    use nix::sys::socket::{recv, MsgFlags};

    pub(super) struct TcpTimes {
        pub since_sent_ms: u32,
        pub since_received_ms: u32,
        /// Bytes sent but not acknowledged, or not sent at all yet.
        pub unsent: bool,
    }

    /// The connection's `TCP_INFO`: when data last went each way, and
    /// whether the peer has taken everything written.
    #[cfg(target_os = "linux")]
    pub(super) fn tcp_times(fd: RawFd) -> Option<TcpTimes> {
        let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` is a writable `tcp_info` of `len` bytes; the kernel
        // writes at most `len` bytes into it. It was zeroed first, so a shorter
        // answer (an older kernel) leaves the rest zero, a valid value for
        // this plain-integer struct.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: zeroed, then filled by the kernel: initialized either way.
        let info = unsafe { info.assume_init() };
        Some(TcpTimes {
            since_sent_ms: info.tcpi_last_data_sent,
            since_received_ms: info.tcpi_last_data_recv,
            unsent: info.tcpi_unacked > 0 || info.tcpi_notsent_bytes > 0,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn tcp_times(_fd: RawFd) -> Option<TcpTimes> {
        None
    }

    /// Is there something to read (bytes, or the peer's close)?
    pub(super) fn readable(fd: RawFd) -> bool {
        let mut b = [0u8; 1];
        recv(fd, &mut b, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts(head: u64, idle: u64) -> PoolTimeouts {
        PoolTimeouts {
            connect: Duration::from_secs(1),
            response_header: Duration::from_secs(head),
            response_idle: Duration::from_secs(idle),
        }
    }

    #[test]
    fn pingora_gets_the_longer_limit_and_the_watch_the_shorter() {
        let p = Plan::new(&timeouts(30, 300));
        assert_eq!(p.read_timeout, Duration::from_secs(300));
        assert_eq!(p.watched, Some((Phase::Head, Duration::from_secs(30))));
        let p = Plan::new(&timeouts(60, 10));
        assert_eq!(p.read_timeout, Duration::from_secs(60));
        assert_eq!(p.watched, Some((Phase::Body, Duration::from_secs(10))));
        let p = Plan::new(&timeouts(5, 5));
        assert_eq!((p.read_timeout, p.watched), (Duration::from_secs(5), None));
    }

    /// A connected pair over loopback, the request already sent.
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        (c, s)
    }

    const HEAD_200MS: Plan = Plan {
        read_timeout: Duration::from_secs(10),
        watched: Some((Phase::Head, Duration::from_millis(200))),
    };

    #[tokio::test]
    async fn a_silent_peer_is_cut_at_the_limit() {
        use tokio::io::AsyncReadExt;
        let (mut c, _s) = pair().await;
        let start = std::time::Instant::now();
        let w = Watch::start(c.as_raw_fd(), &HEAD_200MS).unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("cut in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the reader sees the connection end");
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(w.fired(), Some(Phase::Head));
        assert!(!w.spent());
    }

    #[tokio::test]
    async fn an_answer_or_a_drop_disarms_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut c, mut s) = pair().await;
        let mut w = Watch::start(c.as_raw_fd(), &HEAD_200MS).unwrap();
        s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        w.head_received(false);
        assert!(w.spent());
        let (mut c2, _s2) = pair().await;
        drop(Watch::start(c2.as_raw_fd(), &HEAD_200MS));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "the answer, not a cut");
        assert_eq!(w.fired(), None);
        let idle = tokio::time::timeout(Duration::from_millis(100), c2.read(&mut buf)).await;
        assert!(idle.is_err(), "a dropped watch never cuts: {idle:?}");
    }
}
