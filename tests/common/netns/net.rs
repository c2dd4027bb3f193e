//! Links and addresses of the lab: link up/down, cutting a node from Redis,
//! who holds an address, and sampling that over time.

use super::*;

impl Lab {
    // ---- links and addresses ------------------------------------------------

    /// Take `who`'s LAN link (its `eth0`) down: the bridge sees no carrier.
    pub fn link_down(&self, who: &str) {
        ip(&["-n", &self.ns(who), "link", "set", LAN_IF, "down"]);
    }

    pub fn link_up(&self, who: &str) {
        ip(&["-n", &self.ns(who), "link", "set", LAN_IF, "up"]);
    }

    /// Cut node `who` from Redis alone: its link is taken down on the Redis
    /// side, so the node keeps its route and its packets to Redis vanish (no
    /// reset, no unreachable): a partition, not a refusal. The LAN is untouched.
    pub fn cut_redis(&self, who: &str) {
        let peer = format!("to-{}", node_letter(who));
        ip(&["-n", &self.ns("redis"), "link", "set", &peer, "down"]);
    }

    /// Let node `who` reach Redis at `addr` (the other node's Redis address)
    /// over its own link, so that both nodes can share one config text.
    pub fn route_redis(&self, who: &str, addr: &str) {
        let (ns, via) = (self.ns(who), self.redis_ip(who));
        ip(&["-n", &ns, "route", "add", &format!("{addr}/32"), "via", via]);
    }

    pub fn restore_redis(&self, who: &str) {
        let peer = format!("to-{}", node_letter(who));
        ip(&["-n", &self.ns("redis"), "link", "set", &peer, "up"]);
    }

    /// Add `cidr` (e.g. `198.18.0.31/24`) to `who`'s LAN interface.
    pub fn add_address(&self, who: &str, cidr: &str) {
        ip(&["-n", &self.ns(who), "addr", "add", cidr, "dev", LAN_IF]);
    }

    pub fn del_address(&self, who: &str, cidr: &str) {
        ip(&["-n", &self.ns(who), "addr", "del", cidr, "dev", LAN_IF]);
    }

    /// Every address of `who` (any interface), without prefix length, as
    /// listed by `ip -n NS -o addr show`.
    pub fn addresses(&self, who: &str) -> Vec<String> {
        let out = ip(&["-n", &self.ns(who), "-o", "addr", "show"]);
        out.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet" || *w == "inet6")?;
                Some(words.next()?.split('/').next()?.to_string())
            })
            .collect()
    }

    /// Does `who` have address `addr` (`ip -n NS -o addr show`)?
    pub fn has_address(&self, who: &str, addr: &str) -> bool {
        let want: IpAddr = addr.parse().expect("an IP address");
        self.addresses(who)
            .iter()
            .any(|a| a.parse::<IpAddr>().ok() == Some(want))
    }

    /// The nodes (`"a"`, `"b"`) that have `addr` right now.
    pub fn holders(&self, addr: &str) -> Vec<&'static str> {
        ["a", "b"]
            .into_iter()
            .filter(|n| self.has_address(n, addr))
            .collect()
    }

    /// Poll (every 20 ms) until `who` has `addr` (`present`) or not; the time
    /// it took. Panics after `limit` with the addresses of both nodes.
    pub async fn wait_address(
        &self,
        who: &str,
        addr: &str,
        present: bool,
        limit: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if self.has_address(who, addr) == present {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!(
                    "{} {} {addr} after {limit:?}; node-a has {:?}, node-b has {:?}",
                    host(who),
                    if present { "still lacks" } else { "still has" },
                    self.addresses("a"),
                    self.addresses("b"),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sample, every `every`, whether node-a and node-b have `addr`, on a
    /// thread of its own until `AddressWatch::stop`. Each sample reads a, b,
    /// then a again, in-process (`getifaddrs` after `setns`: microseconds
    /// apart, where `ip` would take milliseconds), and counts as *both* only
    /// if a had the address before and after b had it, so a clean hand-over
    /// between two reads is not mistaken for two owners.
    pub fn watch_address(&self, addr: &str, every: Duration) -> AddressWatch {
        let want: IpAddr = addr.parse().expect("an IP address");
        let a = File::open(netns_path(&self.ns("a"))).expect("node-a netns");
        let b = File::open(netns_path(&self.ns("b"))).expect("node-b netns");
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let handle = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("netns-watch".into())
                .spawn(move || {
                    let mut samples = Vec::new();
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let read = |f: &File| -> bool {
                            enter_fd(f).expect("setns");
                            local_has(want).expect("getifaddrs")
                        };
                        let a1 = read(&a);
                        let b1 = read(&b);
                        let a2 = read(&a);
                        samples.push(Sample {
                            at: start.elapsed(),
                            a: a2,
                            b: b1,
                            both: a1 && b1 && a2,
                        });
                        next += every;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                    samples
                })
                .expect("watch thread")
        };
        AddressWatch {
            stop,
            handle: Some(handle),
            start,
        }
    }
}

/// One `AddressWatch` sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Since the watch started.
    pub at: Duration,
    pub a: bool,
    pub b: bool,
    /// Both had the address at once (a, then b, then a again all had it).
    pub both: bool,
}

/// A sampler started by `Lab::watch_address`; stops (and joins) on drop.
pub struct AddressWatch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<Sample>>>,
    pub start: Instant,
}

impl AddressWatch {
    /// Stop sampling and return the samples.
    pub fn stop(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .handle
            .take()
            .map(|h| h.join().expect("watch thread"))
            .unwrap_or_default();
        Samples(samples)
    }
}

impl Drop for AddressWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What an `AddressWatch` saw.
#[derive(Debug, Clone)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Samples in which both nodes had the address.
    pub fn both(&self) -> usize {
        self.0.iter().filter(|s| s.both).count()
    }

    /// The first sample at or after `after` matching `pred`.
    pub fn first(&self, after: Duration, pred: impl Fn(&Sample) -> bool) -> Option<Duration> {
        self.0
            .iter()
            .find(|s| s.at >= after && pred(s))
            .map(|s| s.at)
    }

    /// A compact history for failure messages: `0ms a; 2350ms -; 4100ms b`.
    pub fn timeline(&self) -> String {
        let mut out = Vec::new();
        let mut last = None;
        for s in &self.0 {
            let now = match (s.a, s.b, s.both) {
                (_, _, true) => "BOTH",
                (true, true, false) => "a+b?",
                (true, false, _) => "a",
                (false, true, _) => "b",
                (false, false, _) => "-",
            };
            if last != Some(now) {
                out.push(format!("{}ms {now}", s.at.as_millis()));
                last = Some(now);
            }
        }
        format!("{} samples: {}", self.0.len(), out.join("; "))
    }
}
