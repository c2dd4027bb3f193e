//! TLS termination and upstream TLS, on real sockets with certificates made
//! in the test: certificates picked by SNI, a rotated certificate picked up
//! from disk, a broken replacement that keeps the old one, `Secure` cookies
//! and `X-Forwarded-Proto: https`, handshake failures counted by reason, and
//! TLS to backends verified against a test CA (a wrong CA gives 502).

mod common;
#[path = "common/tls.rs"]
mod tlsh;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::tcp::{metric, metrics};
use common::{backend_yaml, backends, Client, Tether};
use tlsh::{any_cert_connector, connect, get, peer_cn, write_pair, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const CERTS: &str = "      certs:
        - { name: alpha, cert: alpha.crt, key: alpha.key }
        - { name: beta, cert: beta.crt, key: beta.key }
      default: alpha
";

/// One https listener `web` over `backends`, certificates `alpha` and `beta`.
fn https_yaml(b: &[common::whoami::Running], affinity: &str, listener_extra: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\npools:\n  app:\n    backends:\n{}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    protocol: https\n    pool: app\n\
         {listener_extra}    tls:\n{CERTS}    affinity: {affinity}\n",
        backend_yaml(b)
    )
}

/// A temp dir holding `alpha` (alpha.test) and `beta` (beta.test, *.beta.test) signed by `ca`.
fn cert_dir(ca: &TestCa) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_pair(dir.path(), "alpha", &ca.leaf("alpha.test", &["alpha.test"]));
    write_pair(
        dir.path(),
        "beta",
        &ca.leaf("beta.test", &["beta.test", "*.beta.test"]),
    );
    dir
}

async fn cn(c: &TlsConnector, addr: SocketAddr, sni: &str) -> String {
    match connect(c, addr, sni).await {
        Ok(s) => peer_cn(&s),
        Err(e) => format!("handshake failed: {e}"),
    }
}

