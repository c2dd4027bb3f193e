//! Failover benchmark (issues 3 and 12): how long WebSocket clients of a frozen or
//! killed backend are without a connection, and whether any of them loses its session.
//!
//! ```text
//! cargo build --release --bin tether --example whoami
//! cargo bench --bench failover            # N=1000 clients, the victim frozen (SIGSTOP)
//! N=8000 cargo bench --bench failover     # 16,000 fds in tether: needs `ulimit -Hn` >= 16,500
//! N=8000 KILL=1 cargo bench --bench failover                 # the reconnect storm: SIGKILL
//! N=8000 KILL=1 STORE=redis cargo bench --bench failover     # ... with the Redis store
//! N=8000 KILL=1 PROXY=haproxy cargo bench --bench failover   # the same storm through HAProxy
//! ```
//!
//! `KILL=1` (issue 12's storm): the victim is SIGKILLed. Its connections end at once
//! (the kernel closes them), tether passes that on to the clients, and they all reconnect
//! at the same instant, before any health check has noticed; latencies are measured from
//! the kill. `STORE=redis` runs tether on a `redis-server` the bench starts. `PROXY=haproxy`
//! runs the storm through HAProxy 2.6 instead (`cookie TETHER insert`, `option
//! redispatch 1`: every retry goes to another server), the same health checks, `timeout tunnel 1h`) for its CPU per reconnect:
//! HAProxy's cookie names the server, so its re-dispatched clients get a new cookie and
//! that does not count as lost there.
//!
//! Everything runs on loopback with ephemeral ports: three `whoami` backends (separate
//! processes) and `tether` with http health checks every 250 ms (fall 2). N clients each
//! get a session (a `GET /` that sets the `TETHER` cookie) and hold a WebSocket with it.
//! Then the backend with the most sessions is frozen with SIGSTOP at T0 (its sockets stay
//! open, so only tether's health checks can notice). T_down, its mark-down, is the earlier
//! of the first `GET /api/pools` poll (every 10 ms) that shows it `down` and the arrival
//! of tether's `backend down` log line. Each affected client waits for its WebSocket to
//! end (tether closes it with 1012), reconnects at once with its cookie (`GET /`, then a
//! new WebSocket) and records when the echo comes back from another backend. Reported:
//! detection time (T_down - T0) and p50/p99/max of (echo - T_down).
//! A session is lost when tether sets a new cookie, when the GET and the WebSocket land on
//! different backends, when it is not back within 10 s, or (for unaffected clients) when
//! its WebSocket no longer echoes afterwards. Targets: p99 < 1 s, 0 lost. The exit code is
//! 0 whatever the figures are (a measurement); non-zero only if the run itself broke.
//!
//! Without `--bench` in its arguments (`cargo test --all-targets`) it does nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{stream, SinkExt, StreamExt};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Sessions opened at once while setting up (the reconnects after the freeze are not
/// throttled: a herd is what a real failover produces).
const OPEN_CONCURRENCY: usize = 64;
/// An affected session not back this long after the mark-down is lost.
const LOST_AFTER: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(10);
const HEALTH: &str =
    "{ kind: http, path: /healthz, interval: 250ms, timeout: 200ms, rise: 2, fall: 2 }";

/// A child process we started, SIGKILLed by its pid when dropped (on panic and Ctrl-C
/// too; SIGKILL also ends a SIGSTOPped process).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start `bin` with one of its output streams piped into a channel of lines (drained
/// by a thread for the process's whole life, so it never blocks on a full pipe).
fn spawn(mut cmd: Command, stderr: bool) -> Result<(Proc, mpsc::Receiver<String>)> {
    let (out, err) = if stderr {
        (Stdio::null(), Stdio::piped())
    } else {
        (Stdio::piped(), Stdio::inherit())
    };
    let mut child = cmd
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pipe: Box<dyn Read + Send> = match (child.stdout.take(), child.stderr.take()) {
        (Some(o), _) => Box::new(o),
        (_, Some(e)) => Box::new(e),
        _ => bail!("no pipe"),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok((Proc(child), rx))
}

/// The binary at `$var`, else `rel` in the target dir this bench runs from
/// (target/release/deps/failover-HASH).
fn binary(var: &str, rel: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    Ok(exe
        .parent()
        .and_then(|d| d.parent())
        .context("target dir")?
        .join(rel))
}

struct Tether {
    proc: Proc,
    web: SocketAddr,
    /// `None` for HAProxy (no admin API: no mark-down polling).
    admin: Option<SocketAddr>,
    /// When each `backend down` line of its log arrived, and the line.
    downs: Arc<Mutex<Vec<(Instant, String)>>>,
}

/// A free loopback port (bound and released: the children bind it next).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("free port")?;
    Ok(l.local_addr()?.port())
}

