//! The scriptable raw backend of the differential test, and its own strict
//! HTTP/1.1 request framing (written from RFC 9112, sharing no code with
//! tether's parser, so that it is an independent judge of what tether sent).
//!
//! Requests are answered in the order they arrive, whatever connection they
//! come on, each by the next [`Step`] of the current script (the default
//! answer, [`ok`]`("ok")`, once the script is used up). Every byte received
//! is kept per connection with the boundaries of the requests the backend's
//! parser framed in it, so a test sees what reached the backend byte for
//! byte, how it was framed, and any bytes it could not frame.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One thing the backend does for a request.
#[derive(Debug, Clone)]
pub enum Op {
    /// Write these bytes.
    W(Vec<u8>),
    /// Wait this many milliseconds.
    Pause(u64),
    /// Read the request body now (by default it is read before the first op).
    Body,
    /// Do not read the request body at all (an early answer).
    NoBody,
    /// Close the connection (FIN).
    Close,
    /// Reset the connection (RST).
    Reset,
    /// Say nothing until the next case.
    Hang,
}

/// The backend's handling of one request.
pub type Step = Vec<Op>;

/// A complete `200 OK` answer from the backend with `body`, marked
/// `X-Backend: 1` (answers without the mark are the proxy's own).
pub fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nX-Backend: 1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What one backend connection received.
#[derive(Debug, Clone, Default)]
pub struct ConnRec {
    pub bytes: Vec<u8>,
    /// End offsets of the requests framed in `bytes`.
    pub ends: Vec<usize>,
    /// Why the backend's parser gave up on the bytes after the last end.
    pub error: Option<String>,
}

/// One request as the backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    /// The connection it came on, numbered by first request in the case.
    pub conn: usize,
    pub bytes: Vec<u8>,
    pub kind: GotKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GotKind {
    /// A whole request, framed by the backend's parser.
    Complete,
    /// The start of a request that never completed.
    Partial,
    /// Bytes the backend's parser refused, and why.
    Unframed(String),
}

#[derive(Default)]
struct State {
    gen: u64,
    script: VecDeque<Step>,
    conns: Vec<ConnRec>,
    /// Connection tasks still running.
    live: usize,
}

pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    gen: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (gen, _) = watch::channel(0u64);
        let st = state.clone();
        let gen_tx = gen.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let rx = gen_tx.subscribe();
                let st = st.clone();
                let (g, idx) = {
                    let mut s = st.lock().unwrap();
                    s.conns.push(ConnRec::default());
                    s.live += 1;
                    (s.gen, s.conns.len() - 1)
                };
                tokio::spawn(async move {
                    serve_conn(s, st.clone(), rx, g, idx).await;
                    st.lock().unwrap().live -= 1;
                });
            }
        });
        Backend {
            addr,
            state,
            gen,
            task,
        }
    }

    /// Start a new case: every open connection is closed (and waited for),
    /// the records are cleared, `script` answers the next requests.
    pub async fn reset(&self, script: Vec<Step>) {
        {
            let mut s = self.state.lock().unwrap();
            s.gen += 1;
            s.script = script.into();
            s.conns.clear();
            let g = s.gen;
            self.gen.send_replace(g);
        }
        for _ in 0..200 {
            if self.state.lock().unwrap().live == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Let the proxy's side see the FINs of its idle connections.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    /// What reached the backend in this case, request by request.
    pub fn got(&self) -> Vec<Got> {
        let s = self.state.lock().unwrap();
        let mut out = Vec::new();
        for (conn, rec) in s.conns.iter().filter(|r| !r.bytes.is_empty()).enumerate() {
            let mut start = 0;
            for &end in &rec.ends {
                out.push(Got {
                    conn,
                    bytes: rec.bytes[start..end].to_vec(),
                    kind: GotKind::Complete,
                });
                start = end;
            }
            if start < rec.bytes.len() {
                out.push(Got {
                    conn,
                    bytes: rec.bytes[start..].to_vec(),
                    kind: match &rec.error {
                        Some(e) => GotKind::Unframed(e.clone()),
                        None => GotKind::Partial,
                    },
                });
            }
        }
        out
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
        self.gen.send_modify(|g| *g += 1);
    }
}

/// Where a connection task records what it gets.
struct Rec {
    st: Arc<Mutex<State>>,
    gen: u64,
    idx: usize,
}

impl Rec {
    fn save(&self, buf: &[u8], end: Option<usize>, err: Option<String>) {
        let mut s = self.st.lock().unwrap();
        if s.gen != self.gen {
            return;
        }
        let rec = &mut s.conns[self.idx];
        rec.bytes = buf.to_vec();
        if let Some(e) = end {
            rec.ends.push(e);
        }
        if err.is_some() {
            rec.error = err;
        }
    }
}

/// Read the body framed by `framing` after the head at `buf[start..start + head_len]`:
/// the request's end, or `None` when the connection ended (or the parser refused).
async fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    rx: &mut watch::Receiver<u64>,
    rec: &Rec,
    framing: &BFraming,
    body_at: usize,
) -> Option<usize> {
    loop {
        match body_len(framing, &buf[body_at..]) {
            Ok(Some(n)) => {
                rec.save(buf, Some(body_at + n), None);
                return Some(body_at + n);
            }
            Ok(None) => {}
            Err(e) => {
                rec.save(buf, None, Some(e));
                return None;
            }
        }
        if !read_more(s, buf, rx, rec.gen).await {
            return None;
        }
        rec.save(buf, None, None);
    }
}

