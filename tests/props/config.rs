//! Config loading (`config::parse`) from mutated YAML: valid configs with
//! bytes flipped, cuts, lines duplicated, removed or swapped, random keys
//! inserted, numbers made huge, durations like `300000000000y`, anchors and
//! aliases. Either a snapshot or errors located `FILE:LINE:COL`, no panic.

use std::path::Path;

use proptest::prelude::*;
use tether::config;

use crate::peak;

/// The issue's `4 x input + 64 KiB` cannot hold for config: a valid 1 KB
/// file already peaks near 110 KB (serde_yaml's events and values, the
/// position index, the snapshot: a few hundred bytes per YAML node, and a
/// node can be two bytes of text). Config is the operator's file, not peer
/// bytes; what is checked is that loading stays linear. The quadratic cases
/// fixed with these tests (tests/props/yaml_shapes.rs) broke this by 10-50x.
pub fn config_bound(input: usize) -> usize {
    512 * input + 4 * 1024 * 1024
}

/// Checks a parse result: a snapshot, or errors each located in `text`.
pub fn check_located(
    text: &str,
    file: &Path,
    r: &Result<config::Snapshot, config::ConfigErrors>,
) -> Result<(), TestCaseError> {
    let Err(errors) = r else {
        return Ok(());
    };
    let lines = text.split('\n').count();
    let widest = text
        .split('\n')
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    prop_assert!(!errors.is_empty());
    for e in errors {
        prop_assert_eq!(&e.file, file);
        prop_assert!(
            e.line >= 1 && e.line <= lines + 1,
            "line {} of {}: {}",
            e.line,
            lines,
            e
        );
        prop_assert!(
            e.col >= 1 && e.col <= widest + 2,
            "col {} (widest {}): {}",
            e.col,
            widest,
            e
        );
        let head = format!("{}:{}:{}: ", file.display(), e.line, e.col);
        prop_assert!(e.to_string().starts_with(&head));
    }
    Ok(())
}

