//! pingora alone, for the load harness (`benches/load/run.sh`): a
//! `ProxyHttp` that forwards every request to one fixed peer, no
//! stickiness, no header rewriting, mimalloc like tether, one worker thread.
//! It shows what pingora's HTTP/1 proxy loop costs by itself, beside tether
//! (its own HTTP/1.1 path), HAProxy and nginx.
//!
//! ```text
//! cargo run --release --example bare_pingora -- --listen 127.0.0.1:8081 --peer 127.0.0.1:9001
//! ```

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    peer: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.peer, false, String::new())))
    }
}

fn usage() -> ! {
    eprintln!("usage: bare_pingora --listen ADDR:PORT --peer ADDR:PORT");
    std::process::exit(2);
}

fn main() {
    let (mut listen, mut peer) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next(),
            "--peer" => peer = args.next().and_then(|p| p.parse().ok()),
            _ => usage(),
        }
    }
    let (Some(listen), Some(peer)) = (listen, peer) else {
        usage()
    };
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { peer });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    println!("bare_pingora listening on {listen}, peer {peer}");
    server.run_forever();
}
