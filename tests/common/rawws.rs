//! Byte-level WebSocket ends for tunnel tests: a backend that answers the
//! upgrade as a test scripts it and then hands the raw socket to the test,
//! and a client that sends its own handshake (and any early bytes) and
//! reads the raw answer. Nothing here parses frames: what each side reads is
//! compared byte for byte with what the other sent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How the backend answers the upgrade.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A correct 101, followed at once by these bytes (same write).
    Accept(Vec<u8>),
    /// A 101 whose Sec-WebSocket-Accept does not match the key.
    WrongAccept,
    /// This whole response (status line, headers, body) instead of a 101.
    Raw(Vec<u8>),
}

/// One upgraded backend connection, handed to the test.
pub struct Conn {
    pub stream: TcpStream,
    /// The request head as the backend received it.
    pub head: String,
    /// Bytes that came after the head (early client frames).
    pub early: Vec<u8>,
}

pub struct Backend {
    pub addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Conn>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 4.2.2).
pub fn accept_for(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// Read an HTTP head (to the blank line); returns it and the bytes after it.
pub async fn read_head(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl Backend {
    pub async fn start(reply: Reply) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (tx, reply) = (tx.clone(), reply.clone());
                tokio::spawn(async move {
                    // Health probes and the like close without a head.
                    let Ok((head, early)) = read_head(&mut s).await else {
                        return;
                    };
                    let key = header(&head, "sec-websocket-key").unwrap_or("").to_owned();
                    let out = match reply {
                        Reply::Accept(extra) => {
                            let mut out = format!(
                                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                                accept_for(&key)
                            )
                            .into_bytes();
                            out.extend_from_slice(&extra);
                            out
                        }
                        Reply::WrongAccept => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_vec(),
                        Reply::Raw(bytes) => bytes,
                    };
                    if s.write_all(&out).await.is_ok() {
                        let _ = tx.send(Conn {
                            stream: s,
                            head,
                            early,
                        });
                    }
                });
            }
        });
        Backend { addr, conns, task }
    }

    /// The next upgraded connection.
    pub async fn next(&mut self) -> Conn {
        tokio::time::timeout(Duration::from_secs(5), self.conns.recv())
            .await
            .expect("a backend connection in time")
            .expect("backend running")
    }

    /// Stop accepting: new connections are refused (existing ones stay).
    pub fn close_listener(&mut self) {
        self.task.abort();
    }
}

/// A client's upgrade through tether: the response head and any bytes that
/// came after it, on the still open socket.
pub struct Client {
    pub stream: TcpStream,
    pub head: String,
    pub rest: Vec<u8>,
}

impl Client {
    pub fn status(&self) -> u16 {
        self.head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }
}

/// Send an upgrade for `/ws` (with `extra` header lines, then `early` bytes
/// in the same write) and read the answer's head.
pub async fn upgrade(addr: SocketAddr, extra: &[(&str, &str)], early: &[u8]) -> Client {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(early);
    stream.write_all(&out).await.unwrap();
    let (head, rest) = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream))
        .await
        .expect("an answer in time")
        .expect("an answer head");
    Client { stream, head, rest }
}

/// Read until EOF, an error or `limit`; what was read, and how it ended.
pub async fn read_to_end(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (out, End::StillOpen),
            Ok(Ok(0)) => return (out, End::Fin),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (out, End::Reset)
            }
            Ok(Err(e)) => return (out, End::Error(e.kind())),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Fin,
    Reset,
    StillOpen,
    Error(std::io::ErrorKind),
}

/// One frame: `fin`, `opcode`, `mask` (client frames), payload of `len` bytes of `fill`.
pub fn frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | (opcode & 0x0f)];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=65535 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// Make the socket's close a reset (SO_LINGER 0).
pub fn reset_on_close(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(s, sockopt::Linger, &linger).expect("SO_LINGER");
}

/// tether's close frame with `code` (server to client, unmasked, no reason).
pub fn close_frame(code: u16) -> Vec<u8> {
    frame(true, 0x8, None, &code.to_be_bytes())
}