/// One connection: frame requests, answer each by its step.
async fn serve_conn(
    mut s: TcpStream,
    st: Arc<Mutex<State>>,
    mut rx: watch::Receiver<u64>,
    gen: u64,
    idx: usize,
) {
    let rec = Rec {
        st: st.clone(),
        gen,
        idx,
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0;
    loop {
        // The head.
        let (head_len, framing) = loop {
            match parse_head(&buf[start..]) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    rec.save(&buf, None, Some(e));
                    return;
                }
            }
            if !read_more(&mut s, &mut buf, &mut rx, gen).await {
                return;
            }
            rec.save(&buf, None, None);
        };
        let step = {
            let mut g = st.lock().unwrap();
            if g.gen != gen {
                return;
            }
            g.script
                .pop_front()
                .unwrap_or_else(|| vec![Op::W(ok("ok"))])
        };
        let explicit = step.iter().any(|o| matches!(o, Op::Body | Op::NoBody));
        let mut body_done = false;
        if !explicit {
            match read_body(&mut s, &mut buf, &mut rx, &rec, &framing, start + head_len).await {
                Some(end) => start = end,
                None => return,
            }
            body_done = true;
        }
        for op in step {
            match op {
                Op::W(bytes) => {
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Op::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Op::Body if !body_done => {
                    match read_body(&mut s, &mut buf, &mut rx, &rec, &framing, start + head_len)
                        .await
                    {
                        Some(end) => start = end,
                        None => return,
                    }
                    body_done = true;
                }
                Op::NoBody if !body_done => {
                    start += head_len;
                    rec.save(&buf, Some(start), None);
                    body_done = true;
                }
                Op::Body | Op::NoBody => {}
                Op::Close => {
                    let _ = s.shutdown().await;
                    return;
                }
                Op::Reset => {
                    let _ = s.set_zero_linger();
                    return;
                }
                Op::Hang => {
                    while *rx.borrow() == gen {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// Read more bytes; false when the connection ended or the case moved on.
async fn read_more(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    rx: &mut watch::Receiver<u64>,
    gen: u64,
) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if *rx.borrow() != gen {
            return false;
        }
        tokio::select! {
            r = s.read(&mut chunk) => {
                return match r {
                    Ok(n) if n > 0 => {
                        buf.extend_from_slice(&chunk[..n]);
                        true
                    }
                    _ => false,
                };
            }
            c = rx.changed() => if c.is_err() { return false },
        }
    }
}

/// How a request body is delimited, as the backend reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BFraming {
    None,
    Length(usize),
    Chunked,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(s, |e| e + 1);
    &v[s..e]
}

/// A strict request head at the start of `b`: `Ok(None)` incomplete.
/// Returns the head's length and the body's framing.
pub fn parse_head(b: &[u8]) -> Result<Option<(usize, BFraming)>, String> {
    let end = match b.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => p + 4,
        None => {
            if let Some(i) = bare_lf(b) {
                return Err(format!("bare LF at {i}"));
            }
            if b.len() > 1 << 20 {
                return Err("head too large".into());
            }
            return Ok(None);
        }
    };
    let head = &b[..end - 4];
    if let Some(i) = bare_lf(head) {
        return Err(format!("bare LF at {i}"));
    }
    // No bare LF: every line but the last ends in CR before its LF.
    let all: Vec<&[u8]> = head.split(|&c| c == b'\n').collect();
    let lines_fixed: Vec<&[u8]> = all
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 < all.len() {
                &l[..l.len() - 1]
            } else {
                *l
            }
        })
        .collect();
    let line = lines_fixed[0];
    if line.contains(&b'\r') {
        return Err("CR in the request line".into());
    }
    let parts: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
    if parts.len() != 3 {
        return Err(format!("request line {:?}", String::from_utf8_lossy(line)));
    }
    if parts[0].is_empty() || !parts[0].iter().all(|&c| is_tchar(c)) {
        return Err("method".into());
    }
    if parts[1].is_empty() || !parts[1].iter().all(|&c| c > 0x20 && c != 0x7f) {
        return Err("target".into());
    }
    let minor = match parts[2] {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        _ => return Err("version".into()),
    };
    let (mut cl, mut te, mut hosts, mut te_last) = (0, 0, 0, Vec::new());
    let mut len = None;
    for l in &lines_fixed[1..] {
        if l.contains(&b'\r') {
            return Err("CR inside a header line".into());
        }
        if l.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            return Err("obs-fold".into());
        }
        let colon = l.iter().position(|&c| c == b':').ok_or("no colon")?;
        let (name, value) = (&l[..colon], trim_ows(&l[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            return Err(format!("header name {:?}", String::from_utf8_lossy(name)));
        }
        if !value
            .iter()
            .all(|&c| c == b'\t' || c == b' ' || (0x21..0x7f).contains(&c) || c >= 0x80)
        {
            return Err("control character in a header value".into());
        }
        let name = name.to_ascii_lowercase();
        match &name[..] {
            b"content-length" => {
                cl += 1;
                if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                    return Err("Content-Length value".into());
                }
                len = Some(
                    std::str::from_utf8(value)
                        .unwrap()
                        .parse::<usize>()
                        .unwrap(),
                );
            }
            b"transfer-encoding" => {
                te += 1;
                for c in value.split(|&c| c == b',') {
                    let c = trim_ows(c);
                    if !c.is_empty() {
                        te_last = c.to_ascii_lowercase();
                    }
                }
            }
            b"host" => hosts += 1,
            _ => {}
        }
    }
    if minor == 1 && hosts != 1 || hosts > 1 {
        return Err(format!("{hosts} Host lines"));
    }
    let framing = match (cl, te) {
        (0, 0) => BFraming::None,
        (1, 0) => BFraming::Length(len.unwrap()),
        (_, 0) => return Err("several Content-Length".into()),
        (0, _) if minor == 0 => return Err("Transfer-Encoding in HTTP/1.0".into()),
        (0, _) if te_last == b"chunked" => BFraming::Chunked,
        (0, _) => return Err("Transfer-Encoding without chunked last".into()),
        _ => return Err("Content-Length and Transfer-Encoding".into()),
    };
    Ok(Some((end, framing)))
}

