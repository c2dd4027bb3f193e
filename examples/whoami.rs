//! `whoami`: the demo backend for tether, and the backend its integration tests run.
//!
//! ```text
//! cargo run --example whoami -- --id app-1 --listen 127.0.0.1:9001
//! ```
//!
//! A small keepalive HTTP/1.1 + WebSocket server on tokio that answers every request
//! with who it is, so a client (or a test) can see which backend a sticky proxy
//! picked and what the proxy forwarded:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /healthz` | 200 `ok` (text/plain); another status after `Stats::set_health_status` |
//! | `/reset` | reads the request (and its body), then closes the connection without answering |
//! | `/hang` | reads the request, never answers; the connection stays open until the peer closes it |
//! | `/status/NNN` | status NNN (200..=599) with the JSON body below (none for 204/304) |
//! | `/set-cookie` | the JSON body plus `Set-Cookie: app=1` (a backend cookie the proxy must keep) |
//! | `/delay/MS` | the JSON body after MS milliseconds (slow requests for drain/shutdown tests) |
//! | `Upgrade: websocket` | the WebSocket handshake, then every message echoed: text as `<id>: <text>`, binary as is |
//! | anything else | 200 JSON `{"id","method","path","headers","body_bytes"}` |
//!
//! Every answer except `/healthz` carries `X-Backend-Id: <id>`. `path` is the request
//! target as received (path and query); `headers` maps lower-cased names to values, the
//! values of a repeated header joined with `", "`; `body_bytes` is the size of the request
//! body, which is read (Content-Length or chunked) and discarded.
//!
//! The same file is compiled as a module of the integration tests
//! (`#[path = "../../examples/whoami.rs"] mod whoami;` in `tests/common/mod.rs`), so the
//! server lives in [`serve`] / [`serve_until`] / [`start`] and `main` only parses arguments.
//! A test binary uses only part of it, hence the module-wide `dead_code` allowance.

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest request head (request line + headers) accepted; bigger ones get 431.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 8 * 1024;
/// Read granularity: big enough that a request body costs few syscalls.
const READ_CHUNK: usize = 16 * 1024;

/// Counters a test can read while the server runs (all monotonic except `open`).
#[derive(Debug, Default)]
pub struct Stats {
    connections: AtomicU64,
    open: AtomicU64,
    requests: AtomicU64,
    health_checks: AtomicU64,
    /// Status `/healthz` answers (0 = the default 200); tests flip it to fail checks.
    health_status: std::sync::atomic::AtomicU16,
    websockets: AtomicU64,
    ws_messages: AtomicU64,
}

impl Stats {
    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// TCP connections open right now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    /// Requests read, `/healthz` excluded (so health checks don't disturb counts of
    /// proxied traffic), WebSocket handshakes included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Make `/healthz` answer `status` from now on (e.g. 500 to fail health checks).
    pub fn set_health_status(&self, status: u16) {
        self.health_status.store(status, Ordering::Relaxed);
    }

    /// `GET /healthz` requests answered.
    pub fn health_checks(&self) -> u64 {
        self.health_checks.load(Ordering::Relaxed)
    }
    /// WebSocket handshakes completed.
    pub fn websockets(&self) -> u64 {
        self.websockets.load(Ordering::Relaxed)
    }
    /// WebSocket text/binary messages echoed.
    pub fn ws_messages(&self) -> u64 {
        self.ws_messages.load(Ordering::Relaxed)
    }
}

