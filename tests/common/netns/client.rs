//! Clients inside the lab: sockets opened in a namespace, a cookie-keeping
//! HTTP client, raw Redis commands.

use super::*;

impl Lab {
    // ---- clients --------------------------------------------------------------

    /// An HTTP client in `who`'s namespace (keeps cookies).
    pub fn browser(&self, who: &str) -> Browser {
        Browser::new(&self.ns(who))
    }

    /// One GET from `who` on a new connection.
    pub async fn http_get(&self, who: &str, to: SocketAddr, path: &str) -> io::Result<Response> {
        self.browser(who).get(to, path).await
    }

    /// A TCP connection from `who`'s namespace (optionally from `src`).
    pub async fn connect(
        &self,
        who: &str,
        src: Option<IpAddr>,
        to: SocketAddr,
        limit: Duration,
    ) -> io::Result<tokio::net::TcpStream> {
        connect(&self.ns(who), src, to, limit).await
    }

    /// A blocking TCP connection from `who`'s namespace.
    pub fn connect_std(
        &self,
        who: &str,
        to: SocketAddr,
        limit: Duration,
    ) -> io::Result<std::net::TcpStream> {
        connect_std(&self.ns(who), to, limit)
    }

    /// Send `bytes` from `who` to `to`, half-close, read until EOF (bounded).
    pub fn tcp_exchange(
        &self,
        who: &str,
        to: SocketAddr,
        bytes: &[u8],
        limit: Duration,
    ) -> io::Result<Vec<u8>> {
        let mut s = self.connect_std(who, to, limit)?;
        s.set_read_timeout(Some(limit))?;
        s.write_all(bytes)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    }

    /// A Redis command sent from node `who` over its own link (reachability).
    pub fn redis_from(&self, who: &str, args: &[&str]) -> io::Result<String> {
        resp_command(
            &self.ns(who),
            sock(self.redis_ip(who), REDIS_PORT),
            args,
            Duration::from_millis(500),
        )
    }

    /// The lab's namespaces that exist right now (`ip netns list`).
    pub fn namespaces(&self) -> Vec<String> {
        namespaces_of(&self.id)
    }
}

/// An HTTP/1.1 client inside a namespace: a new connection per request
/// (`Connection: close`), cookies kept like a browser's.
pub struct Browser {
    pub ns: String,
    /// Source address to bind (None: the kernel's choice).
    pub src: Option<IpAddr>,
    pub cookies: Vec<(String, String)>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

impl Browser {
    pub fn new(ns: &str) -> Browser {
        Browser {
            ns: ns.to_string(),
            src: None,
            cookies: Vec::new(),
            connect_timeout: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
        }
    }

    /// Connect from `src` (an address of the namespace).
    pub fn bound_to(mut self, src: &str) -> Browser {
        self.src = Some(src.parse().expect("an IP address"));
        self
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// One GET on a new connection, sending and then updating the cookie jar.
    pub async fn get(&mut self, to: SocketAddr, path: &str) -> io::Result<Response> {
        let s = connect(&self.ns, self.src, to, self.connect_timeout).await?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req.push_str(&format!("Cookie: {}\r\n", jar.join("; ")));
        }
        req.push_str("\r\n");
        let r = exchange(s, req.as_bytes(), self.timeout).await?;
        for c in r.headers_named("set-cookie") {
            let Some((k, v)) = c.split(';').next().and_then(|kv| kv.split_once('=')) else {
                continue;
            };
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            self.cookies.retain(|(n, _)| *n != k);
            self.cookies.push((k, v));
        }
        Ok(r)
    }

    /// Retry `get` until it answers 200, for up to `limit`: the answer and
    /// the time it took, or the last failure.
    pub async fn get_within(
        &mut self,
        to: SocketAddr,
        path: &str,
        limit: Duration,
    ) -> Result<(Response, Duration), String> {
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last = match self.get(to, path).await {
                Ok(r) if r.status == 200 => return Ok((r, start.elapsed())),
                Ok(r) => format!("status {}: {}", r.status, r.text()),
                Err(e) => e.to_string(),
            };
            if start.elapsed() > limit {
                return Err(format!(
                    "no 200 from {to} in {limit:?} ({attempts} attempts), last: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Write `req`, read one HTTP response (bounded by `limit`).
pub(super) async fn exchange(
    s: tokio::net::TcpStream,
    req: &[u8],
    limit: Duration,
) -> io::Result<Response> {
    let mut c = tokio::io::BufReader::new(s);
    tokio::time::timeout(limit, async {
        c.get_mut().write_all(req).await?;
        read_response(&mut c).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no answer in {limit:?}")))?
}

// ---- entering namespaces -------------------------------------------------------

pub(super) fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Move the calling thread into the network namespace open as `f`.
pub(super) fn enter_fd(f: &File) -> io::Result<()> {
    // nix's `sched` feature is not enabled in this crate; libc is a dependency.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a new thread that entered network namespace `ns` (a thread's
/// network namespace is its own; sockets keep the namespace they were made in).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let path = netns_path(ns);
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> io::Result<T> {
            enter_fd(&File::open(&path)?)?;
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// `in_netns` for async code: the caller's task waits without blocking a worker.
pub async fn in_netns_async<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let path = netns_path(ns);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let r = File::open(&path).and_then(|f| enter_fd(&f)).map(|()| f());
            let _ = tx.send(r);
        })?;
    rx.await
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// A blocking TCP connection opened from inside `ns`.
pub fn connect_std(ns: &str, to: SocketAddr, limit: Duration) -> io::Result<std::net::TcpStream> {
    in_netns(ns, move || std::net::TcpStream::connect_timeout(&to, limit))?
}

/// A tokio TCP connection from inside `ns` (from `src` if given): the socket
/// is made (and bound) on a thread in the namespace, then connected here.
pub async fn connect(
    ns: &str,
    src: Option<IpAddr>,
    to: SocketAddr,
    limit: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let socket = in_netns_async(ns, move || -> io::Result<tokio::net::TcpSocket> {
        let s = if to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(ip) = src {
            s.bind(SocketAddr::new(ip, 0))?;
        }
        Ok(s)
    })
    .await??;
    tokio::time::timeout(limit, socket.connect(to))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect {to}: no answer in {limit:?}"),
            )
        })?
}

/// One Redis command (RESP) from inside `ns`; the raw reply.
pub fn resp_command(
    ns: &str,
    to: SocketAddr,
    args: &[&str],
    limit: Duration,
) -> io::Result<String> {
    let mut s = connect_std(ns, to, limit)?;
    s.set_read_timeout(Some(limit))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Does this thread's network namespace have `want` on some interface?
pub(super) fn local_has(want: IpAddr) -> io::Result<bool> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = false;
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: getifaddrs returned a valid list, freed below.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            let addr = match family {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            found |= addr == Some(want);
        }
        p = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(ifap) };
    Ok(found)
}
