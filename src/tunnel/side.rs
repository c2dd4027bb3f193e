//! What the engine needs of either end of a tunnel beyond reading and
//! writing: turning the coming close into a TCP reset, so a peer's reset is
//! passed on as a reset rather than softened into a FIN.

use std::os::fd::{AsFd, BorrowedFd, RawFd};

use nix::sys::socket::{setsockopt, sockopt};
use pingora::protocols::Stream as PingoraStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls::client::Upstream;

/// One end of a tunnel.
pub trait Side: AsyncRead + AsyncWrite + Unpin + Send {
    /// Make the close that follows a TCP reset (`SO_LINGER` 0).
    fn set_reset(&self);
}

fn linger_zero(fd: BorrowedFd<'_>) {
    let _ = setsockopt(
        &fd,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

impl Side for TcpStream {
    fn set_reset(&self) {
        linger_zero(self.as_fd());
    }
}

impl Side for Upstream {
    fn set_reset(&self) {
        match self {
            Upstream::Plain(s) => linger_zero(s.as_fd()),
            Upstream::Tls(s) => linger_zero(s.get_ref().0.as_fd()),
        }
    }
}

impl Side for Box<tokio_rustls::server::TlsStream<TcpStream>> {
    fn set_reset(&self) {
        linger_zero(self.get_ref().0.as_fd());
    }
}

/// A client stream handed back by pingora (TLS listeners: tether's `TlsConn`
/// over a pingora L4 stream). Both report their socket's fd as their id.
impl Side for PingoraStream {
    fn set_reset(&self) {
        let fd: RawFd = self.id();
        if fd < 0 {
            return;
        }
        // SAFETY: `id()` of these streams is the fd of the socket they own,
        // and `self` (so the fd) outlives this call.
        linger_zero(unsafe { BorrowedFd::borrow_raw(fd) });
    }
}
