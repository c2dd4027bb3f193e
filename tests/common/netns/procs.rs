//! Processes in the lab's namespaces: redis-server, whoami backends, tether nodes.

use super::*;

impl Lab {
    // ---- processes ----------------------------------------------------------

    /// `ip netns exec <ns of who> <program>`: add arguments, then spawn it
    /// yourself (e.g. `Tether::spawn_cmd`) or through `spawn_wrapped`.
    pub fn command(&self, who: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(who)]).arg(program);
        c
    }

    /// Run `cmd` (program, arguments, environment, working directory) inside
    /// `who`'s namespace. Its stdout is read line by line (`Proc::wait_line`),
    /// its stderr goes to a file of the lab (`Proc::stderr_text`). The lab
    /// kills it (by pid) on drop if the `Proc` has not already.
    pub fn spawn(&self, who: &str, cmd: Command) -> Proc {
        let mut c = self.command(who, cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        let base = Path::new(cmd.get_program())
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".into());
        self.spawn_wrapped(&format!("{base}@{}", host(who)), c)
    }

    /// Spawn an already wrapped command (from `command`), kept like `spawn`'s.
    pub fn spawn_wrapped(&self, name: &str, mut c: Command) -> Proc {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.path().join(format!("{n}-{name}.stderr"));
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("stderr log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Arc::new(Lines::default());
        let stdout = child.stdout.take().expect("stdout");
        {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    out.push(line);
                }
                out.close();
            });
        }
        let pid = child.id() as i32;
        let child = Arc::new(Mutex::new(child));
        self.procs.lock().unwrap().push(child.clone());
        Proc {
            name: name.to_string(),
            pid,
            child,
            out,
            log,
        }
    }

    /// Run `program args` inside `who`'s namespace to completion.
    pub fn exec(&self, who: &str, program: &str, args: &[&str]) -> Output {
        self.command(who, program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// SIGKILL `pid`: a process this test started and has not reaped yet (a
    /// `Proc` of this lab is also reaped here). Reap others yourself
    /// (`NodeTether::kill9` does both).
    pub fn kill9(&self, pid: i32) {
        let procs = self.procs.lock().unwrap();
        if let Some(c) = procs.iter().find(|c| c.lock().unwrap().id() as i32 == pid) {
            kill_and_reap(c);
            return;
        }
        drop(procs);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// `redis-server` in the redis namespace on 0.0.0.0:6379, once it answers.
    pub fn redis(&self) -> Redis {
        assert!(
            on_path("redis-server"),
            "redis-server must be installed (make test installs it)"
        );
        let dir = self.dir.path().join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "0.0.0.0", "--port", &REDIS_PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir);
        let proc = self.spawn("redis", cmd);
        let redis = Redis {
            ns: self.ns("redis"),
            proc,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match redis.command(&["PING"]) {
                Ok(r) if r.starts_with("+PONG") => return redis,
                _ if Instant::now() > deadline || !redis.proc.running() => panic!(
                    "redis-server did not start in {}:\n{}",
                    redis.ns,
                    redis.proc.stderr_text()
                ),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// A whoami backend `id` on BACKEND_IP:`port` in the backend namespace.
    pub fn whoami(&self, id: &str, port: u16) -> Backend {
        let exe = whoami_bin();
        let mut cmd = Command::new(&exe);
        cmd.args(["--id", id, "--listen", &format!("{BACKEND_IP}:{port}")]);
        let proc = self.spawn("backend", cmd);
        let line = proc
            .wait_line(|l| l.contains("listening on"), Duration::from_secs(10))
            .unwrap_or_else(|| panic!("whoami {id} did not start:\n{}", proc.stderr_text()));
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("whoami address in {line:?}"));
        Backend {
            id: id.to_string(),
            addr,
            proc,
        }
    }

    /// `n` whoami backends b1..bn on BACKEND_IP:9001.. .
    pub fn backends(&self, n: usize) -> Vec<Backend> {
        (1..=n)
            .map(|i| self.whoami(&format!("b{i}"), BACKEND_BASE_PORT + i as u16))
            .collect()
    }

    /// tether (this crate's binary) in node `who`'s namespace on `yaml`,
    /// once it logged `tether ready`. The config is `<lab dir>/<node>.yaml`,
    /// the same path every time for a node (so a restart is the same config).
    /// Put the admin API on `127.0.0.1:0`: it is reached from inside the node.
    pub fn tether(&self, who: &str, yaml: &str) -> NodeTether {
        let config = self.dir.path().join(format!("{}.yaml", host(who)));
        std::fs::write(&config, yaml).expect("write config");
        self.tether_on(who, config)
    }

    /// tether in node `who`'s namespace on the config file `config`, as
    /// written (two nodes may share one file: same path, same text).
    pub fn tether_on(&self, who: &str, config: PathBuf) -> NodeTether {
        let h = host(who);
        let cmd = self.command(who, env!("CARGO_BIN_EXE_tether"));
        let tether = Tether::spawn_cmd(tempfile::tempdir().expect("tempdir"), config, cmd, &[]);
        NodeTether {
            ns: self.ns(who),
            host: h,
            tether,
        }
    }

    /// `tether --upgrade` on `node`'s config, in its namespace: the
    /// successor of the tether running there, once ready.
    pub fn successor(&self, node: &NodeTether) -> NodeTether {
        let cmd = self.command(node.host, env!("CARGO_BIN_EXE_tether"));
        let dir = tempfile::tempdir().expect("tempdir");
        let tether = Tether::spawn_cmd(dir, node.tether.config.clone(), cmd, &["--upgrade"]);
        NodeTether {
            ns: node.ns.clone(),
            host: node.host,
            tether,
        }
    }
}

/// A process started by `Lab::spawn`; killed (by pid) and reaped on drop.
pub struct Proc {
    pub name: String,
    pid: i32,
    child: Arc<Mutex<Child>>,
    out: Arc<Lines>,
    log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Still running (not exited)?
    pub fn running(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    /// Send `sig` if it has not exited (the pid cannot have been reused: we
    /// hold the child unreaped until we see it exit).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let mut c = self.child.lock().unwrap();
        if let Ok(None) = c.try_wait() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&self) {
        kill_and_reap(&self.child);
    }

    /// Wait up to `limit` for it to exit.
    pub fn wait_exit(&self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.lock().unwrap().try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first stdout line (so far or within `limit`) matching `pred`.
    pub fn wait_line(&self, pred: impl Fn(&str) -> bool, limit: Duration) -> Option<String> {
        self.out.wait(pred, limit)
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.out.state.lock().unwrap().0.clone()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_and_reap(&self.child);
    }
}

/// Lines read from a process's stdout, and whether it closed.
#[derive(Default)]
struct Lines {
    state: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    fn push(&self, line: String) {
        self.state.lock().unwrap().0.push(line);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }

    fn wait(&self, pred: impl Fn(&str) -> bool, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut st = self.state.lock().unwrap();
        loop {
            if let Some(l) = st.0.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if st.1 || now >= deadline {
                return None;
            }
            st = self.changed.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

pub(super) fn kill_and_reap(c: &Mutex<Child>) {
    let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(None) = c.try_wait() {
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `redis-server` in the redis namespace.
pub struct Redis {
    pub ns: String,
    pub proc: Proc,
}

impl Redis {
    /// A command from inside the redis namespace (127.0.0.1:6379); the raw reply.
    pub fn command(&self, args: &[&str]) -> io::Result<String> {
        resp_command(
            &self.ns,
            sock("127.0.0.1", REDIS_PORT),
            args,
            Duration::from_secs(2),
        )
    }
}

/// A whoami process in the backend namespace.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
}

/// YAML backend lines (`      - { id: b1, addr: "198.18.0.20:9001" }`).
pub fn backends_yaml(backends: &[Backend]) -> String {
    backends
        .iter()
        .map(|b| format!("      - {{ id: {}, addr: \"{}\" }}\n", b.id, b.addr))
        .collect()
}

pub use crate::common::whoami_bin;

/// tether running in a node's namespace (`Lab::tether`). Derefs to `Tether`
/// (log, pid, admin address — an address inside the node's namespace).
pub struct NodeTether {
    pub ns: String,
    /// `node-a` / `node-b`.
    pub host: &'static str,
    pub tether: Tether,
}

impl std::ops::Deref for NodeTether {
    type Target = Tether;
    fn deref(&self) -> &Tether {
        &self.tether
    }
}

impl std::ops::DerefMut for NodeTether {
    fn deref_mut(&mut self) -> &mut Tether {
        &mut self.tether
    }
}

impl NodeTether {
    /// A request to the admin API, from inside the node.
    pub async fn admin(&self, method: &str, path: &str) -> io::Result<Response> {
        let s = connect(&self.ns, None, self.tether.admin, Duration::from_secs(2)).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.tether.admin
        );
        exchange(s, req.as_bytes(), Duration::from_secs(5)).await
    }

    /// `GET /api/vip` as JSON (panics with the log if the API does not answer 200).
    pub async fn vip(&self) -> serde_json::Value {
        let r = self
            .admin("GET", "/api/vip")
            .await
            .unwrap_or_else(|e| panic!("{}: GET /api/vip: {e}\n{}", self.host, self.log_text()));
        assert_eq!(r.status, 200, "{}: GET /api/vip: {}", self.host, r.text());
        r.json()
    }

    /// `role` of `GET /api/vip` (`leader` / `standby`).
    pub async fn role(&self) -> String {
        self.vip().await["role"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Poll `/api/vip` until its role is `role`; the time it took.
    pub async fn wait_role(&self, role: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let v = self.vip().await;
            if v["role"] == role {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{} is not {role} after {limit:?}: {v}\n{}",
                self.host,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /api/vip/release`.
    pub async fn release(&self) -> Response {
        self.admin("POST", "/api/vip/release")
            .await
            .unwrap_or_else(|e| panic!("{}: POST /api/vip/release: {e}", self.host))
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.admin("GET", "/metrics")
            .await
            .unwrap_or_else(|e| panic!("{}: GET /metrics: {e}", self.host))
            .text()
    }

    /// One series (exact name and labels) of `/metrics`, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::common::tcp::metric(&self.metrics().await, series)
    }

    /// SIGKILL the process and reap it (a crash: nothing is cleaned up).
    pub fn kill9(&mut self) {
        let _ = self.tether.child.kill();
        let _ = self.tether.child.wait();
    }

    /// SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        self.tether.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// SIGSTOP: frozen, its sockets and addresses left as they are.
    pub fn freeze(&self) {
        self.tether.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        self.tether.signal(nix::sys::signal::Signal::SIGCONT);
    }
}
