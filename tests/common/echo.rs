//! An in-process echo backend for raw TCP tests, saying who it is.
//!
//! It waits for the client's first bytes. `GET /healthz` gets an HTTP 200 (so
//! `health: { kind: http }` works on it); anything else gets the banner
//! `<id> <src>\n` (`src`: the address from the PROXY header it was sent, or
//! `-`), then those bytes and everything after echoed back; the client's EOF
//! is answered with the backend's own (a half-close). `freeze` emulates
//! SIGSTOP (sockets stay open, nothing is read or written, the kernel still
//! accepts); `kill` closes every socket at once, as a killed process would.
//! Its PROXY header reader is kept apart from tether's parser on purpose.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// An in-process echo backend.
pub struct Echo {
    pub id: String,
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    /// The first bytes of every non-health connection, as received.
    pub firsts: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Echo {
    /// `expect_proxy`: every connection starts with a PROXY header (v1 or v2).
    pub async fn start(id: &str, expect_proxy: bool) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let (frozen, rx) = watch::channel(false);
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let firsts = Arc::new(Mutex::new(Vec::new()));
        let (t, f, name) = (tasks.clone(), firsts.clone(), id.to_string());
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (rx, f, name) = (rx.clone(), f.clone(), name.clone());
                t.lock()
                    .unwrap()
                    .spawn(async move { serve(s, &name, expect_proxy, rx, f).await });
            }
        });
        Echo {
            id: id.to_string(),
            addr,
            frozen,
            tasks,
            firsts,
        }
    }

    pub fn freeze(&self) {
        let _ = self.frozen.send(true);
    }

    pub fn thaw(&self) {
        let _ = self.frozen.send(false);
    }

    /// Close the listener and every connection, as a killed process would;
    /// returns once all of them are closed.
    pub async fn kill(&self) {
        loop {
            // Taken out of the lock: joining awaits, and the accept loop may
            // still add a connection meanwhile (caught by the next round).
            let mut set = std::mem::take(&mut *self.tasks.lock().unwrap());
            if set.is_empty() {
                return;
            }
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// Wait while the backend is frozen.
async fn thawed(rx: &mut watch::Receiver<bool>) {
    while *rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Read, unless the backend freezes first (then nothing is read until it thaws).
async fn read(s: &mut TcpStream, buf: &mut [u8], rx: &mut watch::Receiver<bool>) -> usize {
    loop {
        thawed(rx).await;
        tokio::select! {
            r = s.read(buf) => return r.unwrap_or(0),
            _ = rx.changed() => {}
        }
    }
}

async fn serve(
    mut s: TcpStream,
    id: &str,
    expect_proxy: bool,
    mut rx: watch::Receiver<bool>,
    firsts: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = Vec::new();
    let mut src = "-".to_string();
    if expect_proxy {
        loop {
            match read_proxy(&have) {
                Some(Ok((len, from))) => {
                    src = from;
                    have.drain(..len);
                    break;
                }
                Some(Err(())) => return,
                None => {}
            }
            let n = read(&mut s, &mut buf, &mut rx).await;
            if n == 0 {
                return;
            }
            have.extend_from_slice(&buf[..n]);
        }
    }
    if have.is_empty() {
        let n = read(&mut s, &mut buf, &mut rx).await;
        if n == 0 {
            return;
        }
        have.extend_from_slice(&buf[..n]);
    }
    if have.starts_with(b"GET /healthz") {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
        let _ = s.write_all(ok).await;
        return;
    }
    firsts.lock().unwrap().push(have.clone());
    thawed(&mut rx).await;
    let banner = format!("{id} {src}\n");
    if s.write_all(banner.as_bytes()).await.is_err() || s.write_all(&have).await.is_err() {
        return;
    }
    loop {
        let n = read(&mut s, &mut buf, &mut rx).await;
        if n == 0 {
            let _ = s.shutdown().await;
            // Keep the socket until the peer closes its side too.
            let _ = read(&mut s, &mut buf, &mut rx).await;
            return;
        }
        thawed(&mut rx).await;
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A PROXY header at the start of `b`: `None` while incomplete, else its
/// length and source address (`-` for LOCAL/UNKNOWN).
pub fn read_proxy(b: &[u8]) -> Option<Result<(usize, String), ()>> {
    const SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    if b.len() >= 16 && b.starts_with(SIG) {
        let len = 16 + u16::from_be_bytes([b[14], b[15]]) as usize;
        if b.len() < len {
            return None;
        }
        let src = match b[13] {
            0x11 => SocketAddr::from((
                [b[16], b[17], b[18], b[19]],
                u16::from_be_bytes([b[24], b[25]]),
            ))
            .to_string(),
            0x21 => {
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&b[16..32]);
                SocketAddr::from((ip, u16::from_be_bytes([b[48], b[49]]))).to_string()
            }
            _ => "-".to_string(),
        };
        return Some(Ok((len, src)));
    }
    if b.len() < 16 {
        return None;
    }
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[..end]).ok()?;
    let f: Vec<&str> = line.split(' ').collect();
    match f.as_slice() {
        ["PROXY", "TCP4" | "TCP6", ip, _, port, _] => {
            let ip: IpAddr = ip.parse().ok()?;
            Some(Ok((
                end + 2,
                SocketAddr::new(ip, port.parse().ok()?).to_string(),
            )))
        }
        ["PROXY", "UNKNOWN", ..] => Some(Ok((end + 2, "-".to_string()))),
        _ => Some(Err(())),
    }
}

/// `n` echo backends `b1..bn`.
pub async fn echoes(n: usize, expect_proxy: bool) -> Vec<Echo> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(Echo::start(&format!("b{i}"), expect_proxy).await);
    }
    v
}
