//! tcp keys read from the connection itself, and the PROXY protocol:
//! PROXY v1/v2 in from trusted peers (tcp and http listeners) and v2 out to
//! backends; untrusted and malformed headers; SNI passthrough; prefix ids.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::echo::echoes;
use common::tcp::{self, config_yaml, listener_yaml, lo, metric, metrics, owner};
use common::{backend_of, Client, Tether};
use tokio::io::AsyncWriteExt;

const PROXY_TOP: &str = "server: { trusted_proxies: [\"127.0.0.1\"] }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_in_from_a_trusted_peer_and_v2_out() {
    let b = echoes(3, true).await;
    let l = listener_yaml(
        "tcp",
        "tcp",
        "{ key: source_ip }",
        "    proxy_protocol: accept\n",
    );
    let t = Tether::start(&config_yaml(&b, "    send_proxy: v2\n", &l, PROXY_TOP));
    let to = t.addr("tcp");

    let mut s = tcp::connect_from(lo(0, 0, 1), to).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 443\r\n")
        .await
        .unwrap();
    let v1 = tcp::hello(&mut s, b"hi\n").await.unwrap();
    assert_eq!(
        v1.src, "203.0.113.7:40001",
        "the backend sees the original client"
    );
    assert_eq!(
        owner(&t, "203.0.113.7").await,
        Some(v1.id.clone()),
        "keyed by the header's address"
    );

    let src: SocketAddr = "[2001:db8::7]:40002".parse().unwrap();
    let mut s = tcp::connect_from(lo(0, 0, 1), to).await.unwrap();
    s.write_all(&tcp::proxy_v2(src, "[2001:db8::1]:443".parse().unwrap()))
        .await
        .unwrap();
    let v2 = tcp::hello(&mut s, b"hi\n").await.unwrap();
    assert_eq!(v2.src, src.to_string());
    assert_eq!(owner(&t, "2001:db8::7").await, Some(v2.id.clone()));

    // The same client through another balancer connection: same backend.
    let mut s = tcp::connect_from(lo(0, 0, 1), to).await.unwrap();
    s.write_all(&tcp::proxy_v2(
        "203.0.113.7:50000".parse().unwrap(),
        "192.0.2.1:443".parse().unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(tcp::hello(&mut s, b"again\n").await.unwrap().id, v1.id);

    // LOCAL (the balancer's own health check): its own address stands.
    let mut s = tcp::connect_from(lo(0, 0, 1), to).await.unwrap();
    s.write_all(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00")
        .await
        .unwrap();
    let local = tcp::hello(&mut s, b"hi\n").await.unwrap();
    assert!(local.src.starts_with("127.0.0.1:"), "{local:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_and_malformed_proxy_headers_close_and_count() {
    let b = echoes(2, false).await;
    let l = listener_yaml(
        "tcp",
        "tcp",
        "{ key: source_ip }",
        "    proxy_protocol: accept\n    timeouts: { client_header: 500ms }\n",
    );
    let top = "server: { trusted_proxies: [\"127.0.0.2\"] }";
    let t = Tether::start(&config_yaml(&b, "", &l, top));
    let to = t.addr("tcp");
    let refused = |from, bytes: Vec<u8>| async move {
        let mut s = tcp::connect_from(from, to).await.unwrap();
        let _ = s.write_all(&bytes).await;
        tcp::closed_within(&mut s, Duration::from_secs(3)).await
    };
    let good = b"PROXY TCP4 203.0.113.9 192.0.2.1 1 2\r\nhi\n".to_vec();
    assert!(refused(lo(0, 0, 1), good.clone()).await, "untrusted peer");
    let trusted = lo(0, 0, 2);
    for bad in [
        &b"PROXY TCP4 nonsense\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04abcd",
    ] {
        assert!(refused(trusted, bad.to_vec()).await, "{bad:?}");
    }
    let start = Instant::now();
    assert!(
        refused(trusted, b"PROXY TCP4 1.2".to_vec()).await,
        "stalled header"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "closed at the timeout"
    );
    assert!(refused(trusted, Vec::new()).await, "silent peer");
    // Noise never brings tether down.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..200 {
        let mut junk: Vec<u8> = match i % 3 {
            0 => b"PROXY ".to_vec(),
            1 => b"\r\n\r\n\0\r\nQUIT\n".to_vec(),
            _ => Vec::new(),
        };
        for _ in 0..(i % 40) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(seed as u8);
        }
        let mut s = tcp::connect_from(trusted, to).await.unwrap();
        let _ = s.write_all(&junk).await;
    }
    let mut s = tcp::connect_from(trusted, to).await.unwrap();
    s.write_all(&good[..good.len() - 3]).await.unwrap();
    assert!(tcp::hello(&mut s, b"hi\n").await.is_ok(), "still serving");
    let m = metrics(&t).await;
    let errors = |reason: &str| {
        metric(
            &m,
            &format!("tether_proxy_protocol_errors_total{{listener=\"tcp\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(errors("untrusted"), 1.0, "{m}");
    assert!(errors("malformed") >= 5.0, "{m}");
    assert!(errors("timeout") >= 1.0, "{m}");
    assert!(errors("closed") >= 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_on_an_http_listener_sets_the_client_address() {
    let b = common::backends(2).await;
    let yaml = common::config(
        &b,
        "{ key: source_ip }",
        "",
        "    proxy_protocol: accept\n",
        PROXY_TOP,
    );
    let t = Tether::start(&yaml);
    let mut c = Client::new(t.addr("web"));
    let r = c
        .raw(b"PROXY TCP4 198.51.100.4 192.0.2.1 5000 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "198.51.100.4");
    // The next request on the same connection has no header of its own.
    let again = c.get("/", &[]).await.unwrap();
    assert_eq!(again.json()["headers"]["x-forwarded-for"], "198.51.100.4");
    assert_eq!(owner(&t, "198.51.100.4").await, Some(backend_of(&r)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_pins_by_server_name() {
    let b = echoes(3, false).await;
    let l = listener_yaml("tls-pass", "tcp", "{ key: sni, fallback: source_ip }", "");
    let t = Tether::start(&config_yaml(&b, "", &l, ""));
    let to = t.addr("tls-pass");
    let mut seen = HashSet::new();
    for d in 0..20u8 {
        let name = format!("device-{d}.example");
        let hello = tcp::client_hello(&name);
        let mut ids = HashSet::new();
        // From three different addresses: the name decides, not the address.
        for from in 1..=3 {
            let (_, banner) = tcp::dial(lo(7, d, from), to, &hello).await.unwrap();
            ids.insert(banner.id);
        }
        assert_eq!(ids.len(), 1, "{name}: {ids:?}");
        let id = ids.into_iter().next().unwrap();
        assert_eq!(owner(&t, &name).await.as_deref(), Some(id.as_str()));
        seen.insert(id);
    }
    assert!(seen.len() >= 2, "{seen:?}");
    // The ClientHello bytes reach the backend exactly as sent (echoed back by `dial`).
    let hello = tcp::client_hello("Device-3.EXAMPLE");
    let (_, upper) = tcp::dial(lo(7, 99, 1), to, &hello).await.unwrap();
    assert_eq!(
        Some(upper.id.clone()),
        owner(&t, "device-3.example").await,
        "case-insensitive"
    );
    assert!(b.iter().any(|e| e.firsts.lock().unwrap().contains(&hello)));
    // Split over two writes (and so over two reads in tether): same backend.
    let mut s = tcp::connect_from(lo(7, 99, 2), to).await.unwrap();
    let pause = Duration::from_millis(100);
    assert_eq!(
        tcp::hello_split(&mut s, &hello, 7, pause).await.unwrap().id,
        upper.id
    );
    // Not TLS at all: the fallback (source_ip) decides at once.
    let (_, plain) = tcp::dial(lo(7, 99, 3), to, b"plain text\n").await.unwrap();
    assert_eq!(owner(&t, "127.7.99.3").await, Some(plain.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_key_pins_devices_by_their_hello_line() {
    let b = echoes(3, false).await;
    let key = |fallback| {
        format!("{{ key: {{ prefix: {{ pattern: '^HELLO device=([a-z0-9]+)\\n', max_bytes: 512, timeout: 500ms }} }}, fallback: {fallback} }}")
    };
    let listeners = listener_yaml("dev", "tcp", &key("source_ip"), "")
        + &listener_yaml("strict", "tcp", &key("reject"), "");
    let t = Tether::start(&config_yaml(&b, "", &listeners, ""));
    let (dev, strict) = (t.addr("dev"), t.addr("strict"));
    let mut seen = HashSet::new();
    for d in 0..15u8 {
        let hello = format!("HELLO device=d{d}\nDATA 1 2 3\n").into_bytes();
        let mut ids = HashSet::new();
        for from in 1..=3 {
            ids.insert(tcp::dial(lo(8, d, from), dev, &hello).await.unwrap().1.id);
            ids.insert(
                tcp::dial(lo(8, d, from), strict, &hello)
                    .await
                    .unwrap()
                    .1
                    .id,
            );
        }
        assert_eq!(ids.len(), 1, "device d{d}: {ids:?}");
        assert_eq!(
            owner(&t, &format!("d{d}")).await,
            ids.iter().next().cloned()
        );
        seen.extend(ids);
    }
    assert!(seen.len() >= 2, "{seen:?}");
    // The hello line split over writes still finds its device.
    let want = owner(&t, "d4").await.unwrap();
    let mut s = tcp::connect_from(lo(8, 99, 1), dev).await.unwrap();
    let split = tcp::hello_split(&mut s, b"HELLO device=d4\n", 9, Duration::from_millis(100));
    assert_eq!(split.await.unwrap().id, want);

    // A device that sends nothing: the fallback once the timeout passes, not before.
    let mut s = tcp::connect_from(lo(8, 99, 2), dev).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        owner(&t, "127.8.99.2").await,
        None,
        "still waiting for the hello"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pinned = owner(&t, "127.8.99.2")
        .await
        .expect("source_ip fallback after the timeout");
    assert_eq!(tcp::hello(&mut s, b"late\n").await.unwrap().id, pinned);
    let mut s = tcp::connect_from(lo(8, 99, 3), strict).await.unwrap();
    let start = Instant::now();
    assert!(tcp::closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );

    // 1 MB of garbage: the search stops at max_bytes. `reject` closes; `source_ip`
    // forwards all of it, untouched.
    let garbage: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut s = tcp::connect_from(lo(8, 99, 4), strict).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let (_, closed) = tokio::join!(wr.write_all(&garbage), async {
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncReadExt::read(&mut rd, &mut [0u8; 64]),
        )
        .await
    });
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    let (_, big) = tcp::dial(lo(8, 99, 5), dev, &garbage).await.unwrap();
    assert_eq!(owner(&t, "127.8.99.5").await, Some(big.id));
    let m = metrics(&t).await;
    let strict_in = metric(
        &m,
        "tether_bytes_total{direction=\"in\",listener=\"strict\"}",
    );
    assert!(
        strict_in < 4096.0,
        "nothing of the rejected garbage was forwarded: {strict_in}"
    );
}
