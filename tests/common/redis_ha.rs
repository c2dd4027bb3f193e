//! Real Redis deployments for the integration tests: a six-node Redis Cluster
//! (three masters, three replicas), a master with a replica watched by three
//! sentinels, and a TLS-only server. Every process listens on a free loopback
//! port, lives in the test's temp dir and is killed by pid on drop; admin
//! commands go through `redis-cli` (redis-tools).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// One redis-server (or sentinel) process.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
}

impl Node {
    fn spawn(program: &str, args: &[String]) -> Child {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} must be installed (scripts/deps.sh --test): {e}"))
    }

    /// SIGKILL: gone at once, no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `redis-cli -p PORT ARGS...` (plain text answer), bounded by 10 s.
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_with(&["-p", &port.to_string()], args)
}

pub fn cli_with(conn: &[&str], args: &[&str]) -> String {
    let mut child = Command::new("timeout")
        .arg("10")
        .arg("redis-cli")
        .args(["-h", "127.0.0.1"])
        .args(conn)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli must be installed (redis-tools)");
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut out);
    }
    let _ = child.wait();
    out
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn redis_args(port: u16, dir: &TempDir) -> Vec<String> {
    let mut a: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--save", "", "--appendonly", "no"].map(String::from));
    // Replicas sync at once, not after the default 5 s wait for more of them.
    a.extend(["--repl-diskless-sync-delay", "0"].map(String::from));
    a.extend(["--dir".to_owned(), dir.path().display().to_string()]);
    a
}

/// Three masters and three replicas, formed by `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<Node>,
    _dir: TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let mut args = redis_args(port, &dir);
            // Each node its own directory: they would share dump.rdb otherwise.
            let own = dir.path().join(port.to_string());
            std::fs::create_dir(&own).expect("node dir");
            args.extend(["--dir".to_owned(), own.display().to_string()]);
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            args.extend(
                ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"].map(String::from),
            );
            args.extend([
                "--cluster-config-file".to_owned(),
                conf.display().to_string(),
            ]);
            let child = Node::spawn("redis-server", &args);
            nodes.push(Node {
                child: Some(child),
                port,
            });
        }
        for n in &nodes {
            wait_until("cluster node up", Duration::from_secs(10), || {
                cli(n.port, &["PING"]).contains("PONG")
            });
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = cli_with(&[], &args);
        assert!(
            out.contains("All 16384 slots covered"),
            "cluster create:\n{out}"
        );
        let cluster = Cluster { nodes, _dir: dir };
        cluster.wait_ok(Duration::from_secs(20));
        // A replica that never synced is not eligible for promotion.
        for n in &cluster.nodes {
            wait_until("replicas in sync", Duration::from_secs(20), || {
                let info = cli(n.port, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
        }
        cluster
    }

    /// `["127.0.0.1:P1", ...]` for `store.redis.cluster.nodes`.
    pub fn seeds_yaml(&self) -> String {
        let seeds: Vec<String> = (self.nodes.iter())
            .map(|n| format!("\"127.0.0.1:{}\"", n.port))
            .collect();
        format!("[{}]", seeds.join(", "))
    }

    pub fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.alive())
            .map(|n| n.port)
            .expect("a live node")
    }

    /// `(id, port)` of the masters serving slots, as a live node sees them.
    pub fn masters(&self) -> Vec<(String, u16)> {
        let text = cli(self.live_port(), &["CLUSTER", "NODES"]);
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let port = f[1]
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit_once(':'));
            if let Some(Ok(port)) = port.map(|(_, p)| p.parse()) {
                out.push((f[0].to_owned(), port));
            }
        }
        out.sort_by_key(|m| m.1);
        out
    }

    /// Until every live node says `cluster_state:ok` and three live masters
    /// serve slots, none of them on port `gone` (a master killed).
    pub fn wait_ok(&self, limit: Duration) -> Duration {
        self.wait_failover(0, limit)
    }

    pub fn wait_failover(&self, gone: u16, limit: Duration) -> Duration {
        let t0 = Instant::now();
        wait_until("cluster ok", limit, || {
            let masters = self.masters();
            if masters.iter().any(|m| m.1 == gone) {
                return false;
            }
            let live = self.nodes.iter().filter(|n| n.alive());
            let all_ok = live
                .map(|n| cli(n.port, &["CLUSTER", "INFO"]))
                .all(|info| info.contains("cluster_state:ok"));
            all_ok && masters.len() == 3
        });
        t0.elapsed()
    }

    pub fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node")
    }

    /// The value of `key`, following redirections.
    pub fn get(&self, key: &str) -> String {
        cli_with(&["-c", "-p", &self.live_port().to_string()], &["GET", key])
            .trim()
            .to_owned()
    }
}

