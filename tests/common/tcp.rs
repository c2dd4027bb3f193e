//! Raw TCP test helpers: clients bound to chosen loopback source addresses
//! talking to the echo backend (`echo`), a PROXY v2 writer, a TLS
//! ClientHello builder, config YAML for tcp listeners, admin look-ups, and a
//! port forwarder (like `ssh -L`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::echo::Echo;

/// Connect to `to` from source address `from` (any 127.x.y.z is loopback).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = if from.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// What the echo backend said: its id and the client address it was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    pub id: String,
    pub src: String,
}

/// Read the banner line (bounded), within `limit`.
pub async fn banner<R: AsyncRead + Unpin>(s: &mut R, limit: Duration) -> std::io::Result<Banner> {
    let line = tokio::time::timeout(limit, async {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < 512 {
            if s.read(&mut b).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if b[0] == b'\n' {
                return Ok(line);
            }
            line.push(b[0]);
        }
        Err(std::io::Error::other("banner too long"))
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let text = String::from_utf8_lossy(&line).to_string();
    let (id, src) = text.split_once(' ').unwrap_or((&text, "-"));
    Ok(Banner {
        id: id.to_string(),
        src: src.to_string(),
    })
}

/// Send `payload` while reading the banner and the echo (both at once, so a
/// big payload cannot deadlock on full buffers); the echo must match exactly.
pub async fn hello(s: &mut TcpStream, payload: &[u8]) -> std::io::Result<Banner> {
    let (mut rd, mut wr) = s.split();
    let write = wr.write_all(payload);
    let read = async {
        let b = banner(&mut rd, Duration::from_secs(5)).await?;
        let mut echo = vec![0u8; payload.len()];
        tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut echo))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if echo != payload {
            return Err(std::io::Error::other("echo differs from what was sent"));
        }
        Ok(b)
    };
    let (w, r) = tokio::join!(write, read);
    w?;
    r
}

/// Connect from `from`, say `payload`, and return the banner (the connection stays open).
pub async fn dial(
    from: IpAddr,
    to: SocketAddr,
    payload: &[u8],
) -> std::io::Result<(TcpStream, Banner)> {
    let mut s = connect_from(from, to).await?;
    let b = hello(&mut s, payload).await?;
    Ok((s, b))
}

/// Does the peer close `s` within `limit` (EOF or reset), rather than answer or hang?
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 256];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A TLS 1.2/1.3-style ClientHello record for `name`, with other extensions
/// around SNI as real clients send them.
pub fn client_hello(name: &str) -> Vec<u8> {
    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }
    fn ext(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut v = kind.to_be_bytes().to_vec();
        v.extend_from_slice(&vec16(body));
        v
    }
    let mut entry = vec![0u8];
    entry.extend_from_slice(&vec16(name.as_bytes()));
    let mut exts = ext(0x2a2a, b""); // GREASE
    exts.extend(ext(0x000a, &vec16(&[0x00, 0x1d, 0x00, 0x17]))); // supported_groups
    exts.extend(ext(0x0000, &vec16(&entry))); // server_name
    exts.extend(ext(0x0010, &vec16(b"\x02h2\x08http/1.1"))); // ALPN
    exts.extend(ext(0x002b, b"\x04\x03\x04\x03\x03")); // supported_versions
    let mut body = vec![3, 3];
    body.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    body.push(32);
    body.extend([9u8; 32]); // legacy session id
    body.extend(vec16(&[0x13, 0x01, 0x13, 0x02, 0xc0, 0x2b]));
    body.extend([1, 0]); // compression: null
    body.extend(vec16(&exts));
    let mut msg = vec![1, 0];
    msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
    msg.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend(vec16(&msg));
    rec
}

/// A PROXY v2 header (PROXY command, TCP) for `src` -> `dst`, both one family.
pub fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        _ => panic!("proxy_v2: mixed address families"),
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// YAML for pool `app` over echo backends, with extra pool lines.
pub fn pool_yaml(backends: &[Echo], extra: &str) -> String {
    let list: String = backends
        .iter()
        .map(|b| format!("      - {{ id: {}, addr: \"{}\" }}\n", b.id, b.addr))
        .collect();
    format!("pools:\n  app:\n{extra}    backends:\n{list}")
}

/// A listener entry on an ephemeral port: `protocol` and `affinity` as YAML flow text.
pub fn listener_yaml(name: &str, protocol: &str, affinity: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    bind: \"127.0.0.1:0\"\n    protocol: {protocol}\n    pool: app\n{extra}    affinity: {affinity}\n"
    )
}

/// A whole config: admin on an ephemeral port, `top` sections, the pool, the listeners.
pub fn config_yaml(backends: &[Echo], pool_extra: &str, listeners: &str, top: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n{top}\n{}listeners:\n{listeners}",
        pool_yaml(backends, pool_extra)
    )
}

/// 127.a.b.c
pub fn lo(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::from([127, a, b, c])
}

/// The backend the store pins `key` to in pool `app`, if any.
pub async fn owner(t: &super::Tether, key: &str) -> Option<String> {
    let path: String = key
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let r = super::Client::new(t.admin)
        .get(&format!("/api/pools/app/sessions/{path}"), &[])
        .await
        .expect("admin");
    (r.status == 200).then(|| {
        r.json()["session"]["backend"]
            .as_str()
            .unwrap_or("")
            .to_string()
    })
}

/// The Prometheus text of `/metrics`.
pub async fn metrics(t: &super::Tether) -> String {
    super::Client::new(t.admin)
        .get("/metrics", &[])
        .await
        .expect("metrics")
        .text()
}

/// The value of one metric line (exact name and labels), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `hello`, with `payload` sent in two writes `pause` apart (split at `at`).
pub async fn hello_split(
    s: &mut TcpStream,
    payload: &[u8],
    at: usize,
    pause: Duration,
) -> std::io::Result<Banner> {
    s.write_all(&payload[..at]).await?;
    tokio::time::sleep(pause).await;
    s.write_all(&payload[at..]).await?;
    let b = banner(s, Duration::from_secs(5)).await?;
    let mut echo = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if echo != payload {
        return Err(std::io::Error::other("echo differs from what was sent"));
    }
    Ok(b)
}

/// A TCP forwarder on its own local port, like `ssh -L`: every connection is
/// copied to `to` as is. Abort the task to stop accepting.
pub async fn forwarder(to: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut s) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                }
            });
        }
    });
    (addr, task)
}
