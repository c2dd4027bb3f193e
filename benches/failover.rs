//! Failover benchmark (issue 3): how long WebSocket clients of a frozen backend are
//! without a connection, and whether any of them loses its session.
//!
//! ```text
//! cargo build --release --bin tether --example whoami
//! cargo bench --bench failover            # N=1000 clients
//! N=8000 cargo bench --bench failover     # 16,000 fds in tether: needs `ulimit -Hn` >= ~16,500
//! ```
//!
//! Everything runs on loopback with ephemeral ports: three `whoami` backends (separate
//! processes) and `tether` with http health checks every 250 ms (fall 2). N clients each
//! get a session (a `GET /` that sets the `TETHER` cookie) and hold a WebSocket with it.
//! Then the backend with the most sessions is frozen with SIGSTOP (its sockets stay open,
//! so only tether's health checks can notice) at T0, and `GET /api/pools` is polled every
//! 10 ms for the instant T_down its state turns `down`. Each affected client waits for its
//! WebSocket to end (tether closes it with 1012), reconnects at once with its cookie
//! (`GET /`, then a new WebSocket) and records when the echo comes back from another
//! backend. Reported: detection time (T_down - T0) and p50/p99/max of (echo - T_down).
//! A session is lost when tether sets a new cookie, when the GET and the WebSocket land on
//! different backends, when it is not back within 10 s, or (for unaffected clients) when
//! its WebSocket no longer echoes afterwards. Targets: p99 < 1 s, 0 lost. The exit code is
//! 0 whatever the figures are (a measurement); non-zero only if the run itself broke.
//!
//! Without `--bench` in its arguments (`cargo test --all-targets`) it does nothing.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
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
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Sessions opened at once while setting up.
const OPEN_CONCURRENCY: usize = 64;
/// An affected session not back this long after the mark-down is lost.
const LOST_AFTER: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(10);

/// A child process we started, SIGKILLed by pid when dropped (panic and Ctrl-C included;
/// SIGKILL also ends a SIGSTOPped process).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn binary(var: &str, rel: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(p.into());
    }
    // The bench runs as target/release/deps/failover-HASH; the binaries sit in target/release.
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("target dir")?;
    Ok(dir.join(rel))
}