/// Ports of the masters with a client subscribed to a channel (`sub=1`).
pub fn subscribed_on(cluster: &Cluster) -> Vec<u16> {
    let masters = cluster.masters();
    masters
        .iter()
        .filter(|(_, port)| {
            cli(*port, &["CLIENT", "LIST"])
                .lines()
                .any(|l| l.contains(" sub=1 ") || l.contains("cmd=subscribe"))
        })
        .map(|m| m.1)
        .collect()
}

/// A master, its replica and three sentinels (quorum 2) watching it as `mymaster`.
pub struct Sentinels {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    _dir: TempDir,
}

/// `down-after-milliseconds` of the sentinels.
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1000;

impl Sentinels {
    pub fn start() -> Sentinels {
        let dir = tempfile::tempdir().expect("tempdir");
        let start = |port: u16, extra: &[&str]| {
            let mut args = redis_args(port, &dir);
            args.extend(extra.iter().map(|s| s.to_string()));
            let node = Node {
                child: Some(Node::spawn("redis-server", &args)),
                port,
            };
            wait_until("redis up", Duration::from_secs(10), || {
                cli(port, &["PING"]).contains("PONG")
            });
            node
        };
        let mp = free_port();
        let master = start(mp, &[]);
        let own = dir.path().join("replica");
        std::fs::create_dir(&own).expect("replica dir");
        let own = own.display().to_string();
        let replica = start(
            free_port(),
            &["--replicaof", "127.0.0.1", &mp.to_string(), "--dir", &own],
        );
        wait_until("replica in sync", Duration::from_secs(10), || {
            cli(master.port, &["INFO", "replication"]).contains("state=online")
        });
        // Debian's redis-sentinel; the same binary as `redis-server --sentinel`.
        let sentinel_bin = match Command::new("redis-sentinel").arg("--version").output() {
            Ok(_) => None,
            Err(_) => Some("--sentinel"),
        };
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor mymaster 127.0.0.1 {mp} 2\n\
                 sentinel down-after-milliseconds mymaster {SENTINEL_DOWN_AFTER_MS}\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir = dir.path().display()
            );
            std::fs::write(&conf, text).expect("sentinel.conf");
            let mut args = vec![conf.display().to_string()];
            let program = match sentinel_bin {
                None => "redis-sentinel",
                Some(flag) => {
                    args.push(flag.to_owned());
                    "redis-server"
                }
            };
            let node = Node {
                child: Some(Node::spawn(program, &args)),
                port,
            };
            wait_until("sentinel up", Duration::from_secs(10), || {
                cli(port, &["PING"]).contains("PONG")
            });
            sentinels.push(node);
        }
        // Every sentinel knows the replica and the two other sentinels.
        for s in &sentinels {
            wait_until("sentinels know each other", Duration::from_secs(20), || {
                let m = cli(s.port, &["SENTINEL", "MASTER", "mymaster"]);
                let lines: Vec<&str> = m.lines().collect();
                let field = |name: &str| {
                    let i = lines.iter().position(|l| *l == name)?;
                    lines.get(i + 1).and_then(|v| v.parse::<u32>().ok())
                };
                field("num-slaves") == Some(1) && field("num-other-sentinels") == Some(2)
            });
        }
        Sentinels {
            master,
            replica,
            sentinels,
            _dir: dir,
        }
    }

    /// `["127.0.0.1:P", ...]` for `store.redis.sentinel.nodes`.
    pub fn nodes_yaml(&self) -> String {
        let nodes: Vec<String> = (self.sentinels.iter())
            .map(|n| format!("\"127.0.0.1:{}\"", n.port))
            .collect();
        format!("[{}]", nodes.join(", "))
    }

    /// The port of the master the first live sentinel names.
    pub fn master_port(&self) -> Option<u16> {
        let s = self.sentinels.iter().find(|n| n.alive())?;
        let out = cli(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"]);
        out.lines().nth(1)?.trim().parse().ok()
    }
}