/// Poll until the certificate served for `sni` has common name `want`.
async fn wait_cn(
    c: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
    want: &str,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        if cn(c, addr, sni).await == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{sni} still not served {want:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_rotation_and_broken_replacement() {
    let b = backends(2).await;
    let ca = TestCa::new("tether test CA");
    let t = Tether::start_in(cert_dir(&ca), &https_yaml(&b, "{ key: source_ip }", ""));
    let addr = t.addr("web");
    let any = any_cert_connector(&[]);
    assert_eq!(cn(&any, addr, "alpha.test").await, "alpha.test");
    assert_eq!(cn(&any, addr, "beta.test").await, "beta.test");
    assert_eq!(
        cn(&any, addr, "www.beta.test").await,
        "beta.test",
        "wildcard"
    );
    assert_eq!(
        cn(&any, addr, "other.test").await,
        "alpha.test",
        "unknown name: default"
    );
    assert_eq!(
        cn(&any, addr, "127.0.0.1").await,
        "alpha.test",
        "no SNI: default"
    );

    // A verifying client gets a whole HTTPS exchange through.
    let mut s = connect(&ca.connector(&[]), addr, "beta.test")
        .await
        .expect("verified TLS");
    let r = get(&mut s, "/", &[]).await.expect("https request");
    assert_eq!(r.status, 200);
    assert!(!r.backend().is_empty());

    // Rotate beta on disk: the next handshakes see it, without a restart.
    let pair = ca.leaf("beta.test v2", &["beta.test", "*.beta.test"]);
    write_pair(t.dir.path(), "beta", &pair);
    let took = wait_cn(
        &any,
        addr,
        "beta.test",
        "beta.test v2",
        Duration::from_secs(6),
    )
    .await;
    println!("rotated certificate served after {took:?}");
    assert!(took < Duration::from_millis(3500), "reload took {took:?}");
    assert_eq!(
        cn(&any, addr, "alpha.test").await,
        "alpha.test",
        "alpha untouched"
    );

    // A broken replacement: the old certificate keeps serving, the error is logged.
    std::fs::write(t.dir.path().join("alpha.crt"), "not a certificate\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    while !t.log_text().contains("certificate reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = t.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("certificate reload failed"))
        .unwrap_or("");
    assert!(
        line.contains("alpha") && line.contains("alpha.crt"),
        "{line}"
    );
    assert_eq!(
        cn(&any, addr, "alpha.test").await,
        "alpha.test",
        "old alpha still serving"
    );
    let m = metrics(&t).await;
    let series = "tether_tls_cert_reloads_total{cert=\"alpha\",listener=\"web\",result=\"error\"}";
    assert!(metric(&m, series) >= 1.0, "{m}");

    // Fixed on disk: picked up like any change.
    write_pair(
        t.dir.path(),
        "alpha",
        &ca.leaf("alpha.test v2", &["alpha.test"]),
    );
    wait_cn(
        &any,
        addr,
        "alpha.test",
        "alpha.test v2",
        Duration::from_secs(6),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_is_secure_and_backends_see_https() {
    let b = backends(2).await;
    let ca = TestCa::new("tether test CA");
    let affinity = "{ key: { cookie: { name: TETHER, insert: true } } }";
    let t = Tether::start_in(cert_dir(&ca), &https_yaml(&b, affinity, ""));
    let mut s = connect(&ca.connector(&["http/1.1"]), t.addr("web"), "alpha.test")
        .await
        .expect("TLS");
    let r = get(&mut s, "/", &[]).await.expect("first request");
    assert_eq!(r.status, 200);
    let set = r.header("set-cookie").unwrap_or_default().to_string();
    assert!(
        set.contains("; Secure") && set.contains("HttpOnly"),
        "{set}"
    );
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "https");
    let cookie = r.cookie("TETHER").expect("cookie");
    for _ in 0..3 {
        let again = get(&mut s, "/", &[("cookie", &cookie)])
            .await
            .expect("again");
        assert_eq!(again.backend(), r.backend(), "pinned");
        assert!(again.header("set-cookie").is_none());
    }
    // A client's own X-Forwarded-Proto is not believed from an untrusted peer.
    let r = get(
        &mut s,
        "/",
        &[("cookie", &cookie), ("x-forwarded-proto", "http")],
    )
    .await;
    assert_eq!(
        r.expect("spoof").json()["headers"]["x-forwarded-proto"],
        "https"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_are_counted_by_reason() {
    let b = backends(1).await;
    let ca = TestCa::new("tether test CA");
    let extra = "    timeouts: { client_header: 1s }\n";
    let t = Tether::start_in(cert_dir(&ca), &https_yaml(&b, "{ key: source_ip }", extra));
    let addr = t.addr("web");

    // Plain HTTP on the TLS port: a protocol error, and the connection is closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
    // A client that does not trust our certificate aborts with an alert.
    let stranger = TestCa::new("some other CA");
    assert!(connect(&stranger.connector(&[]), addr, "alpha.test")
        .await
        .is_err());
    // Half a ClientHello, then gone.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x16, 3, 1, 0, 200, 1, 0]).await.unwrap();
    drop(s);
    // Silent past client_header.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "silent client held {:?}",
        start.elapsed()
    );

    let want = ["protocol", "alert", "closed", "timeout"];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&t).await;
        let count = |r: &str| {
            metric(
                &m,
                &format!("tether_tls_handshake_failures_total{{listener=\"web\",reason=\"{r}\"}}"),
            )
        };
        if want.iter().all(|r| count(r) >= 1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a good client still gets in.
    let mut s = connect(&ca.connector(&[]), addr, "alpha.test")
        .await
        .expect("TLS");
    assert_eq!(get(&mut s, "/", &[]).await.expect("request").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_against_the_ca() {
    let ca = TestCa::new("backend CA");
    let other = TestCa::new("some other CA");
    let (baddr, _backend) =
        tlsh::tls_backend("tb1", &ca.leaf("backend.test", &["backend.test"])).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("other.pem"), other.pem()).unwrap();
    let pool = |tls: &str| {
        format!("    tls: {tls}\n    backends:\n      - {{ id: tb1, addr: \"{baddr}\" }}\n")
    };
    let listener = |name: &str, proto: &str, pool: &str| {
        format!("  - name: {name}\n    bind: \"127.0.0.1:0\"\n    protocol: {proto}\n    pool: {pool}\n    affinity: {{ key: source_ip }}\n")
    };
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\npools:\n  good:\n{}  wrong:\n{}  loose:\n{}listeners:\n{}{}{}{}",
        pool("{ sni: backend.test, ca: ca.pem }"),
        pool("{ sni: backend.test, ca: other.pem }"),
        pool("{ sni: backend.test, verify: false }"),
        listener("good", "http", "good"),
        listener("wrong", "http", "wrong"),
        listener("loose", "http", "loose"),
        listener("raw", "tcp", "good"),
    );
    let t = Tether::start_in(dir, &yaml);
    assert!(
        t.log_text().contains("verification is OFF"),
        "verify: false is announced at start:\n{}",
        t.log_text()
    );

    let r = Client::new(t.addr("good")).get("/", &[]).await.unwrap();
    assert_eq!((r.status, r.json()["id"].as_str()), (200, Some("tb1")));
    let r = Client::new(t.addr("loose")).get("/", &[]).await.unwrap();
    assert_eq!((r.status, r.json()["id"].as_str()), (200, Some("tb1")));
    let r = Client::new(t.addr("wrong")).get("/", &[]).await.unwrap();
    assert_eq!(
        r.status, 502,
        "a backend certificate from an unknown CA is refused"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while !t.log_text().contains("upstream TLS to backend tb1") {
        assert!(Instant::now() < deadline, "no clear log:\n{}", t.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A tcp listener originates TLS to the same pool too.
    let mut s = TcpStream::connect(t.addr("raw")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: backend.test\r\n\r\n")
        .await
        .unwrap();
    let r = tlsh::read_resp(&mut s)
        .await
        .expect("response through the tcp listener");
    assert_eq!((r.status, r.backend()), (200, "tb1".to_string()));
}
