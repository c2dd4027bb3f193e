//! The client side of a case: raw bytes written on fresh connections (with
//! pauses, half-closes), and everything that came back, parsed into
//! responses by the client's own reading of RFC 9112 6.3.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One thing the client does on its connection.
#[derive(Debug, Clone)]
pub enum C {
    Send(Vec<u8>),
    Pause(u64),
    /// Half-close (FIN), then keep reading.
    Shut,
    /// Wait until this many final responses came (the next request then
    /// cannot be taken for a pipelined one, however slow the proxy is).
    Await(usize),
}

/// One client connection of a case.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub ops: Vec<C>,
    /// Final responses to wait for (fewer if the connection ends first).
    pub expect: usize,
    /// Indexes of the final responses that answer HEAD requests.
    pub heads: Vec<usize>,
}

/// How the body of a response was delimited on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    None,
    Length,
    Chunked,
    Close,
}

/// One response as the client read it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub reason: String,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    /// The payload (de-chunked).
    pub body: Vec<u8>,
    /// Trailer lines of a chunked body.
    pub trailers: Vec<String>,
    /// The body ended early (the connection closed inside it).
    pub cut: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// How a client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The proxy closed (or reset) it.
    Closed,
    /// Still open after the expected answers.
    Open,
    /// The expected answers did not come within the case's deadline.
    Timeout,
}

#[derive(Debug, Clone)]
pub struct ConnOut {
    pub resps: Vec<Resp>,
    pub end: End,
    /// Bytes that did not parse as a response.
    pub junk: Vec<u8>,
}

/// How long a connection is watched for a close after its last expected
/// answer when that answer did not announce one.
const GRACE: Duration = Duration::from_millis(40);

/// Run one client connection against `addr`.
pub async fn run(addr: SocketAddr, conn: &ClientConn, deadline: Duration) -> ConnOut {
    let s = TcpStream::connect(addr).await.expect("connect to tether");
    let _ = s.set_nodelay(true);
    let (mut rd, mut wr) = s.into_split();
    let ops = conn.ops.clone();
    let (seen_tx, mut seen) = tokio::sync::watch::channel(0usize);
    let writer = tokio::spawn(async move {
        for op in ops {
            match op {
                C::Send(b) => {
                    if wr.write_all(&b).await.is_err() {
                        return wr;
                    }
                }
                C::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                C::Shut => {
                    let _ = wr.shutdown().await;
                }
                C::Await(n) => {
                    let _ = tokio::time::timeout(deadline, seen.wait_for(|&f| f >= n)).await;
                }
            }
        }
        wr
    });
    let until = Instant::now() + deadline;
    let mut buf = Vec::new();
    let mut resps: Vec<Resp> = Vec::new();
    let mut finals = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut eof = false;
    let end = loop {
        // Parse whatever is complete.
        loop {
            let head = conn.heads.contains(&finals);
            match parse_response(&buf, head, eof) {
                Ok(Some((r, n))) => {
                    buf.drain(..n);
                    if !r.interim() {
                        finals += 1;
                        seen_tx.send_replace(finals);
                    }
                    resps.push(r);
                }
                _ => break,
            }
        }
        if eof {
            break End::Closed;
        }
        let announced_close = resps.last().is_some_and(|r| {
            r.header("connection")
                .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
        });
        let wait = if finals >= conn.expect && !announced_close {
            Some(GRACE)
        } else {
            None
        };
        let limit = match wait {
            Some(g) => (Instant::now() + g).min(until),
            None => until,
        };
        match tokio::time::timeout_at(limit, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => eof = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) if wait.is_some() && Instant::now() < until => break End::Open,
            Err(_) if finals >= conn.expect => break End::Open,
            Err(_) => break End::Timeout,
        }
    };
    writer.abort();
    ConnOut {
        resps,
        end,
        junk: buf,
    }
}

/// One response at the start of `b`; `eof`: no more bytes will come (ends
/// a close-delimited body). `Ok(None)`: incomplete.
pub fn parse_response(b: &[u8], head: bool, eof: bool) -> Result<Option<(Resp, usize)>, ()> {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&b[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or(())?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().ok_or(())?;
    if !version.starts_with("HTTP/1.") {
        return Err(());
    }
    let status: u16 = parts.next().ok_or(())?.parse().map_err(|_| ())?;
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l.split_once(':').ok_or(())?;
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut r = Resp {
        status,
        reason,
        headers,
        framing: Framing::None,
        body: Vec::new(),
        trailers: Vec::new(),
        cut: false,
    };
    let body = &b[end + 4..];
    let te = r
        .headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    let cl = r.header("content-length").map(str::to_string);
    if head || r.interim() || status == 204 || status == 304 {
        return Ok(Some((r, end + 4)));
    }
    if te.rsplit(',').next().is_some_and(|c| c.trim() == "chunked") {
        r.framing = Framing::Chunked;
        let mut i = 0;
        loop {
            let Some(eol) = body[i..].windows(2).position(|w| w == b"\r\n") else {
                return cut_or_wait(r, body, end, eof);
            };
            let line = String::from_utf8_lossy(&body[i..i + eol]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ())?;
            i += eol + 2;
            if size == 0 {
                loop {
                    let Some(eol) = body[i..].windows(2).position(|w| w == b"\r\n") else {
                        return cut_or_wait(r, body, end, eof);
                    };
                    let line = String::from_utf8_lossy(&body[i..i + eol]).into_owned();
                    i += eol + 2;
                    if line.is_empty() {
                        return Ok(Some((r, end + 4 + i)));
                    }
                    r.trailers.push(line);
                }
            }
            if body.len() < i + size + 2 {
                return cut_or_wait(r, body, end, eof);
            }
            r.body.extend_from_slice(&body[i..i + size]);
            i += size + 2;
        }
    }
    if let Some(cl) = cl {
        r.framing = Framing::Length;
        let n: usize = cl.trim().parse().map_err(|_| ())?;
        if body.len() >= n {
            r.body = body[..n].to_vec();
            return Ok(Some((r, end + 4 + n)));
        }
        if eof {
            r.body = body.to_vec();
            r.cut = true;
            return Ok(Some((r, b.len())));
        }
        return Ok(None);
    }
    r.framing = Framing::Close;
    if eof {
        r.body = body.to_vec();
        return Ok(Some((r, b.len())));
    }
    Ok(None)
}

fn cut_or_wait(
    mut r: Resp,
    body: &[u8],
    end: usize,
    eof: bool,
) -> Result<Option<(Resp, usize)>, ()> {
    if !eof {
        return Ok(None);
    }
    r.cut = true;
    r.body = body.to_vec();
    Ok(Some((r, end + 4 + body.len())))
}
