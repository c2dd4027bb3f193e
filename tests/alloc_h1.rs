//! Heap allocations per proxied keep-alive request on tether's HTTP/1.1
//! path (issue 14: at most 8 on the fast path), counted by a global
//! allocator on the proxy's own thread only: the client and the backend run
//! on other threads, so their allocations are not counted.
//!
//! The fast path: a kept-alive client connection, a session key from a
//! header already in the store (a cached hit), a kept-alive upstream
//! connection from the pool, a small `Content-Length` answer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tether::config;
use tether::l7::listener::ListenerRt;
use tether::metrics::Metrics;
use tether::pool::PoolRt;
use tether::store::memory::MemoryStore;
use tether::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Count allocations made on this thread.
    static COUNT_HERE: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNT_HERE.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if COUNT_HERE.try_with(Cell::get).unwrap_or(false) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";

/// A backend that answers every request head with `RESPONSE`, on its own thread.
fn backend() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 8192];
                let mut have = 0;
                loop {
                    let Ok(n) = s.read(&mut buf[have..]) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        if s.write_all(RESPONSE).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

/// One request and its whole answer on the kept-alive connection `c`.
async fn round(c: &mut tokio::net::TcpStream, buf: &mut [u8], req: &[u8]) {
    c.write_all(req).await.unwrap();
    let mut have = 0;
    loop {
        let n = c.read(&mut buf[have..]).await.unwrap();
        assert!(n > 0, "the proxy closed");
        have += n;
        if buf[..have].ends_with(b"\r\n\r\nok") {
            assert!(
                buf.starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&buf[..have])
            );
            return;
        }
    }
}

#[test]
fn a_kept_alive_request_allocates_at_most_eight_times() {
    let backend = backend();
    let snap = config::parse(
        std::path::Path::new("inline.yaml"),
        &format!(
            "pools:\n  app:\n    backends:\n      - {{ id: b1, addr: \"{backend}\" }}\n\
             listeners:\n  - {{ name: web, bind: \"127.0.0.1:1\", pool: app, affinity: {{ key: {{ header: X-Device }} }} }}\n"
        ),
    )
    .expect("inline config");
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // The proxy: its own single-threaded runtime on its own thread.
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let metrics = Arc::new(Metrics::new());
            let store = MemoryStore::open(&snap.store).unwrap();
            let pool = Arc::new(PoolRt::new(
                snap.pools[0].clone(),
                store.pool("app"),
                metrics.clone(),
            ));
            let l = Arc::new(ListenerRt::new(
                snap.listeners[0].clone(),
                pool,
                None,
                Vec::new(),
                &metrics,
                None,
            ));
            proxy.set_nonblocking(true).unwrap();
            let proxy = tokio::net::TcpListener::from_std(proxy).unwrap();
            let (tcp, peer) = proxy.accept().await.unwrap();
            COUNT_HERE.with(|c| c.set(true));
            let _ = tether::l7::h1::serve(tcp, peer, &l, &stop).await;
            COUNT_HERE.with(|c| c.set(false));
        });
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (warm, measured) = (200, 2000);
    let per_request = rt.block_on(async move {
        let mut c = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
        let req = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Device: dev-1\r\n\r\n";
        let mut buf = vec![0u8; 4096];
        for _ in 0..warm {
            round(&mut c, &mut buf, req).await;
        }
        let before = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..measured {
            round(&mut c, &mut buf, req).await;
        }
        let after = ALLOCS.load(Ordering::SeqCst);
        drop(c);
        (after - before) as f64 / measured as f64
    });
    let _ = stop_tx.send(true);
    server.join().unwrap();
    println!("heap allocations per proxied keep-alive request: {per_request:.2}");
    assert!(
        per_request <= 8.0,
        "{per_request:.2} allocations per request"
    );
}
