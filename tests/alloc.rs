//! The per-request hot path allocates nothing on a store hit: key
//! extraction, cookie verification and `route_hit`, counted by a global
//! allocator over many iterations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use tether::affinity::cookie::CookieSigner;
use tether::affinity::key;
use tether::config;
use tether::metrics::Metrics;
use tether::pool::{Decision, PoolRt};
use tether::store::memory::MemoryStore;
use tether::store::Store;

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn store_hit_path_does_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let snap = config::parse(
        std::path::Path::new("inline.yaml"),
        &format!(
            "store: {{ max_sessions: 1000000, session_ttl: 1h }}\npools:\n  app:\n    hash: {hash}{bounded}\n    backends:\n{backends}\
             listeners:\n  - {{ name: web, bind: \"127.0.0.1:1\", pool: app, affinity: {{ key: source_ip }} }}\n",
            hash = "maglev",
            bounded = "\n    bounded_load: 1.25",
            backends = (0..4).map(|i| format!("      - {{ id: b{i}, addr: \"127.0.0.1:{}\" }}\n", 9000 + i)).collect::<String>(),
        ),
    )
    .expect("inline config");
    let store = MemoryStore::open(&snap.store).unwrap();
    let pool = Arc::new(PoolRt::new(
        snap.pools[0].clone(),
        store.pool("app"),
        Arc::new(Metrics::new()),
    ));
    let signer = CookieSigner::new(b"0123456789abcdef0123456789abcdef");
    let id = signer.new_id().unwrap();
    let cookie = signer.sign(&id, 1_900_000_000);
    rt.block_on(async {
        pool.route("device-1").await.unwrap();
        pool.route(&id).await.unwrap();
    });
    let name = HeaderName::from_static("x-device-id");
    let mut headers = HeaderMap::new();
    headers.insert(&name, HeaderValue::from_static("device-1"));
    headers.insert(
        "cookie",
        HeaderValue::from_str(&format!("a=b; TETHER={cookie}")).unwrap(),
    );

    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..1000 {
        let k = key::header(&headers, &name).unwrap();
        assert!(matches!(pool.route_hit(k), Some(Decision::Backend { .. })));
        // the router's cookie path: id -> store hit -> value checked against the stamp
        let v = key::cookie(&headers, "TETHER").unwrap();
        let d = CookieSigner::id_of(v).and_then(|id| pool.route_hit(id));
        let meta = match &d {
            Some(Decision::Backend { live: Some(g), .. }) => Some(g.meta()),
            _ => None,
        };
        assert!(signer.verify_with(v, meta).is_some());
        assert!(matches!(d, Some(Decision::Backend { .. })));
        let ip = key::IpKey::new("10.1.2.3".parse().unwrap(), config::IpMask::default());
        assert!(pool.route_hit(ip.as_str()).is_none(), "unknown key misses");
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(
        ALLOCS.load(Ordering::SeqCst),
        0,
        "allocations on the hit path"
    );
}
