//! Property tests of every parser that sees peer bytes (issue 13): PROXY
//! v1/v2, the ClientHello/SNI reader, the `prefix` reader, the WebSocket
//! frame tracker, cookie verification, the request-head guard, a backend's
//! response head and chunked framing, and config loading from mutated YAML.
//!
//! Every property checks that nothing panics and that the parser's peak heap
//! use stays within [`bound`] of its input, measured by the counting
//! allocator below (config loading, which cannot meet it, within a linear
//! bound of its own: `config::config_bound`); most add a property of their
//! own (round trips, the same answer at every split of the input, exact
//! accept/reject sets).
//!
//! Case counts are small so CI stays fast; `PROPTEST_CASES=N` raises them
//! and `PROPTEST_RNG_SEED=N` pins the otherwise random seed. Failures are
//! not persisted: the report prints the shrunk input, to be kept as a
//! regression test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use proptest::test_runner::Config;
use tokio::io::{AsyncRead, ReadBuf};

mod chunked;
mod config;
mod cookie;
mod head_guard;
mod prefix;
mod proxy_proto;
mod response;
mod sni;
mod wsframe;
mod yaml_shapes;

/// Counts the heap bytes live on the *current thread* while [`peak`] runs.
/// Per-thread, so the test harness may run properties in parallel: another
/// thread's allocations never land in this thread's figure. (A block freed on
/// another thread than the one that allocated it is miscounted; the parsers
/// measured here run on one thread.)
struct Counting;

thread_local! {
    /// Measuring: between `peak`'s start and end on this thread.
    static ON: Cell<bool> = const { Cell::new(false) };
    /// Bytes allocated minus bytes freed since the measurement started.
    static NOW: Cell<isize> = const { Cell::new(0) };
    /// Highest `NOW` seen.
    static TOP: Cell<isize> = const { Cell::new(0) };
}

/// Adds `delta` to this thread's live bytes if it is measuring. `try_with`:
/// allocations during thread teardown, after the slots are gone, are ignored.
fn account(delta: isize) {
    let _ = ON.try_with(|on| {
        if on.get() {
            let now = NOW.with(|n| {
                n.set(n.get() + delta);
                n.get()
            });
            TOP.with(|t| t.set(t.get().max(now)));
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping only
// touches const-initialised thread-locals without destructors, which never
// allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        account(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        account(l.size() as isize);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        account(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    // Counted as the size change (what a growing Vec really holds), not as a
    // fresh block next to the old one.
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        account(new as isize - l.size() as isize);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Stops the measurement even when `f` panics (proptest catches the panic
/// and goes on shrinking on this thread).
struct Stop;

impl Drop for Stop {
    fn drop(&mut self) {
        ON.with(|on| on.set(false));
    }
}

/// Runs `f` and returns its result with the peak of the heap bytes it held
/// at once on this thread (bytes it frees count down again).
pub fn peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    NOW.with(|n| n.set(0));
    TOP.with(|t| t.set(0));
    ON.with(|on| on.set(true));
    let stop = Stop;
    let r = f();
    drop(stop);
    (r, TOP.with(Cell::get) as usize)
}

/// The bound on a parser's peak heap use for `input` bytes.
pub fn bound(input: usize) -> usize {
    4 * input + 64 * 1024
}

/// `cases` unless `PROPTEST_CASES` says otherwise; no failure files.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Byte strategies shared by the modules.
pub mod gen {
    use proptest::prelude::*;

    /// `bytes` changed by one of: a bit flip, a truncation, a byte
    /// overwritten, a 2-byte field set to a big length, a slice duplicated.
    pub fn mutate(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let n = bytes.len().max(1);
        (0..6u8, 0..n, 0..n, any::<u8>(), any::<u16>()).prop_map(move |(op, a, b, byte, word)| {
            let mut v = bytes.clone();
            if v.is_empty() {
                return vec![byte];
            }
            match op {
                0 => v[a] ^= 1 << (byte % 8),
                1 => v.truncate(a),
                2 => v[a] = byte,
                3 => {
                    let w = word | 0x8000;
                    v[a] = (w >> 8) as u8;
                    if a + 1 < v.len() {
                        v[a + 1] = w as u8;
                    }
                }
                4 => {
                    let (lo, hi) = (a.min(b), a.max(b));
                    let dup = v[lo..hi].to_vec();
                    v.splice(hi..hi, dup);
                }
                _ => v.insert(a, byte),
            }
            v
        })
    }
}

#[test]
fn the_allocator_counts_this_thread_only() {
    let (_, p) = peak(|| {
        let v = vec![0u8; 100_000];
        drop(v);
        let w = vec![0u8; 10_000];
        std::hint::black_box(&w);
    });
    assert!((100_000..110_000).contains(&p), "peak {p}");
    let (_, p) = peak(|| {
        std::thread::scope(|s| {
            s.spawn(|| std::hint::black_box(vec![0u8; 1 << 20]));
        })
    });
    assert!(p < 64 * 1024, "another thread's megabyte counted: {p}");
    let mut v: Vec<u8> = Vec::with_capacity(1000);
    let (_, p) = peak(|| v.reserve_exact(50_000));
    assert_eq!(p, 49_000, "realloc counted as its growth");
}

/// A peer's bytes in reads of the given sizes (in turn, cycled), then EOF.
/// Reads never wait, so no deadline of the reader's ever fires.
pub struct Chopped {
    data: Arc<Vec<u8>>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl Chopped {
    pub fn new(data: Arc<Vec<u8>>, sizes: Vec<usize>) -> Chopped {
        Chopped {
            data,
            at: 0,
            sizes,
            turn: 0,
        }
    }
}

impl AsyncRead for Chopped {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let want = me.sizes[me.turn % me.sizes.len()];
        me.turn += 1;
        let n = want.min(me.data.len() - me.at).min(buf.remaining());
        buf.put_slice(&me.data[me.at..me.at + n]);
        me.at += n;
        Poll::Ready(Ok(()))
    }
}
