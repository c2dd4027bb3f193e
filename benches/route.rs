//! The per-request affinity hot path: key extraction, cookie verification,
//! store hit, routing decision. Target: < 150 ns and no allocation on a hit
//! (allocation-freedom is asserted by `tests/alloc.rs`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use tether::affinity::cookie::CookieSigner;
use tether::affinity::key;
use tether::config::{self, HashKind};
use tether::metrics::Metrics;
use tether::pool::{Decision, PoolRt};
use tether::store::memory::MemoryStore;
use tether::store::Store;

fn pool(hash: HashKind, n: usize) -> (Arc<PoolRt>, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = MemoryStore::open(&config::Store {
        kind: config::StoreKind::Embedded { path: None },
        session_ttl: Duration::from_secs(3600),
        max_sessions: 1_000_000,
    })
    .unwrap();
    let cfg = config::Pool {
        name: "app".into(),
        hash,
        bounded_load: None,
        on_backend_down: config::OnBackendDown::Migrate,
        failback: config::Failback::Stay,
        drain_timeout: Duration::from_secs(600),
        timeouts: config::PoolTimeouts {
            connect: Duration::from_secs(2),
            response_header: Duration::from_secs(30),
        },
        health: config::Health {
            kind: config::HealthKind::None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
        },
        backends: (0..n)
            .map(|i| config::Backend {
                id: format!("b{i}").into(),
                addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                weight: 1,
            })
            .collect(),
    };
    let pool = Arc::new(PoolRt::new(
        cfg,
        store.pool("app"),
        Arc::new(Metrics::new()),
    ));
    (pool, rt)
}

fn hot_path(c: &mut Criterion) {
    let (pool, rt) = pool(HashKind::Maglev, 4);
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
            let v = key::cookie(black_box(&headers), "TETHER").unwrap();
            let k = signer.verify(v).unwrap();
            match pool.route_hit(k.id) {
                Some(Decision::Backend { backend, .. }) => black_box(backend),
                _ => unreachable!(),
            };
        })
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
