//! Test harness: a real `tether` process on a generated config, real whoami
//! backends on ephemeral ports, and a small real HTTP/1.1 client over TCP.
#![allow(dead_code)]

#[path = "../../examples/whoami.rs"]
pub mod whoami;

pub mod cdp;
pub mod echo;
pub mod http;
pub mod netns;
pub mod rawws;
pub mod redis;
pub mod redis_ha;
pub mod shared_store;
pub mod tcp;
pub mod ws;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use http::{Client, Response};

/// A running tether process; killed (by pid) on drop.
pub struct Tether {
    pub child: Child,
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Tether {
    /// Start tether on `yaml` (written into a fresh temp dir) and wait until it is ready.
    pub fn start(yaml: &str) -> Tether {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, yaml)
    }

    pub fn start_in(dir: tempfile::TempDir, yaml: &str) -> Tether {
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Self::spawn(dir, config)
    }

    pub fn spawn(dir: tempfile::TempDir, config: PathBuf) -> Tether {
        Self::spawn_with(dir, config, &[])
    }

    /// `tether --upgrade` on this one's config: its successor, once ready.
    pub fn successor(&self) -> Tether {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_with(dir, self.config.clone(), &["--upgrade"])
    }

    /// Start with extra command-line arguments.
    pub fn spawn_with(dir: tempfile::TempDir, config: PathBuf, args: &[&str]) -> Tether {
        Self::spawn_cmd(
            dir,
            config,
            Command::new(env!("CARGO_BIN_EXE_tether")),
            args,
        )
    }

    /// Start through `cmd` (the tether binary, or a wrapper that execs it).
    pub fn spawn_cmd(
        dir: tempfile::TempDir,
        config: PathBuf,
        mut cmd: Command,
        args: &[&str],
    ) -> Tether {
        let mut child = cmd
            .args(args)
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("TETHER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tether");
        let (log, rx) = drain_lines(child.stderr.take().expect("stderr"));
        let mut listeners = HashMap::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "tether did not become ready; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            };
            if let Some((name, addr)) = parse_listening(&line) {
                if name == "admin" {
                    admin = Some(addr);
                } else {
                    listeners.insert(name, addr);
                }
            }
            if line.contains("tether ready") {
                break;
            }
        }
        Tether {
            child,
            listeners,
            admin: admin.expect("admin address logged"),
            dir,
            config,
            log,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal tether");
    }

    /// Wait for exit up to `limit`; `Some(status)` if it exited.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `... listening listener=web addr=127.0.0.1:1234` (human log format).
fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    let name = line
        .split("listener=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_matches('"');
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    Some((name.to_string(), addr.parse().ok()?))
}

/// Read `out` line by line on a thread for the whole life of the process (a
/// full pipe would block its logging): every line is kept in the returned log
/// and also sent on the channel, for whoever waits for a particular one.
pub fn drain_lines(
    out: impl std::io::Read + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, std::sync::mpsc::Receiver<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            kept.lock().unwrap().push(line);
        }
    });
    (log, rx)
}

/// `target/<profile>/examples/whoami` next to the tether binary under test.
pub fn whoami_bin() -> PathBuf {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tether"))
        .parent()
        .expect("target dir")
        .join("examples/whoami");
    assert!(
        exe.exists(),
        "{} missing: run `cargo build --examples` (make test does)",
        exe.display()
    );
    exe
}

/// Start `n` whoami backends `b1..bn` on ephemeral ports.
pub async fn backends(n: usize) -> Vec<whoami::Running> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(
            whoami::start(&format!("b{i}"), "127.0.0.1:0")
                .await
                .expect("start backend"),
        );
    }
    v
}

/// YAML lines for a pool's backend list.
pub fn backend_yaml(backends: &[whoami::Running]) -> String {
    backends
        .iter()
        .map(|b| format!("      - {{ id: {}, addr: \"{}\" }}\n", b.id, b.addr))
        .collect()
}

/// A one-listener config: pool `app` over `backends`, listener `web` with `affinity`
/// (YAML flow text for `affinity:`), plus `extra` top-level YAML and pool lines.
pub fn config(
    backends: &[whoami::Running],
    affinity: &str,
    pool_extra: &str,
    listener_extra: &str,
    extra: &str,
) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         {extra}\n\
         pools:\n  app:\n{pool_extra}    backends:\n{}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n{listener_extra}    affinity: {affinity}\n",
        backend_yaml(backends)
    )
}

/// The `id` field of a whoami JSON answer.
pub fn backend_of(resp: &Response) -> String {
    resp.json()["id"].as_str().unwrap_or_default().to_string()
}

/// A whoami backend in its own process, so tests can freeze (SIGSTOP) and kill it.
pub struct ProcBackend {
    pub id: String,
    pub addr: SocketAddr,
    pub child: Child,
}

impl ProcBackend {
    pub fn start(id: &str) -> ProcBackend {
        Self::start_on(id, "127.0.0.1:0")
    }

    pub fn start_on(id: &str, listen: &str) -> ProcBackend {
        let exe = whoami_bin();
        let mut child = Command::new(&exe)
            .args(["--id", id, "--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn whoami");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("whoami prints its address");
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("address");
        ProcBackend {
            id: id.to_string(),
            addr,
            child,
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal backend");
    }
}

impl Drop for ProcBackend {
    fn drop(&mut self) {
        // A stopped process must be continued to die promptly on SIGKILL's heels.
        let _ = self.child.kill();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGCONT,
        );
        let _ = self.child.wait();
    }
}

/// YAML backend lines for process backends.
pub fn proc_backend_yaml(backends: &[ProcBackend]) -> String {
    backends
        .iter()
        .map(|b| format!("      - {{ id: {}, addr: \"{}\" }}\n", b.id, b.addr))
        .collect()
}

/// Poll `/api/pools` until backend `id` of pool `app` reports `state`, or panic after `limit`.
pub async fn wait_state(t: &Tether, id: &str, state: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let pools = Client::new(t.admin)
            .get("/api/pools", &[])
            .await
            .expect("admin")
            .json();
        let now = pools["pools"][0]["backends"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["id"] == id))
            .and_then(|b| b["state"].as_str())
            .unwrap_or("")
            .to_string();
        if now == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{id} still {now:?}, not {state:?}, after {limit:?}\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A webhook receiver: records every JSON body POSTed to it, answers 200.
pub struct Hook {
    pub addr: SocketAddr,
    pub events: Arc<Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hook {
    pub async fn start() -> Hook {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let ev = ev.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() < len {
                            continue;
                        }
                        if let Ok(v) = serde_json::from_str(&body[..len]) {
                            ev.lock().unwrap().push(v);
                        }
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                        return;
                    }
                });
            }
        });
        Hook { addr, events, task }
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}
