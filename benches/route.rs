//! The per-request affinity hot path: key extraction, cookie verification,
//! store hit, routing decision. Target: < 150 ns and no allocation on a hit
//! (allocation-freedom is asserted by `tests/alloc.rs`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use tether::affinity::cookie::CookieSigner;
use tether::affinity::key;
use tether::config;
use tether::metrics::Metrics;
use tether::pool::{Decision, PoolRt};
use tether::store::memory::MemoryStore;
use tether::store::Store;

fn pool(hash: &str, n: usize) -> (Arc<PoolRt>, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let snap = config::parse(
        std::path::Path::new("inline.yaml"),
        &format!(
            "store: {{ max_sessions: 1000000, session_ttl: 1h }}\npools:\n  app:\n    hash: {hash}{bounded}\n    backends:\n{backends}\
             listeners:\n  - {{ name: web, bind: \"127.0.0.1:1\", pool: app, affinity: {{ key: source_ip }} }}\n",
            hash = hash,
            bounded = "",
            backends = (0..n).map(|i| format!("      - {{ id: b{i}, addr: \"127.0.0.1:{}\" }}\n", 9000 + i)).collect::<String>(),
        ),
    )
    .expect("inline config");
    let store = MemoryStore::open(&snap.store).unwrap();
    let pool = Arc::new(PoolRt::new(
        snap.pools[0].clone(),
        store.pool("app"),
        Arc::new(Metrics::new()),
    ));
    (pool, rt)
}

fn hot_path(c: &mut Criterion) {
    let (pool, rt) = pool("maglev", 4);
    let signer = CookieSigner::new(b"0123456789abcdef0123456789abcdef");
    let id = signer.new_id().unwrap();
    let cookie = signer.sign(&id, 1_900_000_000);
    rt.block_on(async {
        for i in 0..10_000 {
            let _ = pool.route(&format!("device-{i}")).await.unwrap();
        }
        let _ = pool.route(&id).await.unwrap();
    });

    let name = HeaderName::from_static("x-device-id");
    let mut headers = HeaderMap::new();
    headers.insert(&name, HeaderValue::from_static("device-4242"));
    headers.insert(
        "cookie",
        HeaderValue::from_str(&format!("a=b; TETHER={cookie}")).unwrap(),
    );

    let mut g = c.benchmark_group("hot_path");
    g.bench_function("header_key+store_hit", |b| {
        b.iter(|| {
            let k = key::header(black_box(&headers), &name).unwrap();
            match pool.route_hit(k) {
                Some(Decision::Backend { backend, .. }) => black_box(backend),
                _ => unreachable!(),
            };
        })
    });
    g.bench_function("tether_cookie(verify)+store_hit", |b| {
        b.iter(|| {
            // what l7::router does: find the session by the cookie's id, then
            // verify the value against the session's stamp (HMAC only the first time)
            let v = key::cookie(black_box(&headers), "TETHER").unwrap();
            let d = CookieSigner::id_of(v).and_then(|id| pool.route_hit(id));
            let meta = match &d {
                Some(Decision::Backend { live: Some(g), .. }) => Some(g.meta()),
                _ => None,
            };
            let k = signer.verify_with(v, meta).unwrap();
            black_box((k, d));
        })
    });
    g.bench_function("tether_cookie(full_hmac)", |b| {
        b.iter(|| black_box(signer.verify(key::cookie(black_box(&headers), "TETHER").unwrap())))
    });
    g.bench_function("new_session_pick+insert", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let k = format!("fresh-{i}");
            black_box(rt.block_on(pool.route(&k)).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