/// Decrements `Stats::open` however a connection task ends (including abort).
struct OpenGuard(Arc<Stats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve `listener` as backend `id` until the future is dropped (or its task aborted).
/// Dropping it closes the listener and aborts every connection it accepted.
pub async fn serve(listener: TcpListener, id: String) {
    serve_until(
        listener,
        id,
        Arc::new(Stats::default()),
        std::future::pending(),
    )
    .await
}

/// Like [`serve`], counting into `stats`, and returning once `stop` completes — after the
/// listener is closed and every accepted connection has been closed, so a test that awaits
/// this knows the backend is really gone (connection refused, sockets reset).
pub async fn serve_until(
    listener: TcpListener,
    id: String,
    stats: Arc<Stats>,
    stop: impl Future<Output = ()>,
) {
    let id: Arc<str> = id.into();
    // The JoinSet owns every connection task: dropping `serve_until` drops it, which aborts them.
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    stats.open.fetch_add(1, Ordering::Relaxed);
                    let guard = OpenGuard(stats.clone());
                    let (id, stats) = (id.clone(), stats.clone());
                    conns.spawn(async move {
                        let _guard = guard;
                        // Any I/O or protocol error just ends this connection.
                        let _ = handle_connection(stream, id, stats).await;
                    });
                }
                // Out of fds or an aborted handshake: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set doesn't grow with every one ever served.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// A whoami server running on its own task; see [`start`].
pub struct Running {
    pub addr: SocketAddr,
    pub id: String,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, close every connection, and wait until that is done.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Without an explicit shutdown, still don't leak the server past its handle.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Bind with a deep accept queue: a failover sends thousands of clients to
/// the surviving backends at once, and a SYN dropped on a full queue costs its
/// client a 1 s retransmit (tokio's `bind` asks for 1024).
pub async fn bind_deep(listen: &str) -> io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| io::Error::other(format!("{listen}: no address")))?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(8192)
}

/// Bind `listen` (e.g. `"127.0.0.1:0"` for a free port) and serve on a spawned task.
/// Needs a tokio runtime. The server stops on [`Running::shutdown`] or when dropped.
pub async fn start(id: &str, listen: &str) -> io::Result<Running> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_until(
        listener,
        id.to_string(),
        stats.clone(),
        async {
            // A dropped sender also stops the server.
            let _ = rx.await;
        },
    ));
    Ok(Running {
        addr,
        id: id.to_string(),
        stats,
        stop: Some(tx),
        task: Some(task),
    })
}

/// One parsed request head.
struct Request {
    method: String,
    /// The request target as received: path and query.
    target: String,
    /// `true` for HTTP/1.1, `false` for HTTP/1.0.
    http11: bool,
    /// Names lower-cased, in arrival order, repeats kept.
    headers: Vec<(String, String)>,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the comma-separated header `name` lists `token` (case-insensitive),
    /// across all its lines: `Connection: keep-alive, Upgrade` has token `upgrade`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.http11 {
            !self.has_token("connection", "close")
        } else {
            self.has_token("connection", "keep-alive")
        }
    }

    /// `{"lowercased-name": "v1, v2"}`, values joined in arrival order.
    fn headers_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, value) in &self.headers {
            match map.get_mut(name) {
                Some(serde_json::Value::String(joined)) => {
                    joined.push_str(", ");
                    joined.push_str(value);
                }
                _ => {
                    map.insert(name.clone(), serde_json::Value::String(value.clone()));
                }
            }
        }
        serde_json::Value::Object(map)
    }
}

/// How a request body is framed.
enum Body {
    None,
    Length(u64),
    Chunked,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Read more bytes into `buf`; a peer that closed mid-message is an error.
async fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    buf.reserve(READ_CHUNK);
    if stream.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Why a request head couldn't be read.
enum HeadError {
    /// The peer closed cleanly between requests.
    Closed,
    TooLarge,
    Io(io::Error),
}

/// Read one request head out of `buf`/`stream`, leaving what follows it in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Vec<u8>, HeadError> {
    loop {
        // RFC 9112 2.2: ignore empty lines before a request line.
        while buf.starts_with(b"\r\n") {
            buf.advance(2);
        }
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Ok(buf.split_to(end + 4).to_vec());
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        buf.reserve(READ_CHUNK);
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> io::Result<Request> {
    // Header values may carry obs-text; lossy is fine for an echo server.
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(invalid("bad request line")),
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(invalid("unsupported HTTP version")),
    };
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| invalid("bad header"))?;
        // No whitespace is allowed between a field name and its colon (RFC 9112 5.1).
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(invalid("bad header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        http11,
        headers,
    })
}