fn bare_lf(b: &[u8]) -> Option<usize> {
    (0..b.len()).find(|&i| b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r'))
}

/// The body's length at the start of `b`, `Ok(None)`: incomplete.
pub fn body_len(f: &BFraming, b: &[u8]) -> Result<Option<usize>, String> {
    match f {
        BFraming::None => Ok(Some(0)),
        BFraming::Length(n) => Ok((b.len() >= *n).then_some(*n)),
        BFraming::Chunked => chunked_len(b),
    }
}

/// A strict chunked body (sizes of at most 16 hex digits, extensions up to
/// CRLF, trailer lines `name: value`).
fn chunked_len(b: &[u8]) -> Result<Option<usize>, String> {
    let mut i = 0;
    loop {
        let Some(eol) = b[i..].windows(2).position(|w| w == b"\r\n") else {
            if b[i..].contains(&b'\n') {
                return Err("bare LF in a chunk-size line".into());
            }
            return if b.len() - i > 8192 {
                Err("chunk-size line too long".into())
            } else {
                Ok(None)
            };
        };
        let line = &b[i..i + eol];
        let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return Err("chunk size".into());
        }
        let rest = &line[digits..];
        if !(rest.is_empty() || rest[0] == b';') || rest.iter().any(|&c| c == b'\n' || c == 0) {
            return Err("chunk extension".into());
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16)
            .map_err(|e| e.to_string())? as usize;
        i += eol + 2;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let Some(eol) = b[i..].windows(2).position(|w| w == b"\r\n") else {
                    if b[i..].contains(&b'\n') {
                        return Err("bare LF in the trailers".into());
                    }
                    return Ok(None);
                };
                let line = &b[i..i + eol];
                i += eol + 2;
                if line.is_empty() {
                    return Ok(Some(i));
                }
                let colon = line.iter().position(|&c| c == b':').ok_or("trailer")?;
                if colon == 0 || !line[..colon].iter().all(|&c| is_tchar(c)) {
                    return Err("trailer name".into());
                }
            }
        }
        if b.len() < i + size + 2 {
            return Ok(None);
        }
        if &b[i + size..i + size + 2] != b"\r\n" {
            return Err("no CRLF after chunk data".into());
        }
        i += size + 2;
    }
}