/// Two valid configs between them using most sections and key kinds.
const BASES: &[&str] = &[
    "\
admin:
  listen: 127.0.0.1:9090
  hosts: [proxy.example]
server:
  shutdown_grace: 30s
  upgrade_grace: 10m
  max_connections: 50000
  trusted_proxies: [10.0.0.0/8, 192.168.1.1]
store:
  kind: embedded
  session_ttl: 24h
  max_sessions: 1000000
  provisional_ttl: 2m
pools:
  app:
    hash: maglev
    bounded_load: 1.25
    on_backend_down: migrate
    failback: stay
    drain_timeout: 10m
    close_spread: 5s
    timeouts: { connect: 2s, response_header: 30s }
    health:
      kind: http
      method: GET
      path: /healthz
      expect_status: [200, 204]
      interval: 1s
      timeout: 500ms
      rise: 2
      fall: 2
      slowstart: 30s
      passive: { enabled: true, on_5xx: false }
    backends:
      - { id: app-1, addr: \"127.0.0.1:9001\", weight: 2 }
      - { id: app-2, addr: \"127.0.0.1:9002\" }
      - id: app-3
        addr: \"[::1]:9003\"
listeners:
  - name: web
    bind: 127.0.0.1:8080
    pool: app
    affinity:
      key: { cookie: { name: TETHER, insert: true } }
  - name: api
    bind: \"[::1]:8081\"
    pool: app
    affinity: { key: { header: X-Device-Id } }
",
    "\
admin: { listen: \"127.0.0.1:0\" }
store: { kind: embedded, max_sessions: 1000, session_ttl: 1h }
pools:
  dev:
    hash: ketama
    send_proxy: v2
    health: { kind: tcp, interval: 2s, timeout: 1s }
    backends:
      - { id: d1, addr: \"127.0.0.1:7001\" }
      - { id: d2, addr: \"127.0.0.1:7002\", weight: 3 }
listeners:
  - name: devices
    bind: \"127.0.0.1:7000\"
    protocol: tcp
    pool: dev
    affinity:
      key: { prefix: { pattern: '^HELLO device=([a-z0-9]+)\\n', max_bytes: 512, timeout: 500ms } }
      fallback: source_ip
  - name: passthrough
    bind: \"127.0.0.1:7443\"
    protocol: tcp
    pool: dev
    affinity: { key: sni, fallback: reject }
",
];

const KEYS: &[&str] = &[
    "listen",
    "bind",
    "pool",
    "pools",
    "listeners",
    "kind",
    "hash",
    "backends",
    "id",
    "addr",
    "weight",
    "timeout",
    "interval",
    "max_sessions",
    "session_ttl",
    "max_bytes",
    "pattern",
    "key",
    "affinity",
    "fallback",
    "protocol",
    "health",
    "rise",
    "fall",
    "bounded_load",
    "<<",
    "vip",
    "store",
    "server",
    "admin",
    "tls",
    "send_proxy",
    "drain_timeout",
    "x",
    "",
];

const VALUES: &[&str] = &[
    "",
    "~",
    "null",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: {b: {c: 1}}}",
    "!!binary aGVsbG8=",
    "&a [1, 2]",
    "*a",
    "*missing",
    "'quoted'",
    "\"\\u0000\"",
    "true",
    "-1",
    "0",
    "300000000000y",
    "9999999999999999999ms",
    "18446744073709551616",
    "1e309",
    "NaN",
    ".inf",
    "0x7fffffff",
    "4294967296",
    "127.0.0.1:99999",
    "[::1]:8080",
    "1.5h",
    "1h1h",
    "ms",
    "-5s",
    "'(((('",
    "'([a-z]+)([0-9]+)'",
    "'^(.*)$'",
    "|\n  block",
    "? complex\n: key",
    "{x: *a}",
];

const HUGE: &[&str] = &[
    "99999999999999999999",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "4294967296",
    "1e309",
    "0.0000001",
    "-0",
    "0x10",
];

const DURATIONS: &[&str] = &[
    "300000000000y",
    "9999999999999999999ms",
    "18446744073709551615s",
    "0s",
    "-5s",
    "1.5h",
    "10",
    "ms",
    "1h1h",
    "10y",
    "11y",
    "1ns",
    "5 m",
    "1d",
    "",
];

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    DupLine(usize),
    DropLine(usize),
    SwapLines(usize, usize),
    Insert(usize, usize, String, String),
    Number(usize, &'static str),
    Duration(usize, &'static str),
    Bytes(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let key = prop_oneof![
        prop::sample::select(KEYS).prop_map(str::to_owned),
        "[a-z_]{1,10}"
    ];
    let value = prop_oneof![
        prop::sample::select(VALUES).prop_map(str::to_owned),
        "[ -~]{0,20}"
    ];
    // Weighted towards edits that keep the YAML readable, so more files get
    // past the syntax and exercise the conversion and cross-checks.
    prop_oneof![
        1 => (any::<usize>(), 1u8..).prop_map(|(a, x)| Edit::Flip(a, x)),
        1 => any::<usize>().prop_map(Edit::Cut),
        1 => any::<usize>().prop_map(Edit::DupLine),
        1 => any::<usize>().prop_map(Edit::DropLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        1 => (any::<usize>(), 0usize..10, key, value).prop_map(|(l, i, k, v)| Edit::Insert(l, i, k, v)),
        3 => (any::<usize>(), prop::sample::select(HUGE)).prop_map(|(i, v)| Edit::Number(i, v)),
        3 => (any::<usize>(), prop::sample::select(DURATIONS)).prop_map(|(i, v)| Edit::Duration(i, v)),
        1 => (any::<usize>(), "[-:{}\\[\\],&*#?|<>=!%@`'\" \t\na-z0-9]{1,12}").prop_map(|(a, s)| Edit::Bytes(a, s)),
    ]
}

/// Replaces the `i`-th (mod count) match of `is_token` in `text`.
fn replace_token(text: &str, i: usize, is_token: impl Fn(&str) -> bool, by: &str) -> String {
    let spans: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let b = text.as_bytes();
        let mut at = 0;
        while at < b.len() {
            if b[at].is_ascii_digit() {
                let end = (at..b.len())
                    .find(|&j| !b[j].is_ascii_alphanumeric())
                    .unwrap_or(b.len());
                if is_token(&text[at..end]) {
                    v.push((at, end));
                }
                at = end;
            } else {
                at += 1;
            }
        }
        v
    };
    match spans.get(i % spans.len().max(1)) {
        Some(&(s, e)) => format!("{}{by}{}", &text[..s], &text[e..]),
        None => text.to_owned(),
    }
}

fn apply(text: String, e: &Edit) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let n = lines.len();
    let bytes = text.as_bytes();
    let at = |a: usize| a % (bytes.len() + 1);
    match e {
        Edit::Flip(a, x) => {
            let mut b = bytes.to_vec();
            if let Some(byte) = b.get_mut(a % bytes.len().max(1)) {
                *byte ^= x;
            }
            String::from_utf8_lossy(&b).into_owned()
        }
        Edit::Cut(a) => String::from_utf8_lossy(&bytes[..at(*a)]).into_owned(),
        Edit::DupLine(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
            lines.join("\n")
        }
        Edit::DropLine(i) => {
            lines.remove(i % n);
            lines.join("\n")
        }
        Edit::SwapLines(i, j) => {
            lines.swap(i % n, j % n);
            lines.join("\n")
        }
        Edit::Insert(l, indent, k, v) => {
            lines.insert(l % (n + 1), format!("{}{k}: {v}", " ".repeat(*indent)));
            lines.join("\n")
        }
        Edit::Number(i, v) => {
            replace_token(&text, *i, |t| t.bytes().all(|b| b.is_ascii_digit()), v)
        }
        Edit::Duration(i, v) => replace_token(
            &text,
            *i,
            |t| t.bytes().any(|b| b.is_ascii_alphabetic()) && t.ends_with(['s', 'm', 'h', 'y']),
            v,
        ),
        Edit::Bytes(a, s) => {
            let mut b = bytes.to_vec();
            let p = at(*a);
            b.splice(p..p, s.bytes());
            String::from_utf8_lossy(&b).into_owned()
        }
    }
}

fn mutated() -> impl Strategy<Value = String> {
    (
        prop::sample::select(BASES),
        prop::collection::vec(edit(), 1..4),
    )
        .prop_map(|(base, edits)| edits.iter().fold(base.to_owned(), apply))
}

#[test]
fn the_bases_are_valid() {
    for base in BASES {
        if let Err(e) = config::parse(Path::new("props.yaml"), base) {
            panic!("{e}\n{base}");
        }
    }
}

proptest! {
    #![proptest_config(crate::config(128))]

    #[test]
    fn mutated_configs_load_or_are_located_errors(text in mutated()) {
        let file = Path::new("props.yaml");
        let (r, used) = peak(|| config::parse(file, &text));
        check_located(&text, file, &r)?;
        if let Ok(snap) = &r {
            prop_assert!(config::summary(snap).starts_with("props.yaml: "));
        }
        prop_assert!(used <= config_bound(text.len()), "{} bytes for {}", used, text.len());
    }
}
