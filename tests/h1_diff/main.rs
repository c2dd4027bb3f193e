//! Differential test of tether's own HTTP/1.1 path against pingora's (issue
//! 14): one tether, two listeners on one pool (`web_t` on the default engine,
//! `web_p` with `http1_engine: pingora`), one scriptable raw backend. Every
//! case of the corpus (`corpus`) runs through both listeners on fresh client
//! connections; what the client got and what reached the backend, byte for
//! byte, must be the same after the normalisation in [`render`], except for
//! the disagreements listed in `known::KNOWN`, each explained there. Cases carry
//! what RFC 9112 (or the issue's own rules) demands of the new path where it
//! decides, asserted whatever pingora does; and the backend's strict parser
//! must frame everything the new path sends it (no smuggling).
//!
//! `H1_DIFF_CASE=name,name...` runs those cases and prints both outcomes
//! (and tether's log, with `TETHER_LOG` set).
//! `props` holds the property test (random mutations, the new path only).

#[path = "../common/mod.rs"]
mod common;

mod backend;
mod client;
mod corpus;
mod known;
mod props;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backend::{Backend, Got, GotKind, Op, Step};
use client::{ClientConn, ConnOut, Resp, C};
use common::Tether;
use known::KNOWN;

/// The areas of the corpus (the issue's RFC 9112 list, and smuggling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Area {
    Valid,
    Smuggling,
    HeadSyntax,
    Host,
    Methods,
    Http10,
    Pipelining,
    Expect,
    Interim,
    NoBody,
    CloseDelimited,
    Trailers,
    BadResponse,
    ReuseRace,
    Limits,
}

/// What RFC 9112 (or the issue) decides for the new path.
#[derive(Debug, Clone)]
pub struct Rfc {
    /// Final statuses the client gets, every connection in turn.
    pub statuses: Vec<u16>,
    /// Whole requests that reach the backend.
    pub forwarded: usize,
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub area: Area,
    pub conns: Vec<ClientConn>,
    pub script: Vec<Step>,
    pub deadline: Duration,
    pub rfc: Option<Rfc>,
}

impl Case {
    pub fn new(name: &'static str, area: Area) -> Case {
        Case {
            name,
            area,
            conns: vec![ClientConn {
                ops: Vec::new(),
                expect: 1,
                heads: Vec::new(),
            }],
            script: Vec::new(),
            deadline: Duration::from_millis(2500),
            rfc: None,
        }
    }

    fn cur(&mut self) -> &mut ClientConn {
        self.conns.last_mut().unwrap()
    }

    pub fn send(mut self, b: impl AsRef<[u8]>) -> Case {
        self.cur().ops.push(C::Send(b.as_ref().to_vec()));
        self
    }

    pub fn pause(mut self, ms: u64) -> Case {
        self.cur().ops.push(C::Pause(ms));
        self
    }

    /// Wait for the `n`-th final response of this connection.
    pub fn after(mut self, n: usize) -> Case {
        self.cur().ops.push(C::Await(n));
        self
    }

    pub fn shut(mut self) -> Case {
        self.cur().ops.push(C::Shut);
        self
    }

    /// Further ops go on a new client connection (after the previous one ended).
    pub fn conn(mut self) -> Case {
        self.conns.push(ClientConn {
            ops: Vec::new(),
            expect: 1,
            heads: Vec::new(),
        });
        self
    }

    pub fn expect(mut self, n: usize) -> Case {
        self.cur().expect = n;
        self
    }

    /// The `i`-th final response of the current connection answers a HEAD.
    pub fn head(mut self, i: usize) -> Case {
        self.cur().heads.push(i);
        self
    }

    pub fn step(mut self, ops: Vec<Op>) -> Case {
        self.script.push(ops);
        self
    }

    /// The backend answers the next request with these raw bytes.
    pub fn answer(self, b: impl AsRef<[u8]>) -> Case {
        self.step(vec![Op::W(b.as_ref().to_vec())])
    }

