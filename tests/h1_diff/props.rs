//! Property test of the new path (`web_t` only): random mutations of a few
//! valid requests (byte flips, insertions of CR, LF, SP, `:`, `,` and other
//! bytes that matter to framing, deletions, duplicated lines, truncation),
//! written on a fresh connection and half-closed. The new path must answer
//! or close within a bound (no hang, no panic), and must never forward
//! something the backend's strict parser frames differently from how tether
//! framed it: every request it forwards is one whole request to the backend
//! (nothing unframed left over, nothing the backend keeps waiting on, which
//! would show as a 504), one per backend answer the client gets.
//!
//! Bounded: `PROPTEST_CASES` cases (default 96), a few seconds in debug.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::backend::{Backend, GotKind};
use crate::client::{self, ClientConn, End, C};
use crate::common::Tether;

const SEEDS: &[&str] = &[
    "GET /a?x=1 HTTP/1.1\r\nHost: example.test\r\nX-Device: d1\r\n\r\n",
    "POST /p HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello",
    "POST /p HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    "GET /1 HTTP/1.1\r\nHost: example.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: example.test\r\n\r\n",
    "GET /ten HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "PUT /e HTTP/1.1\r\nHost: example.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "POST /p HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\nHost: example.test\r\n\r\n",
];

/// Bytes that move framing around when inserted.
const INSERTS: &[u8] = b"\r\n :,\t\0;0aF\x0b-";

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    DupLine(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, 1 << bit)),
        (any::<usize>(), prop::sample::select(INSERTS)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::DupLine),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(seed: &str, muts: &[Mutation]) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for m in muts {
        if b.is_empty() {
            break;
        }
        let len = b.len();
        match *m {
            Mutation::Flip(i, bit) => b[i % len] ^= bit,
            Mutation::Insert(i, c) => b.insert(i % (len + 1), c),
            Mutation::Delete(i) => {
                b.remove(i % len);
            }
            Mutation::DupLine(i) => {
                let starts: Vec<usize> = std::iter::once(0)
                    .chain(
                        b.windows(2)
                            .enumerate()
                            .filter(|(_, w)| w == b"\r\n")
                            .map(|(k, _)| k + 2),
                    )
                    .filter(|&k| k < len)
                    .collect();
                let s = starts[i % starts.len()];
                let e = b[s..]
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .map_or(len, |p| s + p + 2);
                let line = b[s..e].to_vec();
                b.splice(s..s, line);
            }
            Mutation::Truncate(i) => b.truncate(i % len),
        }
    }
    b
}

async fn one(b: &Backend, addr: std::net::SocketAddr, bytes: Vec<u8>) -> Result<(), String> {
    b.reset(Vec::new()).await;
    let conn = ClientConn {
        ops: vec![C::Send(bytes), C::Shut],
        expect: usize::MAX,
        heads: Vec::new(),
    };
    let out = client::run(addr, &conn, Duration::from_secs(4)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let got = b.got();
    if out.end == End::Timeout {
        return Err(format!(
            "no answer and no close within 4 s: {:?}",
            out.resps
        ));
    }
    if let Some(g) = got.iter().find(|g| matches!(g.kind, GotKind::Unframed(_))) {
        return Err(format!(
            "the backend could not frame what tether sent: {:?} in {:?}",
            g.kind,
            g.bytes.escape_ascii().to_string()
        ));
    }
    let answered = out
        .resps
        .iter()
        .filter(|r| r.header("x-backend").is_some() && !r.interim())
        .count();
    let complete = got.iter().filter(|g| g.kind == GotKind::Complete).count();
    if answered != complete {
        return Err(format!(
            "{complete} whole request(s) reached the backend, {answered} backend answer(s) reached the client; backend got {:?}",
            got.iter().map(|g| (g.kind.clone(), g.bytes.escape_ascii().to_string())).collect::<Vec<_>>()
        ));
    }
    if let Some(r) = out.resps.iter().find(|r| matches!(r.status, 502 | 504)) {
        return Err(format!(
            "{} from tether: the backend was left waiting or refused what it got",
            r.status
        ));
    }
    Ok(())
}

#[test]
fn mutated_requests_never_smuggle_or_hang() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let b = rt.block_on(Backend::start());
    let mut t = Tether::start(&crate::config(b.addr));
    let addr = t.addr("web_t");
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let strategy = (
        prop::sample::select(SEEDS),
        prop::collection::vec(mutation(), 1..4),
    );
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |(seed, muts)| {
        let bytes = apply(seed, &muts);
        rt.block_on(one(&b, addr, bytes.clone())).map_err(|e| {
            TestCaseError::fail(format!("{e}\nsent {:?}", bytes.escape_ascii().to_string()))
        })
    });
    eprintln!(
        "h1_diff props: {cases} cases in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        matches!(t.child.try_wait(), Ok(None)),
        "tether exited:\n{}",
        t.log_text()
    );
    assert!(
        !t.log_text().contains("panicked"),
        "tether panicked:\n{}",
        t.log_text()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
