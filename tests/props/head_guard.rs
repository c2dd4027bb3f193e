//! The request-head guard (`l7::conn::ConnStream`) driven over an in-memory
//! peer: request heads of random sizes around the limit, bare-LF and
//! CR-padded blank lines, random bytes, arriving in reads of random sizes.
//! It answers 431 exactly when the head (up to its blank line) is longer
//! than `max_bytes`, and otherwise passes every byte through unchanged.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::{
    raw_connect::ProxyDigest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown,
    SocketDigest, Ssl, Stream, TimingDigest, UniqueID, UniqueIDType,
};
use proptest::prelude::*;
use tether::l7::conn::{ConnInfo, ConnStream, HeaderLimits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::{bound, gen, peak, Chopped};

const RESP_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// A client: its bytes in reads of the given sizes, then EOF; what the
/// guard writes back is kept. Reads never wait, so no deadline fires.
struct Peer {
    reads: Chopped,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Peer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().reads).poll_read(cx, buf)
    }
}

impl AsyncWrite for Peer {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.written.lock().unwrap().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Peer")
    }
}

// What pingora asks of a connection besides reading and writing: nothing
// that matters to the guard.
#[async_trait]
impl Shutdown for Peer {
    async fn shutdown(&mut self) {}
}
impl UniqueID for Peer {
    fn id(&self) -> UniqueIDType {
        0
    }
}
impl Ssl for Peer {}
impl GetTimingDigest for Peer {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}
impl GetProxyDigest for Peer {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}
impl GetSocketDigest for Peer {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}
impl Peek for Peer {}

/// Where the head ends: just past the first LF followed, after nothing but
/// CRs, by another LF (`\r\n\r\n`, and the bare-LF forms the guard also takes).
fn head_end(data: &[u8]) -> Option<usize> {
    data.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        let rest = &data[i + 1..];
        let crs = rest.iter().take_while(|&&c| c == b'\r').count();
        (rest.get(crs) == Some(&b'\n')).then_some(i + 1 + crs + 1)
    })
}

/// A request head with `headers` lines of the given value sizes, ended by
/// one of the blank-line forms, then a body.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        "(GET|POST|PUT) /[a-z0-9/?=&]{0,40} HTTP/1\\.[01]",
        prop::collection::vec(("[A-Za-z-]{1,20}", 0usize..600), 0..12),
        prop_oneof![
            Just("\r\n\r\n"),
            Just("\n\n"),
            Just("\r\n\n"),
            Just("\n\r\r\n")
        ],
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(line, headers, end, body)| {
            let mut h = line;
            for (name, n) in headers {
                h.push_str(&format!("\r\n{name}: {}", "v".repeat(n)));
            }
            h.push_str(end);
            let mut b = h.into_bytes();
            b.extend(body);
            b
        })
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => request(),
        2 => request().prop_flat_map(gen::mutate),
        1 => prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>()], 0..3000),
    ]
}

/// `max_bytes` near the head's own length (the edge that matters), or anywhere.
fn case() -> impl Strategy<Value = (Vec<u8>, usize, Vec<usize>, usize)> {
    input().prop_flat_map(|data| {
        let edge = head_end(&data).unwrap_or(data.len());
        (
            Just(data),
            prop_oneof![
                (edge.saturating_sub(3)..=edge + 3).prop_map(|m| m.max(1)),
                1usize..4000
            ],
            prop::collection::vec(1usize..2000, 1..5),
            prop_oneof![Just(8192usize), 1usize..200],
        )
    })
}

/// Reads through the guard until EOF or its error: what got through, what
/// it wrote, and whether the read failed.
fn drive(
    rt: &tokio::runtime::Runtime,
    data: Arc<Vec<u8>>,
    max: usize,
    sizes: Vec<usize>,
    read_size: usize,
) -> (Vec<u8>, Vec<u8>, Option<io::ErrorKind>, usize) {
    let written = Arc::new(Mutex::new(Vec::with_capacity(256)));
    let peer = Peer {
        reads: Chopped::new(data.clone(), sizes),
        written: written.clone(),
    };
    let stream: Stream = Box::new(peer);
    let info = Arc::new(ConnInfo::default());
    let limits = HeaderLimits {
        max_bytes: max,
        timeout: Duration::from_secs(3600),
    };
    let mut through = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; read_size];
    let (err, used) = peak(|| {
        rt.block_on(async {
            let mut conn = ConnStream::new(stream, limits, info);
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) => return None,
                    Ok(n) => through.extend_from_slice(&buf[..n]),
                    Err(e) => return Some(e.kind()),
                }
            }
        })
    });
    let w = written.lock().unwrap().clone();
    (through, w, err, used)
}

proptest! {
    #![proptest_config(crate::config(128))]

    #[test]
    fn answers_431_exactly_past_the_limit((data, max, sizes, read_size) in case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let data = Arc::new(data);
        let (through, written, err, used) = drive(&rt, data.clone(), max, sizes, read_size);
        prop_assert!(used <= bound(data.len()), "{} bytes for {}", used, data.len());
        let too_large = match head_end(&data) {
            Some(end) => end > max,
            None => data.len() > max,
        };
        if too_large {
            prop_assert_eq!(&written[..], RESP_431);
            prop_assert_eq!(err, Some(io::ErrorKind::InvalidData));
            // What got through before is the start of the head, within the limit.
            prop_assert!(through.len() <= max);
            prop_assert_eq!(&through[..], &data[..through.len()]);
        } else {
            prop_assert!(written.is_empty(), "wrote {:?}", String::from_utf8_lossy(&written));
            prop_assert_eq!(err, None);
            prop_assert_eq!(&through[..], &data[..]);
        }
    }
}