    pub fn rfc(mut self, statuses: &[u16], forwarded: usize) -> Case {
        self.rfc = Some(Rfc {
            statuses: statuses.to_vec(),
            forwarded,
        });
        self
    }

    pub fn deadline(mut self, ms: u64) -> Case {
        self.deadline = Duration::from_millis(ms);
        self
    }
}

/// What a case produced on one listener.
#[derive(Debug)]
pub struct Outcome {
    pub conns: Vec<ConnOut>,
    pub got: Vec<Got>,
}

impl Outcome {
    pub fn statuses(&self) -> Vec<u16> {
        self.conns
            .iter()
            .flat_map(|c| c.resps.iter().filter(|r| !r.interim()).map(|r| r.status))
            .collect()
    }

    pub fn forwarded(&self) -> usize {
        self.got
            .iter()
            .filter(|g| g.kind == GotKind::Complete)
            .count()
    }
}

pub fn config(backend: SocketAddr) -> String {
    let listener = |name: &str, engine: &str| {
        format!(
            "  - name: {name}\n    bind: \"127.0.0.1:0\"\n    pool: app\n    max_header_bytes: 8192\n\
             {engine}    timeouts: {{ client_header: 3s, keepalive: 5s }}\n\
             \x20   affinity: {{ key: {{ header: X-Device }}, fallback: random }}\n"
        )
    };
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         pools:\n  app:\n    health: {{ kind: none }}\n\
         \x20   timeouts: {{ connect: 1s, response_header: 1s, response_idle: 2s }}\n\
         \x20   backends:\n      - {{ id: b1, addr: \"{backend}\" }}\n\
         listeners:\n{}{}",
        listener("web_t", ""),
        listener("web_p", "    http1_engine: pingora\n"),
    )
}

/// Run `case` against `addr`, the backend reset to its script first.
pub async fn run_case(b: &Backend, addr: SocketAddr, case: &Case) -> Outcome {
    b.reset(case.script.clone()).await;
    let mut conns = Vec::new();
    for c in &case.conns {
        conns.push(client::run(addr, c, case.deadline).await);
    }
    // What the proxy still sends the backend after the client is done.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Outcome {
        conns,
        got: b.got(),
    }
}

/// Headers of a relayed response that the engines write themselves (or
/// that describe framing, compared as `framing` instead): `Date`, `Server`
/// (pingora may add its own), the client connection's `Connection` and
/// `Keep-Alive` (the connection's fate is compared as `end`), and
/// `Content-Length`/`Transfer-Encoding` (a body's framing may legitimately
/// be re-chosen by a proxy; the payload, trailers and framing kind are
/// compared).
const RESP_SKIP: &[&str] = &[
    "date",
    "server",
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
];

/// Header lines the proxies add upstream: their values must agree, their
/// place in the head may not (each engine appends them in its own order),
/// so they are compared sorted, after the client's own lines.
const ADDED: &[&str] = &["x-forwarded-for", "x-forwarded-proto"];

fn esc(b: &[u8]) -> String {
    if b.len() > 600 {
        let sum = b.iter().fold(0xcbf29ce484222325u64, |h, &c| {
            (h ^ c as u64).wrapping_mul(0x100000001b3)
        });
        return format!("<{} bytes, fnv {sum:016x}>", b.len());
    }
    b.escape_ascii().to_string()
}