/// A redis-server speaking TLS only (`--port 0`), with a certificate for
/// 127.0.0.1 signed by the test's CA (`ca.pem` in the returned server's dir).
pub struct TlsRedis {
    pub node: Node,
    pub dir: TempDir,
    pub ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl TlsRedis {
    pub fn start(ca_pem: &str, leaf: &(String, String)) -> TlsRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("redis.pem"),
            dir.path().join("redis.key"),
        );
        std::fs::write(&ca, ca_pem).expect("ca");
        std::fs::write(&cert, &leaf.0).expect("cert");
        std::fs::write(&key, &leaf.1).expect("key");
        let mut r = TlsRedis {
            node: Node {
                child: None,
                port: free_port(),
            },
            dir,
            ca,
            cert,
            key,
        };
        r.restart();
        r
    }

    /// Start (again) on the same port, empty.
    pub fn restart(&mut self) {
        let port = self.node.port;
        let mut args = redis_args(0, &self.dir);
        args.extend(["--tls-port".to_owned(), port.to_string()]);
        for (flag, path) in [
            ("--tls-cert-file", &self.cert),
            ("--tls-key-file", &self.key),
            ("--tls-ca-cert-file", &self.ca),
        ] {
            args.extend([flag.to_owned(), path.display().to_string()]);
        }
        args.extend(["--tls-auth-clients", "no"].map(String::from));
        self.node = Node {
            child: Some(Node::spawn("redis-server", &args)),
            port,
        };
        wait_until("tls redis up", Duration::from_secs(10), || {
            self.cli(&["PING"]).contains("PONG")
        });
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let ca = self.ca.display().to_string();
        let port = self.node.port.to_string();
        cli_with(&["--tls", "--cacert", &ca, "-p", &port], args)
    }
}

/// A session made through tether: its cookie, its owner, when it was made.
#[derive(Clone, Debug)]
pub struct Made {
    pub cookie: String,
    pub owner: String,
    pub at: Instant,
}

/// A new session through the listener at `addr`.
pub async fn new_session(addr: std::net::SocketAddr) -> Result<Made, String> {
    let r = super::Client::new(addr).get("/", &[]).await;
    let r = r.map_err(|e| format!("new session: {e}"))?;
    match (r.status, r.set_cookie("TETHER")) {
        (200, Some(cookie)) => Ok(Made {
            cookie,
            owner: super::backend_of(&r),
            at: Instant::now(),
        }),
        (status, _) => Err(format!("new session: status {status}, no cookie")),
    }
}

/// The owner `addr` routes `cookie` to, or why the request failed (a new
/// cookie means the instance did not know the session: a failure too).
pub async fn owner_via(addr: std::net::SocketAddr, cookie: &str) -> Result<String, String> {
    let h = format!("TETHER={cookie}");
    let r = super::Client::new(addr).get("/", &[("Cookie", &h)]).await;
    let r = r.map_err(|e| format!("{addr}: {e}"))?;
    if r.status != 200 {
        return Err(format!("{addr}: status {}", r.status));
    }
    if r.set_cookie("TETHER").is_some() {
        return Err(format!("{addr}: a new cookie for {cookie}"));
    }
    Ok(super::backend_of(&r))
}

/// Requests through both instances until stopped: every known session through
/// each (same owner expected), and every `new_every`th request a new session
/// (alternating instances), which joins the list.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
    pub sessions: std::sync::Arc<std::sync::Mutex<Vec<Made>>>,
}

impl Traffic {
    pub fn start(
        addrs: [std::net::SocketAddr; 2],
        sessions: Vec<Made>,
        new_every: usize,
    ) -> Traffic {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sessions = std::sync::Arc::new(std::sync::Mutex::new(sessions));
        let (s, list) = (stop.clone(), sessions.clone());
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut i = 0usize;
            while !s.load(Relaxed) {
                i += 1;
                if new_every > 0 && i.is_multiple_of(new_every) {
                    match new_session(addrs[(i / new_every) % 2]).await {
                        Ok(m) => {
                            list.lock().unwrap().push(m);
                            ok += 1;
                        }
                        Err(e) => failed.push(e),
                    }
                    continue;
                }
                let pick = {
                    let l = list.lock().unwrap();
                    l.get(i % l.len().max(1)).cloned()
                };
                let Some(m) = pick else { continue };
                for addr in addrs {
                    match owner_via(addr, &m.cookie).await {
                        Ok(o) if o == m.owner => ok += 1,
                        Ok(o) => {
                            failed.push(format!("{addr}: {} on {o}, not {}", m.cookie, m.owner))
                        }
                        Err(e) => failed.push(e),
                    }
                }
            }
            (ok, failed)
        });
        Traffic {
            stop,
            task,
            sessions,
        }
    }

    /// Requests that went fine, and what failed.
    pub async fn stop(self) -> (u64, Vec<String>, Vec<Made>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = self.task.await.expect("traffic task");
        let sessions = self.sessions.lock().unwrap().clone();
        (ok, failed, sessions)
    }
}