/// HAProxy in front of the same backends: sticky by an inserted cookie named after the
/// server, re-dispatched to another server when its own refuses, the same checks.
fn start_haproxy(dir: &std::path::Path, backends: &[(&str, Proc, SocketAddr)]) -> Result<Tether> {
    let port = free_port()?;
    let servers: String = backends
        .iter()
        .map(|(id, _, a)| format!("  server {id} {a} cookie {id}\n"))
        .collect();
    let cfg = format!(
        "global\n  maxconn 9900\ndefaults\n  mode http\n  option http-keep-alive\n  option redispatch 1\n  retries 3\n  \
         timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\
         frontend web\n  bind 127.0.0.1:{port}\n  default_backend app\n\
         backend app\n  balance roundrobin\n  cookie TETHER insert indirect nocache\n  option httpchk GET /healthz\n  \
         default-server check inter 250ms fall 2 rise 2\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).context("writing haproxy.cfg")?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-f").arg(&path).arg("-db");
    let (proc, _rx) = spawn(cmd, true)?;
    let web: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(web).is_err() {
        if Instant::now() > deadline {
            bail!("haproxy did not listen on {web}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its first round of checks: every server up before the sessions open.
    std::thread::sleep(Duration::from_millis(800));
    Ok(Tether {
        proc,
        web,
        admin: None,
        downs: Arc::new(Mutex::new(Vec::new())),
    })
}

/// A `redis-server` for `STORE=redis`, no persistence, on a free port.
fn start_redis(dir: &std::path::Path) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .args(["--appendonly", "no"])
    .arg("--dir")
    .arg(dir);
    let (proc, _rx) = spawn(cmd, false)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc, port))
}

fn start_tether(bin: &PathBuf, config: &std::path::Path) -> Result<Tether> {
    let mut cmd = Command::new(bin);
    let log = std::env::var("TETHER_LOG").unwrap_or("info".into());
    cmd.arg("-c").arg(config).env("RUST_LOG", log);
    let (proc, rx) = spawn(cmd, true)?;
    let (mut web, mut admin, mut early) = (None, None, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !early
        .last()
        .is_some_and(|l: &String| l.contains("tether ready"))
    {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            bail!("tether did not get ready; its log:\n{}", early.join("\n"));
        };
        // `... listening listener="web" addr=127.0.0.1:PORT`
        let field = |k: &str| line.split(k).nth(1)?.split_whitespace().next();
        let name = field("listener=").map(|n| n.trim_matches('"'));
        match (name, field("addr=").and_then(|a| a.parse().ok())) {
            (Some("web"), Some(a)) if line.contains("listening") => web = Some(a),
            (Some("admin"), Some(a)) if line.contains("listening") => admin = Some(a),
            _ => {}
        }
        early.push(line);
    }
    let downs = Arc::new(Mutex::new(Vec::new()));
    let d = downs.clone();
    std::thread::spawn(move || {
        for line in rx.iter().filter(|l| l.contains("backend down")) {
            if let Ok(mut d) = d.lock() {
                d.push((Instant::now(), line));
            }
        }
    });
    let web = web.context("tether logged no address for listener web")?;
    let admin = Some(admin.context("tether logged no admin address")?);
    Ok(Tether {
        proc,
        web,
        admin,
        downs,
    })
}

struct Resp {
    status: u16,
    tether_cookie: Option<String>,
    body: Vec<u8>,
}