fn body_framing(req: &Request) -> io::Result<Body> {
    if req.header("transfer-encoding").is_some() {
        // Only chunked as the final coding frames a request body (RFC 9112 6.3).
        let last = req
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .flat_map(|(_, v)| v.split(','))
            .next_back()
            .map(str::trim)
            .unwrap_or("");
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(Body::Chunked)
        } else {
            Err(invalid("unsupported transfer-encoding"))
        };
    }
    let mut length = None;
    for (_, v) in req.headers.iter().filter(|(n, _)| n == "content-length") {
        let n: u64 = v.parse().map_err(|_| invalid("bad content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(invalid("conflicting content-length"));
        }
        length = Some(n);
    }
    Ok(match length {
        Some(0) | None => Body::None,
        Some(n) => Body::Length(n),
    })
}

/// Drop the next `n` body bytes, from `buf` first, then from the socket.
async fn discard(stream: &mut TcpStream, buf: &mut BytesMut, mut n: u64) -> io::Result<()> {
    loop {
        let take = n.min(buf.len() as u64) as usize;
        buf.advance(take);
        n -= take as u64;
        if n == 0 {
            return Ok(());
        }
        fill(stream, buf).await?;
    }
}

/// One CRLF- (or bare LF-) terminated line, without its terminator.
async fn read_line(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<String> {
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(end + 1);
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(String::from_utf8_lossy(line).into_owned());
        }
        if buf.len() > MAX_LINE {
            return Err(invalid("line too long"));
        }
        fill(stream, buf).await?;
    }
}

/// Read and drop a chunked body (chunk extensions and trailers included); returns its size.
async fn discard_chunked(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let line = read_line(stream, buf).await?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailer fields, up to the empty line that ends the message.
            while !read_line(stream, buf).await?.is_empty() {}
            return Ok(total);
        }
        discard(stream, buf, size).await?;
        total += size;
        if !read_line(stream, buf).await?.is_empty() {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

/// A complete response. `body: None` sends neither body nor Content-Length (204/304).
fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    keep_alive: bool,
    head_only: bool,
) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some((content_type, bytes)) = body {
        out.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut out = out.into_bytes();
    if let (Some((_, bytes)), false) = (body, head_only) {
        out.extend_from_slice(bytes);
    }
    out
}

/// A bare error answer that also ends the connection.
async fn fail(stream: &mut TcpStream, status: u16, msg: &str) -> io::Result<()> {
    let out = response(
        status,
        &[],
        Some(("text/plain", msg.as_bytes())),
        false,
        false,
    );
    stream.write_all(&out).await
}