fn start_whoami(bin: &PathBuf, id: &str) -> Result<(Proc, SocketAddr)> {
    let mut child = Command::new(bin)
        .args(["--id", id, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let out = child.stdout.take().context("whoami stdout")?;
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // `whoami bN listening on 127.0.0.1:PORT`
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .with_context(|| format!("whoami {id} did not say where it listens"))?;
    let addr = line
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("whoami {id}: unexpected line {line:?}"))?;
    Ok((proc, addr))
}

/// tether's stderr: the last lines (for errors) and when a `backend down` line arrived.
#[derive(Default)]
struct Log {
    tail: VecDeque<String>,
    down_lines: Vec<(Instant, String)>,
}

struct Tether {
    _proc: Proc,
    web: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Log>>,
}

fn start_tether(bin: &PathBuf, yaml: &str, dir: &tempfile::TempDir) -> Result<Tether> {
    let config = dir.path().join("tether.yaml");
    std::fs::write(&config, yaml).context("writing tether.yaml")?;
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("TETHER_LOG").unwrap_or("info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let err = child.stderr.take().context("tether stderr")?;
    let proc = Proc(child);
    let log = Arc::new(Mutex::new(Log::default()));
    let (tx, rx) = mpsc::channel();
    let shared = log.clone();
    // Drain stderr for tether's whole life, or it blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Ok(mut l) = shared.lock() {
                if line.contains("backend down") {
                    l.down_lines.push((Instant::now(), line.clone()));
                }
                l.tail.push_back(line.clone());
                if l.tail.len() > 40 {
                    l.tail.pop_front();
                }
            }
            let _ = tx.send(line);
        }
    });
    let (mut web, mut admin) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let tail = log
                .lock()
                .map(|l| l.tail.iter().cloned().collect::<Vec<_>>());
            bail!(
                "tether did not get ready; its log:\n{}",
                tail.unwrap_or_default().join("\n")
            );
        };
        // `... listening listener="web" addr=127.0.0.1:PORT`
        if line.contains("listening") {
            let field = |k: &str| line.split(k).nth(1)?.split_whitespace().next();
            let name = field("listener=").map(|n| n.trim_matches('"'));
            match (name, field("addr=").and_then(|a| a.parse().ok())) {
                (Some("web"), Some(a)) => web = Some(a),
                (Some("admin"), Some(a)) => admin = Some(a),
                _ => {}
            }
        }
        if line.contains("tether ready") {
            break;
        }
    }
    Ok(Tether {
        _proc: proc,
        web: web.context("tether logged no address for listener web")?,
        admin: admin.context("tether logged no admin address")?,
        log,
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
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok());
            let (mut len, mut tether_cookie) = (None, None);
            for (name, value) in lines.filter_map(|l| l.split_once(':')) {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("set-cookie") {
                    if let Some(v) = value.strip_prefix("TETHER=") {
                        tether_cookie = Some(v.split(';').next().unwrap_or(v).to_string());
                    }
                }
            }
            let len = len.unwrap_or(usize::MAX);
            if buf.len() - (end + 4) >= len || (n == 0 && len == usize::MAX) {
                let status = status.context("bad status line")?;
                let body = buf.split_off(end + 4);
                return Ok(Resp {
                    status,
                    tether_cookie,
                    body,
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
        match timeout(Duration::from_secs(5), ws.next()).await {
            Err(_) => bail!("no echo within 5 s"),
            Ok(Some(Ok(Message::Text(t)))) => {
                let id = t
                    .strip_suffix(": hi")
                    .with_context(|| format!("odd echo {t:?}"))?;
                return Ok(id.to_string());
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => bail!("websocket ended instead of echoing: {other:?}"),
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
        at: Instant,
        closed_at: Instant,
        close: Option<u16>,
        retries: u32,
    },
    Lost(String),
}

/// An affected client: wait for tether to end the WebSocket, then reconnect with the cookie.
async fn fail_over(web: SocketAddr, mut s: Session, frozen: Arc<str>) -> Outcome {
    let close = loop {
        match s.ws.next().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    drop(s.ws);
    let closed_at = Instant::now();
    let mut retries = 0;
    loop {
        // Retry what a real client would retry (refused, 503, ...), not a moved session.
        let attempt = async {
            let r = get(web, "/", Some(&s.cookie)).await?;
            if r.tether_cookie.is_some() {
                return Ok(Err("new cookie: session replaced".to_string()));
            }
            let via_get = json_id(&r.body).with_context(|| format!("status {}", r.status))?;
            let mut ws = ws_connect(web, &s.cookie).await?;
            let via_ws = echo(&mut ws).await?;
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
                    at,
                    closed_at,
                    close,
                    retries,
                }
            }
            Ok(Err(why)) => return Outcome::Lost(why),
            Err::<_, anyhow::Error>(_) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Poll `/api/pools` until `id` is `down`; the send instant of the first poll that saw it.
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Milliseconds from `base` to `at`, negative when `at` came first (T_down is polled, so
/// a fast client can beat the poll that sees the mark-down).
fn since(at: Instant, base: Instant) -> f64 {
    if at >= base {
        ms(at - base)
    } else {
        -ms(base - at)
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(v, 50.0), percentile(v, 99.0));
    format!(
        "p50 {p50:.0} ms, p99 {p99:.0} ms, max {:.0} ms (min {:.0})",
        v[v.len() - 1],
        v[0]
    )
}

async fn run() -> Result<()> {
    let n: usize = match std::env::var("N") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("N={v:?} is not a number"))?,
        Err(_) => 1000,
    };
    // Raise our soft fd limit to the hard one; the children inherit it.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    // tether holds two fds per WebSocket (client + backend side), plus some slack.
    let need = 2 * n as u64 + 500;
    if hard < need {
        bail!("N={n} needs about {need} open files in tether, but `ulimit -Hn` is {hard}: lower N or raise the hard limit");
    }
    let (tether_bin, whoami_bin) = (
        binary("TETHER_BIN", "tether")?,
        binary("WHOAMI_BIN", "examples/whoami")?,
    );
    for b in [&tether_bin, &whoami_bin] {
        if !b.is_file() {
            eprintln!("failover: {} not found; build it first:\n  cargo build --release --bin tether --example whoami\n(or point TETHER_BIN / WHOAMI_BIN at the binaries)", b.display());
            std::process::exit(2);
        }
    }

    let mut backends = Vec::new();
    for i in 1..=3 {
        let id = format!("b{i}");
        let (proc, addr) = start_whoami(&whoami_bin, &id)?;
        backends.push((id, proc, addr));
    }
    let list: String = backends
        .iter()
        .map(|(id, _, a)| format!("      - {{ id: {id}, addr: \"{a}\" }}\n"))
        .collect();
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         server: {{ max_connections: 50000 }}\n\
         store: {{ kind: embedded }}\n\
         pools:\n  app:\n    on_backend_down: migrate\n    \
         health: {{ kind: http, path: /healthz, interval: 250ms, timeout: 200ms, rise: 2, fall: 2 }}\n    \
         backends:\n{list}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    max_connections: 20000\n    \
         timeouts: {{ idle: 1h }}\n    \
         affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n"
    );
    let dir = tempfile::tempdir().context("temp dir")?;
    let t = start_tether(&tether_bin, &yaml, &dir)?;
    let web = t.web;

    let opened = Instant::now();
    let results: Vec<Result<Session>> = timeout(
        Duration::from_secs(60),
        stream::iter(0..n)
            .map(|_| open_session(web))
            .buffer_unordered(OPEN_CONCURRENCY)
            .collect(),
    )
    .await
    .context("opening the sessions took over 60 s")?;
    let sessions: Vec<Session> = results
        .into_iter()
        .collect::<Result<_>>()
        .context("opening a session")?;
    let open_time = opened.elapsed();
    let mut per_backend: BTreeMap<String, usize> =
        backends.iter().map(|(id, ..)| (id.clone(), 0)).collect();
    for s in &sessions {
        *per_backend.entry(s.owner.clone()).or_default() += 1;
    }
    let (frozen, _) = per_backend
        .iter()
        .max_by_key(|(_, c)| **c)
        .context("no backend")?;
    let frozen: Arc<str> = frozen.as_str().into();
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
            let f = frozen.clone();
            // Bounded: a session not back within 10 s of the mark-down is lost anyway.
            affected.spawn(timeout_at(
                (t0 + Duration::from_secs(15)).into(),
                fail_over(web, s, f),
            ));
        } else {
            others.push(s);
        }
    }
    let t_down = wait_down(t.admin, &frozen, t0 + Duration::from_secs(10)).await;
    let mut outcomes = Vec::new();
    while let Some(r) = affected.join_next().await {
        outcomes.push(match r {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => Outcome::Lost("not back within 15 s of the freeze".into()),
            Err(e) => Outcome::Lost(format!("client task failed: {e}")),
        });
    }
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

    // Report.
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
        println!("{frozen} was NOT marked down within 10 s of the freeze: all {} affected sessions count as lost", outcomes.len());
        println!("targets: NOT met");
        return Ok(());
    };
    let logged = t.log.lock().ok().and_then(|l| {
        let tag = format!("backend={frozen}");
        l.down_lines
            .iter()
            .find(|(_, s)| s.contains(&tag))
            .map(|(at, _)| *at)
    });
    let logged = logged.map_or(String::new(), |at| {
        format!(
            " (its `backend down` log line arrived at {:.0} ms)",
            since(at, t0)
        )
    });
    println!(
        "detection (freeze -> marked down, polled every 10 ms): {:.0} ms{logged}",
        since(t_down, t0)
    );
    let (mut back, mut closed, mut retries) = (Vec::new(), Vec::new(), 0);
    let (mut closes, mut lost) = (
        BTreeMap::<String, usize>::new(),
        BTreeMap::<String, usize>::new(),
    );
    for o in outcomes.iter() {
        match o {
            Outcome::Back { at, .. } if since(*at, t_down) > ms(LOST_AFTER) => {
                *lost.entry("not back within 10 s".into()).or_default() += 1
            }
            Outcome::Back {
                at,
                closed_at,
                close,
                retries: r,
            } => {
                back.push(since(*at, t_down));
                closed.push(since(*closed_at, t_down));
                *closes
                    .entry(close.map_or("none".into(), |c| c.to_string()))
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
        "affected: {} (close codes {closes:?}, reconnect retries {retries})",
        outcomes.len()
    );
    println!(
        "mark-down -> WebSocket closed:          {}",
        summary(&mut closed)
    );
    println!(
        "mark-down -> echo from the new owner:   {}",
        summary(&mut back)
    );
    let p99 = if back.is_empty() {
        f64::INFINITY
    } else {
        percentile(&back, 99.0)
    };
    let total_lost: usize = lost.values().sum();
    println!("lost sessions: {total_lost} {lost:?}");
    if let Ok(Ok(r)) = after {
        let now: Vec<String> = per_backend
            .keys()
            .map(|id| {
                let f = |k| backend_field(&r.body, id, k).unwrap_or_default();
                format!("{id}={} ({})", f("sessions"), f("state"))
            })
            .collect();
        println!("tether afterwards (sessions): {}", now.join(" "));
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
        // Returning from here drops `run`, and with it every process guard.
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
