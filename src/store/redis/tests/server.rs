//! A real `redis-server` for one test: its own free port and temporary
//! directory, no persistence unless seeded, killed by pid when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

pub(in crate::store::redis) struct RedisServer {
    child: Option<Child>,
    pub(in crate::store::redis) port: u16,
    dir: TempDir,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl RedisServer {
    pub(in crate::store::redis) fn start() -> RedisServer {
        Self::start_with(free_port(), TempDir::new().expect("tempdir"), &[])
    }

    /// A server on `port` (e.g. the port of one killed before), loading
    /// `dir/dump.rdb` if a seed left one there, plus `extra` arguments.
    pub(in crate::store::redis) fn start_with(
        port: u16,
        dir: TempDir,
        extra: &[&str],
    ) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        let server = RedisServer {
            child: Some(child),
            port,
            dir,
        };
        server.wait_ready();
        server
    }

    /// A sentinel (redis-server in sentinel mode) watching `master` on `master_port`.
    pub(in crate::store::redis) fn sentinel(master: &str, master_port: u16) -> RedisServer {
        let (port, dir) = (free_port(), TempDir::new().expect("tempdir"));
        let conf = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {master} 127.0.0.1 {master_port} 1\n",
            dir.path().display()
        );
        std::fs::write(&conf, text).expect("sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let server = RedisServer {
            child: Some(child),
            port,
            dir,
        };
        server.wait_ready();
        server
    }

    /// Until the server answers PING (or asks for a password).
    fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok() {
                    if let Ok(n) = s.read(&mut buf) {
                        let reply = String::from_utf8_lossy(&buf[..n]);
                        if reply.contains("PONG") || reply.contains("NOAUTH") {
                            return;
                        }
                    }
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            kill(Pid::from_raw(child.id() as i32), signal).expect("signal");
        }
    }

    /// SIGKILL: gone at once, no goodbye to the clients; gives the directory back.
    pub(in crate::store::redis) fn kill(mut self) -> TempDir {
        self.stop();
        let dir = TempDir::new().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub(in crate::store::redis) fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    pub(in crate::store::redis) fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// A plain connection for checking what Redis holds.
    pub(in crate::store::redis) async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{}/0", self.port))
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