/// A request the backend got, normalised:
/// - the request line exactly as received;
/// - the client's header lines exactly as received (name case, spacing),
///   but in a stable order by lower-cased name: pingora re-inserts some
///   lines (`Transfer-Encoding`) at the end of the head, and the order of
///   differently named fields carries no meaning (RFC 9110 5.3); lines of the
///   same name keep their order, which does;
/// - `Transfer-Encoding` values lower-cased (coding names are
///   case-insensitive, RFC 9112 7) and pingora writes its own;
/// - the lines the proxies add (`ADDED`, `x-tether-*`) lower-cased and
///   sorted after the rest: values must agree, their places need not;
/// - a chunked body as its payload and trailer lines: the chunked coding is
///   hop-by-hop (RFC 9112 7), and pingora re-chunks what it relays (its chunk
///   sizes, no chunk extensions, which RFC 9112 7.1.1 lets a recipient
///   ignore);
/// - the body of a request that never completed is left out: the client
///   abandoned it, and how much of it a streaming proxy had relayed by then
///   is timing.
fn render_request(g: &Got) -> String {
    let mut s = String::new();
    let Some(end) = g.bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return format!("  conn {} {:?}: {}\n", g.conn, g.kind, esc(&g.bytes));
    };
    if let GotKind::Unframed(why) = &g.kind {
        let _ = writeln!(s, "  conn {} unframed ({why}):", g.conn);
    } else {
        let _ = writeln!(s, "  conn {} {:?} request:", g.conn, g.kind);
    }
    let head = &g.bytes[..end];
    let mut lines = head
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let _ = writeln!(s, "    {}", esc(lines.next().unwrap_or_default()));
    let mut client = Vec::new();
    let mut own = Vec::new();
    let mut chunked = false;
    for line in lines {
        let name = line.split(|&c| c == b':').next().unwrap_or_default();
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = String::from_utf8_lossy(line.get(name.len() + 1..).unwrap_or_default())
            .trim()
            .to_string();
        if ADDED.contains(&lower.as_str()) || lower.starts_with("x-tether-") {
            own.push(format!("{lower}: {value}"));
        } else if lower == "transfer-encoding" {
            chunked |= value.to_ascii_lowercase().ends_with("chunked");
            let shown = format!("{}: {}", esc(name), value.to_ascii_lowercase());
            client.push((lower, shown));
        } else {
            client.push((lower, esc(line)));
        }
    }
    client.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, l) in client {
        let _ = writeln!(s, "    {l}");
    }
    own.sort();
    for l in own {
        let _ = writeln!(s, "    + {l}");
    }
    let body = &g.bytes[end + 4..];
    match &g.kind {
        GotKind::Partial => s.push_str("    (body incomplete)\n"),
        GotKind::Complete if chunked => match client::parse_response(
            &[
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                body,
            ]
            .concat(),
            false,
            true,
        ) {
            Ok(Some((r, _))) => {
                let _ = writeln!(s, "    chunked body {}", esc(&r.body));
                for t in &r.trailers {
                    let _ = writeln!(s, "    trailer {t}");
                }
            }
            _ => {
                let _ = writeln!(s, "    body {}", esc(body));
            }
        },
        _ => {
            let _ = writeln!(s, "    body {}", esc(body));
        }
    }
    s
}

fn render_response(r: &Resp) -> String {
    // tether's own answers (no `X-Backend` mark): the status, not the body
    // or headers, which are each engine's own (pingora's error page vs
    // tether's empty answer).
    if r.header("x-backend").is_none() {
        return format!("  own {}\n", r.status);
    }
    let mut s = format!("  {} {}\n", r.status, r.reason);
    for (n, v) in &r.headers {
        if !RESP_SKIP.contains(&n.as_str()) {
            let _ = writeln!(s, "    {n}: {}", esc(v.as_bytes()));
        }
    }
    let _ = writeln!(
        s,
        "    {:?}{} body {}",
        r.framing,
        if r.cut { " (cut)" } else { "" },
        esc(&r.body)
    );
    for t in &r.trailers {
        let _ = writeln!(s, "    trailer {t}");
    }
    s
}

