//! A network lab for tests that need a real network: network namespaces made
//! with `ip`, processes run inside with `ip netns exec`, and sockets opened
//! from inside by a thread that entered the namespace (`setns`). Everything
//! the lab made is removed on drop, panics included.
//!
//! ```text
//!  client  198.18.0.10/24 ──┐
//!  node-a  198.18.0.11/24 ──┤  lan: bridge br0 in its own namespace
//!  node-b  198.18.0.12/24 ──┤  (each host's side is `eth0`, the bridge's `p-<host>`)
//!  backend 198.18.0.20/24 ──┘
//!  node-a redis0 198.19.1.2/30 ── to-a 198.19.1.1 ─┐ redis (redis-server on 0.0.0.0:6379)
//!  node-b redis0 198.19.2.2/30 ── to-b 198.19.2.1 ─┘
//! ```
//!
//! Each node has its own link to Redis, so one node can be cut from Redis
//! alone (`cut_redis`) while the LAN keeps working, and a node's LAN link can
//! go down (`link_down`: a machine death, with `NodeTether::kill9`).
//!
//! Names: the namespaces are `tlab<pid>x<n>-<host>` (unique per test process
//! and lab). Interfaces are created directly inside their namespaces (`ip -n
//! NS link add ... peer name ... netns OTHER`), so their names (`eth0`,
//! `redis0`, `p-node-a`, `to-a`, all under 15 characters) never meet in one
//! namespace and never touch the host's.
//!
//! Hosts are named `client`, `a` (or `node-a`), `b` (or `node-b`), `backend`,
//! `redis` and `lan` in every method that takes `who`.
//!
//! ```ignore
//! let lab = Lab::new();                      // panics unless root
//! let _redis = lab.redis();
//! let backends = lab.backends(3);            // whoami b1..b3 on 198.18.0.20:9001..
//! let a = lab.tether("a", &yaml_a);          // tether in node-a's namespace
//! let mut browser = lab.browser("client");   // HTTP from the client, keeps cookies
//! let r = browser.get(sock(VIP, 8080), "/").await?;
//! lab.cut_redis("a");
//! assert!(lab.has_address("b", VIP));
//! ```
//!
//! Labs in one test process run one at a time (the lab holds a process-wide
//! lock): the tests measure takeovers in hundreds of milliseconds, and two labs
//! with four tethers would share the 2 cores of a CI box.
//!
//! Needs root (`CAP_NET_ADMIN`, `CAP_SYS_ADMIN` for `setns`): `Lab::new`
//! panics with a message otherwise; it never passes silently.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::http::{read_response, Response};
use super::Tether;

pub const CLIENT_IP: &str = "198.18.0.10";
pub const NODE_A_IP: &str = "198.18.0.11";
pub const NODE_B_IP: &str = "198.18.0.12";
pub const BACKEND_IP: &str = "198.18.0.20";
/// The LAN's prefix length.
pub const LAN_PREFIX: u8 = 24;
/// The virtual IP the vip tests use (not configured by the lab).
pub const VIP: &str = "198.18.0.100";
/// Every host's interface on the LAN.
pub const LAN_IF: &str = "eth0";
/// Each node's interface to the redis namespace.
pub const REDIS_IF: &str = "redis0";
pub const REDIS_PORT: u16 = 6379;
/// First port of `Lab::backends` (b1 on 9001, b2 on 9002, ...).
pub const BACKEND_BASE_PORT: u16 = 9000;

/// Every namespace of a lab, by host name.
const HOSTS: [&str; 6] = ["lan", "client", "node-a", "node-b", "backend", "redis"];
/// Hosts on the LAN bridge and their addresses.
const LAN_HOSTS: [(&str, &str); 4] = [
    ("client", CLIENT_IP),
    ("node-a", NODE_A_IP),
    ("node-b", NODE_B_IP),
    ("backend", BACKEND_IP),
];
/// Start of every lab's namespace names (`tlab<pid>x<n>-<host>`).
const NS_PREFIX: &str = "tlab";
const NETNS_DIR: &str = "/var/run/netns";

static SERIAL: Mutex<()> = Mutex::new(());
static LABS: AtomicUsize = AtomicUsize::new(0);

/// Panic unless root: the lab makes namespaces and interfaces.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("needs root (network namespaces) — run as root, as CI does");
    }
}

/// `ip:port` as a socket address (`sock(VIP, 8080)`).
pub fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP address"), port)
}

/// The canonical host name for `who` (`a` → `node-a`).
pub fn host(who: &str) -> &'static str {
    match who {
        "a" | "node-a" => "node-a",
        "b" | "node-b" => "node-b",
        "client" => "client",
        "backend" => "backend",
        "redis" => "redis",
        "lan" => "lan",
        _ => panic!("unknown lab host {who:?}: client, a, b, backend, redis or lan"),
    }
}

/// `a` / `b` for a node, panics for other hosts.
fn node_letter(who: &str) -> &'static str {
    match host(who) {
        "node-a" => "a",
        "node-b" => "b",
        other => panic!("{other} is not a tether node (a or b)"),
    }
}

