//! Criterion benchmarks for `affinity::hash`: the per-request costs (key hashing,
//! picks for each algorithm at small and large pool sizes) and the rebuild cost
//! paid whenever a pool's eligible set changes (Maglev table fill).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tether::affinity::hash::{hash_key, Maglev, Member, Ring};
use tether::config::HashKind;

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            id: Arc::from(format!("backend-{i}")),
            weight: 1,
        })
        .collect()
}

fn bench_hash_key(c: &mut Criterion) {
    // Length of a typical base64url session id (16 random bytes).
    let key = b"Zm9vYmFyYmF6cXV4MTIzNA";
    assert_eq!(key.len(), 22);
    c.bench_function("hash_key/22B", |b| b.iter(|| hash_key(black_box(key))));
}

fn bench_pick(c: &mut Criterion) {
    let keys: Vec<u64> = (0..1024u32).map(|i| hash_key(&i.to_le_bytes())).collect();
    let mut group = c.benchmark_group("pick");
    for kind in [HashKind::Maglev, HashKind::Ketama, HashKind::Rendezvous] {
        for n in [4, 100] {
            let ring = Ring::build(kind, &members(n));
            let id = BenchmarkId::new(format!("{kind:?}"), n);
            group.bench_with_input(id, &ring, |b, ring| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    ring.pick(black_box(keys[i]))
                })
            });
        }
    }
    group.finish();
}

fn bench_maglev_build(c: &mut Criterion) {
    let ms = members(100);
    let mut group = c.benchmark_group("build");
    group.sample_size(20);
    group.bench_function("maglev/100x65537", |b| {
        b.iter(|| Maglev::new(black_box(&ms)))
    });
    group.finish();
}

criterion_group!(benches, bench_hash_key, bench_pick, bench_maglev_build);
criterion_main!(benches);
