//! The admin API over real sockets: ping, pools, sessions, token, metrics.

mod common;

use common::{backends, config, Client, Tether};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pools_sessions_and_metrics() {
    let b = backends(2).await;
    let t = Tether::start(&config(&b, "{ key: { header: X-Device-Id } }", "", "", ""));
    let mut a = Client::new(t.admin);
    let r = a.get("/api/ping", &[]).await.unwrap();
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));

    let r = Client::new(t.addr("web"))
        .get("/", &[("X-Device-Id", "dev 1/ü")])
        .await;
    // a non-ASCII header value is not a usable key for HeaderValue::to_str: falls back to the source IP
    assert_eq!(r.unwrap().status, 200);
    let r = Client::new(t.addr("web"))
        .get("/", &[("X-Device-Id", "dev 1/x")])
        .await
        .unwrap();
    let owner = common::backend_of(&r);

    let pools = a.get("/api/pools", &[]).await.unwrap().json();
    let pool = &pools["pools"][0];
    assert_eq!(pool["name"], "app");
    assert!(pools["vip"].is_null(), "no vip configured: {pools}");
    let ids: Vec<_> = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["b1", "b2"]);
    for be in pool["backends"].as_array().unwrap() {
        assert_eq!(be["state"], "up", "no health checks configured: trusted");
        assert!(be["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(be["live_connections"].is_number() && be["sessions"].is_number());
    }

    let r = a
        .get("/api/pools/app/sessions/dev%201%2Fx", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let s = &r.json()["session"];
    assert_eq!(s["backend"], owner.as_str());
    assert!(
        s["since"].as_u64().unwrap() > 0
            && s["last_seen"].as_u64().unwrap() >= s["since"].as_u64().unwrap()
    );
    assert_eq!(
        a.get("/api/pools/app/sessions/nope", &[])
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        a.get("/api/pools/nope/sessions/x", &[])
            .await
            .unwrap()
            .status,
        404
    );
    let r = a.get("/api/nothing", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());

    let m = a.get("/metrics", &[]).await.unwrap();
    assert_eq!(m.status, 200);
    let m = m.text();
    for name in [
        "tether_requests_total{backend=",
        "tether_request_duration_seconds_bucket",
        "tether_connections_active{listener=\"web\"}",
        "tether_upstream_connections_active{backend=\"b1\",pool=\"app\"}",
        "tether_backend_up{backend=\"b1\",pool=\"app\"} 1",
        "tether_sessions{backend=",
        "tether_affinity_lookups_total{pool=\"app\",result=\"new\"}",
        "tether_store_up{store=\"embedded\"} 1",
        "tether_bytes_total{direction=\"out\",listener=\"web\"}",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_need_the_token() {
    let b = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "s3cret-token\n").unwrap();
    let yaml = config(&b, "{ key: { header: X-Device-Id } }", "", "", "").replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", token_file: admin-token }",
    );
    let t = Tether::start_in(dir, &yaml);
    let r = Client::new(t.addr("web"))
        .get("/", &[("X-Device-Id", "d1")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let mut a = Client::new(t.admin);
    let path = "/api/pools/app/sessions/d1";
    let none = a.request("DELETE", path, &[], b"").await.unwrap();
    let wrong = a
        .request(
            "DELETE",
            path,
            &[("Authorization", "Bearer s3cret-tokeX")],
            b"",
        )
        .await
        .unwrap();
    let right = a
        .request(
            "DELETE",
            path,
            &[("Authorization", "Bearer s3cret-token")],
            b"",
        )
        .await
        .unwrap();
    assert_eq!((none.status, wrong.status, right.status), (401, 401, 204));
    assert!(none.json()["error"].is_string());
    // reads stay open
    assert_eq!(a.get(path, &[]).await.unwrap().status, 404, "deleted");
    // the next request picks afresh and records again
    Client::new(t.addr("web"))
        .get("/", &[("X-Device-Id", "d1")])
        .await
        .unwrap();
    assert_eq!(a.get(path, &[]).await.unwrap().status, 200);
}

/// One request on a fresh connection with exactly the `Host` (and `Origin`) given.
async fn admin_req(
    to: std::net::SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    origin: Option<&str>,
    body: &str,
) -> common::Response {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Client::new(to)
        .raw(req.as_bytes())
        .await
        .expect("admin answers")
}

/// `state` of backend `id` in `/api/pools`.
async fn state_of(t: &Tether, id: &str) -> String {
    let host = t.admin.to_string();
    let pools = admin_req(t.admin, "GET", "/api/pools", &host, None, "")
        .await
        .json();
    let found = pools["pools"][0]["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["id"] == id))
        .and_then(|b| b["state"].as_str())
        .map(str::to_owned);
    found.unwrap_or_else(|| panic!("no backend {id} in {pools}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadlines_beyond_ten_years_are_refused() {
    let b = backends(2).await;
    let t = Tether::start(&config(&b, "{ key: { header: X-Device-Id } }", "", "", ""));
    let host = t.admin.to_string();
    let drain = "/api/pools/app/backends/b1/drain";
    for deadline in [
        "300000000000y",
        "11y",
        "3653d",
        "18446744073709551615s",
        "99999999999999999999999h",
    ] {
        let body = format!("{{\"deadline\":\"{deadline}\"}}");
        let r = admin_req(t.admin, "POST", drain, &host, None, &body).await;
        assert_eq!(r.status, 400, "{deadline}: {}", r.text());
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains("is longer than 10 years"), "{deadline}: {msg}");
        assert_eq!(state_of(&t, "b1").await, "up", "{deadline}: not draining");
    }
    let r = admin_req(t.admin, "GET", "/api/ping", &host, None, "").await;
    assert_eq!(r.status, 200, "the admin API still answers");
    // Ten years exactly is accepted.
    let r = admin_req(
        t.admin,
        "POST",
        drain,
        &host,
        None,
        "{\"deadline\":\"10y\"}",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(state_of(&t, "b1").await, "draining");
    // The proxy still routes (the drain task is alive and nothing panicked).
    let r = Client::new(t.addr("web"))
        .get("/", &[("X-Device-Id", "d")])
        .await
        .unwrap();
    assert_eq!((r.status, common::backend_of(&r).as_str()), (200, "b2"));
}