async fn handle_connection(
    mut stream: TcpStream,
    id: Arc<str>,
    stats: Arc<Stats>,
) -> io::Result<()> {
    // Small request/response exchanges: don't let Nagle hold back the answer.
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let head = match read_head(&mut stream, &mut buf).await {
            Ok(head) => head,
            Err(HeadError::Closed) => return Ok(()),
            Err(HeadError::TooLarge) => {
                return fail(&mut stream, 431, "request header too large\n").await
            }
            Err(HeadError::Io(e)) => return Err(e),
        };
        let req = match parse_head(&head) {
            Ok(req) => req,
            Err(e) => return fail(&mut stream, 400, &format!("{e}\n")).await,
        };
        let framing = match body_framing(&req) {
            Ok(framing) => framing,
            Err(e) => return fail(&mut stream, 400, &format!("{e}\n")).await,
        };

        if req.has_token("upgrade", "websocket") {
            stats.requests.fetch_add(1, Ordering::Relaxed);
            return websocket(stream, buf, &req, &id, &stats).await;
        }

        // Clients that wait for a go-ahead before sending a body (curl does for big POSTs).
        let has_body = !matches!(framing, Body::None);
        if has_body
            && req.http11
            && req
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body_bytes = match framing {
            Body::None => 0,
            Body::Length(n) => {
                discard(&mut stream, &mut buf, n).await?;
                n
            }
            Body::Chunked => discard_chunked(&mut stream, &mut buf).await?,
        };

        let keep_alive = req.keep_alive();
        let head_only = req.method == "HEAD";
        let path = req.path();

        if path == "/healthz" {
            stats.health_checks.fetch_add(1, Ordering::Relaxed);
            let status = match stats.health_status.load(Ordering::Relaxed) {
                0 => 200,
                s => s,
            };
            let out = response(
                status,
                &[],
                Some(("text/plain", b"ok")),
                keep_alive,
                head_only,
            );
            stream.write_all(&out).await?;
        } else {
            stats.requests.fetch_add(1, Ordering::Relaxed);
            if path == "/reset" {
                // Read the request, then drop the connection without a word: a crash
                // between request and response, as a proxy's retry logic sees it.
                return Ok(());
            }
            if path == "/hang" {
                // Never answer, but notice when the peer gives up so the socket is freed.
                loop {
                    buf.clear();
                    fill(&mut stream, &mut buf).await?;
                }
            }
            let mut status = 200;
            let mut extra: Vec<(&str, &str)> = vec![("X-Backend-Id", &id)];
            if let Some(code) = path.strip_prefix("/status/") {
                match code.parse::<u16>() {
                    Ok(code) if (200..=599).contains(&code) => status = code,
                    _ => return fail(&mut stream, 400, "status must be 200..=599\n").await,
                }
            } else if path == "/set-cookie" {
                extra.push(("Set-Cookie", "app=1"));
            } else if let Some(ms) = path.strip_prefix("/delay/") {
                match ms.parse::<u64>() {
                    Ok(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    Err(_) => return fail(&mut stream, 400, "delay must be milliseconds\n").await,
                }
            }
            let json = echo_json(&id, &req, body_bytes);
            let body =
                (!matches!(status, 204 | 304)).then_some(("application/json", json.as_bytes()));
            let out = response(status, &extra, body, keep_alive, head_only);
            stream.write_all(&out).await?;
        }
        if !keep_alive {
            return stream.shutdown().await;
        }
    }
}

/// The echo body, keys in the documented order (serde_json's map would sort them).
fn echo_json(id: &str, req: &Request, body_bytes: u64) -> String {
    let s = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    format!(
        "{{\"id\":{},\"method\":{},\"path\":{},\"headers\":{},\"body_bytes\":{}}}",
        s(id),
        s(&req.method),
        s(&req.target),
        req.headers_json(),
        body_bytes
    )
}

/// Finish the WebSocket handshake by hand (the head is already read), then echo.
async fn websocket(
    mut stream: TcpStream,
    leftover: BytesMut,
    req: &Request,
    id: &str,
    stats: &Stats,
) -> io::Result<()> {
    let Some(key) = req.header("sec-websocket-key") else {
        return fail(&mut stream, 400, "missing Sec-WebSocket-Key\n").await;
    };
    let accept = derive_accept_key(key.as_bytes());
    let out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nX-Backend-Id: {id}\r\n\r\n"
    );
    stream.write_all(out.as_bytes()).await?;
    stats.websockets.fetch_add(1, Ordering::Relaxed);
    // A client may send its first frame right behind the handshake: hand those bytes over.
    let mut ws =
        WebSocketStream::from_partially_read(stream, leftover.to_vec(), Role::Server, None).await;
    // Ping/Pong/Close are answered by tungstenite itself; the stream ends after a close.
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(text) => Message::Text(format!("{id}: {text}")),
            Message::Binary(data) => Message::Binary(data),
            _ => continue,
        };
        stats.ws_messages.fetch_add(1, Ordering::Relaxed);
        if ws.send(reply).await.is_err() {
            break;
        }
    }
    Ok(())
}

fn usage() -> ! {
    eprintln!("usage: whoami [--id ID] [--listen ADDR:PORT]   (defaults: whoami, 127.0.0.1:9001)");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut id = "whoami".to_string();
    let mut listen = "127.0.0.1:9001".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--id" => id = args.next().unwrap_or_else(|| usage()),
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    let listener = match bind_deep(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("whoami: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    // The real address (the port may have been 0): tests read it from this line.
    match listener.local_addr() {
        Ok(addr) => println!("whoami {id} listening on {addr}"),
        Err(_) => println!("whoami {id} listening on {listen}"),
    }
    serve(listener, id).await
}