/// The normalised outcome, compared as text between the engines.
pub fn render(o: &Outcome) -> String {
    let mut s = String::new();
    for (i, c) in o.conns.iter().enumerate() {
        let _ = writeln!(s, "client conn {i}:");
        for r in &c.resps {
            s.push_str(&render_response(r));
        }
        let _ = writeln!(s, "  end {:?}", c.end);
        if !c.junk.is_empty() {
            let _ = writeln!(s, "  junk {}", esc(&c.junk));
        }
    }
    if o.got.is_empty() {
        s.push_str("backend: nothing\n");
    } else {
        s.push_str("backend:\n");
        for g in &o.got {
            s.push_str(&render_request(g));
        }
    }
    s
}

/// The new path against what the case's RFC expectation says, and the
/// smuggling rule: the backend frames everything it gets.
fn check_new_path(case: &Case, o: &Outcome) -> Result<(), String> {
    if let Some(g) = o
        .got
        .iter()
        .find(|g| matches!(g.kind, GotKind::Unframed(_)))
    {
        let explicit_skip = case
            .script
            .iter()
            .flatten()
            .any(|op| matches!(op, Op::NoBody));
        if !explicit_skip {
            return Err(format!("the backend could not frame what it got: {g:?}"));
        }
    }
    if let Some(rfc) = &case.rfc {
        if o.statuses() != rfc.statuses || o.forwarded() != rfc.forwarded {
            return Err(format!(
                "RFC 9112 wants statuses {:?} with {} request(s) forwarded, the new path gave {:?} with {}",
                rfc.statuses,
                rfc.forwarded,
                o.statuses(),
                o.forwarded()
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_path_matches_pingora() {
    let started = Instant::now();
    let b = Backend::start().await;
    let t = Tether::start(&config(b.addr));
    let (web_t, web_p) = (t.addr("web_t"), t.addr("web_p"));
    let only = std::env::var("H1_DIFF_CASE").ok();
    let cases = corpus::all();
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name), "case name {} used twice", c.name);
    }
    for k in KNOWN {
        for c in k.cases {
            assert!(names.contains(c), "KNOWN names unknown case {c}");
            assert!(
                cases.iter().any(|x| x.name == *c && x.rfc.is_some()),
                "listed disagreement {c} must state the new path's outcome (rfc)"
            );
        }
    }
    let mut failures = Vec::new();
    let mut listed = 0;
    let mut areas = std::collections::BTreeMap::<Area, usize>::new();
    for case in &cases {
        if only
            .as_deref()
            .is_some_and(|n| !n.split(',').any(|n| n == case.name))
        {
            continue;
        }
        *areas.entry(case.area).or_default() += 1;
        let ot = run_case(&b, web_t, case).await;
        let op = run_case(&b, web_p, case).await;
        let (rt, rp) = (render(&ot), render(&op));
        if only.is_some() {
            eprintln!(
                "=== {} (tether)\n{rt}=== {} (pingora)\n{rp}",
                case.name, case.name
            );
        }
        if let Err(e) = check_new_path(case, &ot) {
            failures.push(format!("{}: {e}\n--- new path:\n{rt}", case.name));
        }
        let known = KNOWN.iter().find(|k| k.cases.contains(&case.name));
        match (rt == rp, known) {
            (true, None) => {}
            (true, Some(_)) => failures.push(format!(
                "{}: listed as a disagreement but both engines now agree: remove it from KNOWN",
                case.name
            )),
            (false, Some(k)) => {
                listed += 1;
                eprintln!("listed disagreement {}: {}", case.name, k.why);
            }
            (false, None) => failures.push(format!(
                "{}: the engines disagree\n--- new path (web_t):\n{rt}--- pingora (web_p):\n{rp}",
                case.name
            )),
        }
    }
    if only.is_some() && std::env::var("TETHER_LOG").is_ok() {
        eprintln!("tether log:\n{}", t.log_text());
    }
    eprintln!(
        "h1_diff: {} cases ({areas:?}), {listed} listed disagreements, {:.1}s",
        areas.values().sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        t.log_text().lines().all(|l| !l.contains("panicked")),
        "tether panicked:\n{}",
        t.log_text()
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
