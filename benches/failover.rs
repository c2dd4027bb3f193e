//! Failover benchmark (issue 3): how long WebSocket clients of a frozen backend are
//! without a connection, and whether any of them loses its session.
//!
//! ```text
//! cargo build --release --bin tether --example whoami
//! cargo bench --bench failover            # N=1000 clients
//! N=8000 cargo bench --bench failover     # 16,000 fds in tether: needs `ulimit -Hn` >= 16,500
//! ```
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
    admin: SocketAddr,
    /// When each `backend down` line of its log arrived, and the line.
    downs: Arc<Mutex<Vec<(Instant, String)>>>,
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
    let admin = admin.context("tether logged no admin address")?;
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

/// An affected client: wait for tether to end the WebSocket, then reconnect with the cookie.
async fn fail_over(web: SocketAddr, mut s: Session, frozen: Arc<str>) -> Outcome {
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
            if r.tether_cookie.is_some() {
                return Ok(Err("new cookie: session replaced".to_string()));
            }
            let via_get = json_id(&r.body).with_context(|| format!("status {}", r.status))?;
            let via_ws = echo(&mut ws_connect(web, &s.cookie).await?).await?;
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

/// CPU used between two `cpu_ms` snapshots of [tether, b1, b2, b3, this client, the box].
fn cpu_line(what: &str, wall: Duration, before: &[f64], after: &[f64], per: usize) -> String {
    let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let wall = wall.as_secs_f64() * 1e3;
    // Whatever else ran on the box (another build, ...) took CPU from this run.
    let others = (d[5] - d[..5].iter().sum::<f64>()).max(0.0);
    let busy = if others > (0.1 * wall).max(30.0) {
        " BUSY BOX: rerun on a quiet one"
    } else {
        ""
    };
    format!(
        "CPU ms, {what} ({wall:.0} ms wall): tether {:.0} ({:.0} us per session), backends {:.0}, client {:.0}, other processes {others:.0}{busy}",
        d[0],
        d[0] * 1e3 / per.max(1) as f64,
        d[1..4].iter().sum::<f64>(),
        d[4]
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
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\nserver: {{ max_connections: 50000 }}\nstore: {{ kind: embedded }}\n\
         pools:\n  app:\n    on_backend_down: migrate\n    health: {HEALTH}\n    backends:\n{list}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    max_connections: 20000\n    \
         timeouts: {{ idle: 1h }}\n    affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n"
    );
    let dir = tempfile::tempdir().context("temp dir")?;
    std::fs::write(dir.path().join("tether.yaml"), yaml).context("writing tether.yaml")?;
    let t = start_tether(&tether_bin, &dir.path().join("tether.yaml"))?;
    let web = t.web;

    // CPU of tether, the backends and this client: is a tail figure bound by the box?
    let pids: Vec<u32> = std::iter::once(t.proc.0.id())
        .chain(backends.iter().map(|(_, p, _)| p.0.id()))
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

    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).context("SIGSTOP")?;
    let t0 = Instant::now();
    let (mut affected, mut others) = (JoinSet::new(), Vec::new());
    for s in sessions {
        if *s.owner == *frozen {
            // Bounded: a session not back within 10 s of the mark-down is lost anyway.
            affected.spawn(timeout_at(
                (t0 + Duration::from_secs(15)).into(),
                fail_over(web, s, frozen.clone()),
            ));
        } else {
            others.push(s);
        }
    }
    let t_down = wait_down(t.admin, &frozen, t0 + Duration::from_secs(10)).await;
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
    let after = timeout(Duration::from_secs(2), get(t.admin, "/api/pools", None)).await;

    println!(
        "failover: N={n}, sessions opened in {:.1} s",
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
    let Some(t_down) = t_down else {
        println!(
            "{frozen} NOT marked down within 10 s: its {} sessions count as lost\ntargets: NOT met",
            outcomes.len()
        );
        return Ok(());
    };
    let logged = t.downs.lock().ok().and_then(|d| {
        let tag = format!("backend={frozen}");
        d.iter().find(|(_, l)| l.contains(&tag)).map(|(at, _)| *at)
    });
    println!(
        "detection (freeze -> marked down): {:.0} ms by polling /api/pools, {} by tether's log line",
        since(t_down, t0),
        logged.map_or("-".into(), |at| format!("{:.0} ms", since(at, t0)))
    );
    // The poll lags the mark-down by up to one poll plus the admin's answer; the log line
    // lags it by a pipe write. Measure from the earlier one (it can only lengthen latencies).
    let t_down = logged.map_or(t_down, |at| at.min(t_down));
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
        "mark-down -> WebSocket closed:         {}",
        summary(&mut closed).0
    );
    let (text, p99) = summary(&mut back);
    println!("mark-down -> echo from the new owner:  {text}");
    let total_lost: usize = lost.values().sum();
    println!("lost sessions: {total_lost} {lost:?}");
    println!(
        "{}",
        cpu_line("opening the sessions", open_time, &cpu_open, &cpu_opened, n)
    );
    let moving = moved_at.saturating_duration_since(t_down);
    let line = cpu_line(
        "mark-down to last reconnect",
        moving,
        &cpu_down,
        &cpu_moved,
        back.len(),
    );
    println!("{line}");
    println!(
        "SYNs dropped on a full accept queue / SYNs retransmitted during the run: {} / {}",
        syn_after[0] - syn_before[0],
        syn_after[1] - syn_before[1]
    );
    if let Ok(Ok(r)) = after {
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
