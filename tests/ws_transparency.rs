//! WebSocket transparency as a property (issue 12): random sequences of
//! frames, valid and not (fragments, interleaved control frames, 7/16/64-bit
//! lengths, masked and unmasked, reserved opcodes, stray bytes), cut at
//! random points, sent both ways at once, direct and through tether. Each
//! side must receive exactly what the other sent, then a FIN and nothing
//! more: tether adds no byte unless it decides to close, which it does not
//! here.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::rawws::{self, frame, Backend, End, Reply};
use common::Tether;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
enum Piece {
    Frame {
        fin: bool,
        opcode: u8,
        mask: Option<[u8; 4]>,
        len: usize,
        fill: u8,
    },
    /// Bytes that need not make sense.
    Junk(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    let len = prop_oneof![
        8 => 0usize..=125,
        3 => 126usize..=2000,
        1 => 65_536usize..=70_000,
    ];
    prop_oneof![
        9 => (any::<bool>(), 0u8..16, proptest::option::of(any::<[u8; 4]>()), len, any::<u8>())
            .prop_map(|(fin, opcode, mask, len, fill)| Piece::Frame { fin, opcode, mask, len, fill }),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Piece::Junk),
    ]
}

fn bytes_of(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Frame {
                fin,
                opcode,
                mask,
                len,
                fill,
            } => out.extend(frame(*fin, *opcode, *mask, &vec![*fill; *len])),
            Piece::Junk(b) => out.extend_from_slice(b),
        }
    }
    out
}

/// One direction's bytes and where its writes are cut.
fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (
        proptest::collection::vec(piece(), 0..12),
        proptest::collection::vec(1usize..3000, 1..20),
    )
        .prop_map(|(pieces, cuts)| (bytes_of(&pieces), cuts))
}

async fn send_in_pieces(s: &mut tokio::net::tcp::OwnedWriteHalf, data: &[u8], cuts: &[usize]) {
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = cuts[i % cuts.len()].min(data.len() - at);
        s.write_all(&data[at..at + n]).await.unwrap();
        at += n;
        i += 1;
        if i % 3 == 0 {
            tokio::task::yield_now().await;
        }
    }
    s.shutdown().await.unwrap();
}

/// Both sides send at once; what each received, and how its read ended.
async fn exchange(
    client: TcpStream,
    client_rest: Vec<u8>,
    backend: TcpStream,
    up: &(Vec<u8>, Vec<usize>),
    down: &(Vec<u8>, Vec<usize>),
) -> ((Vec<u8>, End), (Vec<u8>, End)) {
    let (mut c_rd, mut c_wr) = client.into_split();
    let (mut b_rd, mut b_wr) = backend.into_split();
    let (up, down) = (up.clone(), down.clone());
    let cw = tokio::spawn(async move { send_in_pieces(&mut c_wr, &up.0, &up.1).await });
    let bw = tokio::spawn(async move { send_in_pieces(&mut b_wr, &down.0, &down.1).await });
    let limit = Duration::from_secs(10);
    let cr = tokio::spawn(async move { read_all(&mut c_rd, limit).await });
    let br = tokio::spawn(async move { read_all(&mut b_rd, limit).await });
    cw.await.unwrap();
    bw.await.unwrap();
    let (mut at_client, c_end) = cr.await.unwrap();
    at_client.splice(0..0, client_rest);
    (br.await.unwrap(), (at_client, c_end))
}

async fn read_all(s: &mut tokio::net::tcp::OwnedReadHalf, limit: Duration) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        match tokio::time::timeout(limit, s.read(&mut chunk)).await {
            Err(_) => return (out, End::StillOpen),
            Ok(Ok(0)) => return (out, End::Fin),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return (out, End::Error(e.kind())),
        }
    }
}

/// A direct pair: a client socket connected straight to a socket the
/// "backend" accepted, past a handshake of the same shape.
async fn direct_pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    let c = TcpStream::connect(addr).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (c, b)
}

#[test]
fn frames_pass_through_tether_untouched_both_ways() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (t, b) = rt.block_on(async {
        let b = Backend::start(Reply::Accept(Vec::new())).await;
        let yaml = format!(
            "pools:\n  app:\n    backends:\n      - {{ id: b1, addr: \"{}\" }}\n\
             listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
             affinity: {{ key: source_ip }}\n",
            b.addr
        );
        (Tether::start(&yaml), b)
    });
    let web = t.addr("web");
    // The runner's closure is `Fn`: the backend's queue of connections sits in a cell.
    let b = tokio::sync::Mutex::new(b);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(stream(), stream()), |(up, down)| {
            let (direct, through) = rt.block_on(async {
                let (c, s) = direct_pair().await;
                let direct = exchange(c, Vec::new(), s, &up, &down).await;
                let client = rawws::upgrade(web, &[], b"").await;
                assert_eq!(client.status(), 101);
                let backend = b.lock().await.next().await;
                assert!(backend.early.is_empty());
                let through =
                    exchange(client.stream, client.rest, backend.stream, &up, &down).await;
                (direct, through)
            });
            let ((at_backend, b_end), (at_client, c_end)) = through;
            prop_assert_eq!(&direct.0 .0, &up.0);
            prop_assert_eq!(&direct.1 .0, &down.0);
            prop_assert!(
                at_backend == up.0,
                "the backend received {} bytes, the client sent {}",
                at_backend.len(),
                up.0.len()
            );
            prop_assert!(
                at_client == down.0,
                "the client received {} bytes, the backend sent {}",
                at_client.len(),
                down.0.len()
            );
            prop_assert_eq!(b_end, End::Fin);
            prop_assert_eq!(c_end, End::Fin);
            Ok(())
        })
        .unwrap();
}