/// A one-shot HTTP/1.1 GET (Connection: close); the body is read by Content-Length.
async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Result<Resp> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    let cookie = cookie
        .map(|c| format!("Cookie: TETHER={c}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{cookie}\r\n");
    s.write_all(req.as_bytes()).await.context("send request")?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let n = s.read_buf(&mut buf).await.context("read response")?;
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines.next().and_then(|l| l.split(' ').nth(1)?.parse().ok());
            let (mut len, mut tether_cookie) = (None, None);
            for (name, value) in lines.filter_map(|l| l.split_once(':')) {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("set-cookie") {
                    let v = value
                        .strip_prefix("TETHER=")
                        .and_then(|v| v.split(';').next());
                    tether_cookie = tether_cookie.or(v.map(str::to_string));
                }
            }
            if len.is_some_and(|len| buf.len() - (end + 4) >= len) || (n == 0 && len.is_none()) {
                let status = status.context("bad status line")?;
                return Ok(Resp {
                    status,
                    tether_cookie,
                    body: buf.split_off(end + 4),
                });
            }
        }
        if n == 0 {
            bail!("connection closed mid-response");
        }
    }
}

fn json_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(v["id"].as_str()?.to_string())
}

async fn ws_connect(addr: SocketAddr, cookie: &str) -> Result<Ws> {
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut()
        .insert("cookie", format!("TETHER={cookie}").parse()?);
    Ok(tokio_tungstenite::connect_async(req)
        .await
        .context("websocket")?
        .0)
}