/// One lab: six namespaces, their links, and the processes started in them.
pub struct Lab {
    /// `tlab<pid>x<n>`: every namespace of the lab starts with it and a `-`.
    pub id: String,
    dir: tempfile::TempDir,
    procs: Mutex<Vec<Arc<Mutex<Child>>>>,
    spawned: AtomicUsize,
    // Last field: released after `drop` has removed everything.
    _serial: MutexGuard<'static, ()>,
}

mod client;
mod net;
mod procs;

pub use client::*;
#[allow(unused_imports)] // named only by some test crates
pub use net::*;
pub use procs::*;

impl Lab {
    /// Build the topology. Panics (after removing what it made) if `ip` fails.
    pub fn new() -> Lab {
        require_root();
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        sweep_stale();
        let id = format!(
            "{NS_PREFIX}{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        // Built in place so that a failure half way is cleaned up by Drop.
        let lab = Lab {
            id,
            dir: tempfile::tempdir().expect("tempdir"),
            procs: Mutex::new(Vec::new()),
            spawned: AtomicUsize::new(0),
            _serial: serial,
        };
        lab.build();
        lab
    }

    fn build(&self) {
        for h in HOSTS {
            ip(&["netns", "add", &self.ns(h)]);
            ip(&["-n", &self.ns(h), "link", "set", "lo", "up"]);
        }
        let lan = self.ns("lan");
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        for (h, addr) in LAN_HOSTS {
            let ns = self.ns(h);
            let port = format!("p-{h}");
            ip(&[
                "-n", &ns, "link", "add", LAN_IF, "type", "veth", "peer", "name", &port, "netns",
                &lan,
            ]);
            ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/{LAN_PREFIX}"),
                "dev",
                LAN_IF,
            ]);
            ip(&["-n", &ns, "link", "set", LAN_IF, "up"]);
        }
        let redis = self.ns("redis");
        for (node, n) in [("node-a", 1), ("node-b", 2)] {
            let ns = self.ns(node);
            let peer = format!("to-{}", node_letter(node));
            ip(&[
                "-n", &ns, "link", "add", REDIS_IF, "type", "veth", "peer", "name", &peer, "netns",
                &redis,
            ]);
            ip(&[
                "-n",
                &redis,
                "addr",
                "add",
                &format!("198.19.{n}.1/30"),
                "dev",
                &peer,
            ]);
            ip(&["-n", &redis, "link", "set", &peer, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("198.19.{n}.2/30"),
                "dev",
                REDIS_IF,
            ]);
            ip(&["-n", &ns, "link", "set", REDIS_IF, "up"]);
        }
    }

    /// The namespace name of `who`.
    pub fn ns(&self, who: &str) -> String {
        format!("{}-{}", self.id, host(who))
    }

    /// The lab's scratch directory (configs, logs, redis dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A host's LAN address.
    pub fn lan_ip(&self, who: &str) -> &'static str {
        let h = host(who);
        LAN_HOSTS
            .iter()
            .find(|(n, _)| *n == h)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{h} is not on the LAN"))
    }

    /// The Redis address as seen from node `who` (its own link).
    pub fn redis_ip(&self, who: &str) -> &'static str {
        match node_letter(who) {
            "a" => "198.19.1.1",
            _ => "198.19.2.1",
        }
    }

    /// `redis://<redis_ip(who)>:6379/0`.
    pub fn redis_url(&self, who: &str) -> String {
        format!("redis://{}:{REDIS_PORT}/0", self.redis_ip(who))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // 1. What the lab spawned, by pid (SIGCONT too: a stopped one must die).
        for c in self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            kill_and_reap(&c);
        }
        // 2. Anything else still inside the lab's namespaces (a tether whose
        //    handle outlives the lab, a grandchild): started by this test.
        for h in HOSTS {
            if let Ok(out) = try_ip(&["netns", "pids", &self.ns(h)]) {
                for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        // 3. The namespaces; their interfaces (and so the veth pairs) go with them.
        for h in HOSTS {
            let _ = try_ip(&["netns", "del", &self.ns(h)]);
        }
    }
}

// ---- ip ----------------------------------------------------------------------------

/// Run `ip args`; its stdout, or a panic with its stderr.
pub fn ip(args: &[&str]) -> String {
    try_ip(args).unwrap_or_else(|e| panic!("{e}"))
}

pub fn try_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Namespaces whose name starts with `<id>-`.
pub fn namespaces_of(id: &str) -> Vec<String> {
    let list = try_ip(&["netns", "list"]).unwrap_or_default();
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{id}-")))
        .map(str::to_string)
        .collect()
}

/// Remove lab namespaces left by test processes that no longer exist (a test
/// binary killed with SIGKILL cannot clean up). Namespaces only: whatever
/// still runs in them is left alone.
fn sweep_stale() {
    let list = try_ip(&["netns", "list"]).unwrap_or_default();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = try_ip(&["netns", "del", name]);
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}