/// Send "hi" and return the id of the backend that echoed it (`"<id>: hi"`).
async fn echo(ws: &mut Ws) -> Result<String> {
    ws.send(Message::text("hi")).await.context("send hi")?;
    loop {
        match timeout(Duration::from_secs(5), ws.next())
            .await
            .context("no echo within 5 s")?
        {
            Some(Ok(Message::Text(t))) => {
                return Ok(t
                    .strip_suffix(": hi")
                    .with_context(|| format!("odd echo {t:?}"))?
                    .to_string())
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => bail!("websocket ended instead of echoing: {other:?}"),
        }
    }
}

struct Session {
    cookie: String,
    owner: String,
    ws: Ws,
}

async fn open_session(web: SocketAddr) -> Result<Session> {
    let r = get(web, "/", None).await?;
    let cookie = r.tether_cookie.context("no TETHER cookie set")?;
    let owner = json_id(&r.body).with_context(|| format!("status {}: no backend id", r.status))?;
    let mut ws = ws_connect(web, &cookie).await?;
    let id = echo(&mut ws).await?;
    if id != owner {
        bail!("session on {owner} but its WebSocket went to {id}");
    }
    Ok(Session { cookie, owner, ws })
}

enum Outcome {
    Back {
        closed: Instant,
        at: Instant,
        code: Option<u16>,
        retries: u32,
    },
    Lost(String),
}

/// An affected client: wait for its WebSocket to end, then reconnect with the cookie.
/// `keep_cookie`: a new cookie means the session was replaced (tether); HAProxy's
/// names the server, so it changes with every move.
async fn fail_over(
    web: SocketAddr,
    mut s: Session,
    frozen: Arc<str>,
    keep_cookie: bool,
) -> Outcome {
    let code = loop {
        match s.ws.next().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    let (closed, mut retries) = (Instant::now(), 0);
    loop {
        let attempt = async {
            let r = get(web, "/", Some(&s.cookie)).await?;
            let cookie = match r.tether_cookie {
                Some(_) if keep_cookie => {
                    return Ok(Err("new cookie: session replaced".to_string()))
                }
                Some(c) => c,
                None => s.cookie.clone(),
            };
            let via_get = json_id(&r.body).with_context(|| format!("status {}", r.status))?;
            let via_ws = echo(&mut ws_connect(web, &cookie).await?).await?;
            Ok(if via_ws != via_get {
                Err(format!("split: GET on {via_get}, WebSocket on {via_ws}"))
            } else if *via_ws == *frozen {
                Err("still routed to the frozen backend".into())
            } else {
                Ok(Instant::now())
            })
        };
        match attempt.await {
            Ok(Ok(at)) => {
                return Outcome::Back {
                    closed,
                    at,
                    code,
                    retries,
                }
            }
            Ok(Err(why)) => return Outcome::Lost(why),
            // What a real client retries (refused, 503, ...); a moved session is not retried.
            Err::<_, anyhow::Error>(_) => retries += 1,
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `/api/pools` until `id` is `down`: the send instant of the first poll that saw it
/// (the mark-down happened between the previous poll and that one's answer).
async fn wait_down(admin: SocketAddr, id: &str, limit: Instant) -> Option<Instant> {
    while Instant::now() < limit {
        let sent = Instant::now();
        if let Ok(Ok(r)) = timeout(Duration::from_secs(1), get(admin, "/api/pools", None)).await {
            if backend_field(&r.body, id, "state").as_deref() == Some("down") {
                return Some(sent);
            }
        }
        sleep_until((sent + POLL_EVERY).into()).await;
    }
    None
}

fn backend_field(body: &[u8], id: &str, field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let b = v["pools"][0]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["id"] == id)?;
    Some(b[field].to_string().trim_matches('"').to_string())
}

/// CPU time (user + system) used so far in ms by process `pid` (stat(5) fields 14-15),
/// or with `None` by the whole box (/proc/stat: user, nice, system, steal; not irq and
/// softirq, where the kernel accounts much of loopback TCP without charging a process);
/// both count USER_HZ = 100 ticks per second on Linux.
fn cpu_ms(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/stat".into(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let ticks = |s: &str, i: &[usize]| -> f64 {
        let f: Vec<f64> = s
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        i.iter()
            .map(|i| f.get(*i).copied().unwrap_or(0.0))
            .sum::<f64>()
            * 10.0
    };
    match pid {
        Some(_) => ticks(stat.rsplit_once(')').map_or("", |(_, r)| r), &[11, 12]),
        None => ticks(stat.lines().next().unwrap_or(""), &[1, 2, 3, 8]),
    }
}

/// The kernel's count of SYNs dropped on full accept queues and of SYNs sent again, from
/// /proc/net/netstat (whole network namespace: other programs' traffic counts too).
/// A drop costs its client a 1 s retransmit, which would show up in the tail.
fn syn_trouble() -> [u64; 2] {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else {
        return [0, 0];
    };
    let get = |key: &str| {
        let i = names.split_whitespace().position(|n| n == key);
        i.and_then(|i| values.split_whitespace().nth(i)?.parse().ok())
    };
    [
        get("ListenOverflows").unwrap_or(0),
        get("TCPSynRetrans").unwrap_or(0),
    ]
}

/// CPU used between two `cpu_ms` snapshots of [proxy, b1, b2, b3, (redis,) this
/// client, the box].
fn cpu_line(
    proxy: &str,
    what: &str,
    wall: Duration,
    before: &[f64],
    after: &[f64],
    per: usize,
) -> String {
    let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let wall = wall.as_secs_f64() * 1e3;
    let (client, total) = (d[d.len() - 2], d[d.len() - 1]);
    let redis = match d.len() {
        7 => format!(", redis {:.0}", d[4]),
        _ => String::new(),
    };
    // Whatever else ran on the box (another build, ...) took CPU from this run.
    let others = (total - d[..d.len() - 1].iter().sum::<f64>()).max(0.0);
    let busy = if others > (0.1 * wall).max(30.0) {
        " BUSY BOX: rerun on a quiet one"
    } else {
        ""
    };
    format!(
        "CPU ms, {what} ({wall:.0} ms wall): {proxy} {:.0} ({:.0} us per session), backends {:.0}{redis}, client {client:.0}, other processes {others:.0}{busy}",
        d[0],
        d[0] * 1e3 / per.max(1) as f64,
        d[1..4].iter().sum::<f64>(),
    )
}

/// Milliseconds from `base` to `at`, negative when `at` came first (T_down is observed a
/// little after the fact, so a close can appear to precede it).
fn since(at: Instant, base: Instant) -> f64 {
    match at.checked_duration_since(base) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(base - at).as_secs_f64() * 1e3,
    }
}

/// Nearest-rank percentiles of `v`, sorted in place.
fn summary(v: &mut [f64]) -> (String, f64) {
    if v.is_empty() {
        return ("none".into(), f64::INFINITY);
    }
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let text = format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (min {:.0})",
        pct(50.0),
        pct(99.0),
        v[v.len() - 1],
        v[0]
    );
    (text, pct(99.0))
}

async fn run() -> Result<()> {
    let n: usize = match std::env::var("N") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("N={v:?} is not a number"))?,
        Err(_) => 1000,
    };
    // Our soft fd limit up to the hard one before spawning anything: the children inherit it.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    // tether holds two fds per WebSocket (client and backend side), plus slack.
    if hard < 2 * n as u64 + 500 {
        bail!("N={n} needs about {} open files in tether but `ulimit -Hn` is {hard}: lower N or raise the hard limit", 2 * n + 500);
    }
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let kill_it = !matches!(env("KILL").as_str(), "" | "0");
    let redis = env("STORE") == "redis";
    let haproxy = env("PROXY") == "haproxy";
    if haproxy && !kill_it {
        bail!("PROXY=haproxy measures the storm: set KILL=1 too");
    }
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if somaxconn < n as u64 / 2 {
        println!("note: net.core.somaxconn is {somaxconn}: accept queues are capped there, and a reconnect storm of ~{} clients may overflow them (sysctl -w net.core.somaxconn=16384)", n / 3);
    }
    let (tether_bin, whoami_bin) = (
        binary("TETHER_BIN", "tether")?,
        binary("WHOAMI_BIN", "examples/whoami")?,
    );
    for b in [&tether_bin, &whoami_bin] {
        if !b.is_file() {
            bail!("{} not found; build it first:\n  cargo build --release --bin tether --example whoami\n(or set TETHER_BIN / WHOAMI_BIN)", b.display());
        }
    }

    let mut backends = Vec::new();
    for id in ["b1", "b2", "b3"] {
        let mut cmd = Command::new(&whoami_bin);
        cmd.args(["--id", id, "--listen", "127.0.0.1:0"]);
        let (proc, rx) = spawn(cmd, false)?;
        // `whoami bN listening on 127.0.0.1:PORT`
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| format!("whoami {id} did not start"))?;
        let addr: SocketAddr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("whoami {id}: {line:?}"))?;
        backends.push((id, proc, addr));
    }
    let list: String = backends
        .iter()
        .map(|(id, _, a)| format!("      - {{ id: {id}, addr: \"{a}\" }}\n"))
        .collect();
    let dir = tempfile::tempdir().context("temp dir")?;
    let redis = if redis {
        Some(start_redis(dir.path())?)
    } else {
        None
    };
    let store = match &redis {
        Some((_, port)) => {
            format!("{{ kind: redis, redis: {{ url: \"redis://127.0.0.1:{port}/0\" }} }}")
        }
        None => "{ kind: embedded }".into(),
    };
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\nserver: {{ max_connections: 50000 }}\nstore: {store}\n\
         pools:\n  app:\n    on_backend_down: migrate\n    health: {HEALTH}\n    backends:\n{list}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    max_connections: 20000\n    \
         backlog: 16384\n    timeouts: {{ idle: 1h }}\n    affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n"
    );
    std::fs::write(dir.path().join("tether.yaml"), yaml).context("writing tether.yaml")?;
    let t = if haproxy {
        start_haproxy(dir.path(), &backends)?
    } else {
        start_tether(&tether_bin, &dir.path().join("tether.yaml"))?
    };
    let web = t.web;
    let proxy_name = if haproxy { "haproxy" } else { "tether" };

    // CPU of the proxy, the backends (and Redis) and this client: is a tail figure bound by the box?
    let pids: Vec<u32> = std::iter::once(t.proc.0.id())
        .chain(backends.iter().map(|(_, p, _)| p.0.id()))
        .chain(redis.iter().map(|(p, _)| p.0.id()))
        .chain([std::process::id()])
        .collect();
    let cpu_now = || {
        pids.iter()
            .map(|p| Some(*p))
            .chain([None])
            .map(cpu_ms)
            .collect::<Vec<_>>()
    };
    let (opened, cpu_open, syn_before) = (Instant::now(), cpu_now(), syn_trouble());
    let all = stream::iter(0..n)
        .map(|_| open_session(web))
        .buffer_unordered(OPEN_CONCURRENCY);
    let sessions: Vec<Result<Session>> = timeout(Duration::from_secs(60), all.collect())
        .await
        .context("opening the sessions took over 60 s")?;
    let sessions: Vec<Session> = sessions
        .into_iter()
        .collect::<Result<_>>()
        .context("opening a session")?;
    let (open_time, cpu_opened) = (opened.elapsed(), cpu_now());
    let mut per_backend: BTreeMap<&str, usize> = backends.iter().map(|(id, ..)| (*id, 0)).collect();
    for s in &sessions {
        if let Some(c) = per_backend.get_mut(s.owner.as_str()) {
            *c += 1;
        }
    }
    let (frozen, _) = per_backend
        .iter()
        .max_by_key(|(_, c)| **c)
        .context("no backend")?;
    let frozen: Arc<str> = (*frozen).into();
    let pid = backends
        .iter()
        .find(|(id, ..)| **id == *frozen)
        .map(|(_, p, _)| p.0.id())
        .context("frozen pid")?;

    let signal = if kill_it {
        Signal::SIGKILL
    } else {
        Signal::SIGSTOP
    };
    let cpu_killed = cpu_now();
    kill(Pid::from_raw(pid as i32), signal).context("signalling the victim")?;
    let t0 = Instant::now();
    let (mut affected, mut others) = (JoinSet::new(), Vec::new());
    for s in sessions {
        if *s.owner == *frozen {
            // Bounded: a session not back within 10 s of the mark-down is lost anyway.
            affected.spawn(timeout_at(
                (t0 + Duration::from_secs(15)).into(),
                fail_over(web, s, frozen.clone(), !haproxy),
            ));
        } else {
            others.push(s);
        }
    }
    let t_down = match t.admin {
        Some(admin) => wait_down(admin, &frozen, t0 + Duration::from_secs(10)).await,
        None => None,
    };
    let cpu_down = cpu_now();
    let mut outcomes = Vec::new();
    while let Some(r) = affected.join_next().await {
        outcomes.push(match r {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => Outcome::Lost("not back within 15 s of the freeze".into()),
            Err(e) => Outcome::Lost(format!("client task failed: {e}")),
        });
    }
    let (moved_at, cpu_moved, syn_after) = (Instant::now(), cpu_now(), syn_trouble());
    // Unaffected clients must still be served by their own backend.
    let mut checks = JoinSet::new();
    for mut s in others {
        checks.spawn(async move { matches!(echo(&mut s.ws).await, Ok(id) if id == s.owner) });
    }
    let mut others_lost = 0;
    while let Some(ok) = checks.join_next().await {
        others_lost += usize::from(!matches!(ok, Ok(true)));
    }
    let after = match t.admin {
        Some(admin) => timeout(Duration::from_secs(2), get(admin, "/api/pools", None))
            .await
            .ok(),
        None => None,
    };

    println!(
        "failover: N={n}, {proxy_name}, {} store, victim {}, sessions opened in {:.1} s",
        if redis.is_some() { "redis" } else { "embedded" },
        if kill_it {
            "killed (SIGKILL)"
        } else {
            "frozen (SIGSTOP)"
        },
        open_time.as_secs_f64()
    );
    let shares: Vec<String> = per_backend
        .iter()
        .map(|(id, c)| format!("{id}={c}"))
        .collect();
    println!(
        "sessions per backend: {}; froze {frozen} (pid {pid})",
        shares.join(" ")
    );
    let logged = t.downs.lock().ok().and_then(|d| {
        let tag = format!("backend={frozen}");
        d.iter().find(|(_, l)| l.contains(&tag)).map(|(at, _)| *at)
    });
    let t_down = match (t_down, kill_it) {
        (Some(t_down), _) => {
            println!(
                "detection ({} -> marked down): {:.0} ms by polling /api/pools, {} by tether's log line",
                if kill_it { "kill" } else { "freeze" },
                since(t_down, t0),
                logged.map_or("-".into(), |at| format!("{:.0} ms", since(at, t0)))
            );
            // The poll lags the mark-down by up to one poll plus the admin's answer; the log line
            // lags it by a pipe write. Measure from the earlier one (it can only lengthen latencies).
            logged.map_or(t_down, |at| at.min(t_down))
        }
        (None, false) => {
            println!(
                "{frozen} NOT marked down within 10 s: its {} sessions count as lost\ntargets: NOT met",
                outcomes.len()
            );
            return Ok(());
        }
        (None, true) => t0,
    };
    // The storm is timed from the kill: its clients do not wait for any check.
    let t_down = if kill_it { t0 } else { t_down };
    let base = if kill_it { "kill" } else { "mark-down" };
    let (mut back, mut closed, mut retries) = (Vec::new(), Vec::new(), 0);
    let (mut codes, mut lost) = (
        BTreeMap::<String, usize>::new(),
        BTreeMap::<String, usize>::new(),
    );
    for o in &outcomes {
        match o {
            Outcome::Back { at, .. } if since(*at, t_down) > LOST_AFTER.as_secs_f64() * 1e3 => {
                *lost.entry("not back within 10 s".into()).or_default() += 1
            }
            Outcome::Back {
                closed: c,
                at,
                code,
                retries: r,
            } => {
                back.push(since(*at, t_down));
                closed.push(since(*c, t_down));
                *codes
                    .entry(code.map_or("none".into(), |c| c.to_string()))
                    .or_default() += 1;
                retries += r;
            }
            Outcome::Lost(why) => *lost.entry(why.clone()).or_default() += 1,
        }
    }
    if others_lost > 0 {
        lost.insert("unaffected client no longer echoed".into(), others_lost);
    }
    println!(
        "affected: {} (close codes {codes:?}, reconnect retries {retries})",
        outcomes.len()
    );
    println!(
        "{base} -> WebSocket closed:         {}",
        summary(&mut closed).0
    );
    let (text, p99) = summary(&mut back);
    println!("{base} -> echo from the new owner:  {text}");
    let total_lost: usize = lost.values().sum();
    println!("lost sessions: {total_lost} {lost:?}");
    println!(
        "{}",
        cpu_line(
            proxy_name,
            "opening the sessions",
            open_time,
            &cpu_open,
            &cpu_opened,
            n
        )
    );
    let moving = moved_at.saturating_duration_since(t_down);
    let line = cpu_line(
        proxy_name,
        &format!("{base} to last reconnect"),
        moving,
        if kill_it { &cpu_killed } else { &cpu_down },
        &cpu_moved,
        back.len(),
    );
    println!("{line}");
    println!(
        "SYNs dropped on a full accept queue / SYNs retransmitted during the run: {} / {}",
        syn_after[0] - syn_before[0],
        syn_after[1] - syn_before[1]
    );
    if let Some(Ok(r)) = after {
        let now: Vec<String> = per_backend
            .keys()
            .map(|id| {
                format!(
                    "{id}={}",
                    backend_field(&r.body, id, "sessions").unwrap_or_default()
                )
            })
            .collect();
        println!("sessions in tether afterwards: {}", now.join(" "));
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "targets: p99 < 1 s: {}; 0 lost: {}",
        verdict(p99 < 1000.0),
        verdict(total_lost == 0)
    );
    Ok(())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("failover: skipped (run with cargo bench)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        // Leaving this block drops `run`, and with it every process guard.
        tokio::select! {
            r = run() => match r {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("failover: {e:#}");
                    1
                }
            },
            _ = tokio::signal::ctrl_c() => { eprintln!("failover: interrupted"); 130 }
            _ = term.recv() => { eprintln!("failover: terminated"); 143 }
        }
    });
    drop(rt);
    std::process::exit(code);
}
