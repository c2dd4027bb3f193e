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
async fn foreign_origins_and_rebound_host_names_are_refused() {
    let b = backends(2).await;
    let t = Tether::start(&config(&b, "{ key: { header: X-Device-Id } }", "", "", ""));
    let host = t.admin.to_string();
    let port = t.admin.port();
    let drain = "/api/pools/app/backends/b1/drain";

    // A page elsewhere posting to the API: refused, nothing drained.
    for origin in [
        "http://evil.example".to_string(),
        "null".to_string(),
        format!("http://127.0.0.1:{}", port ^ 1),
        format!("https://{host}"),
        format!("http://localhost:{port}"),
    ] {
        let r = admin_req(t.admin, "POST", drain, &host, Some(&origin), "").await;
        assert_eq!(r.status, 403, "Origin {origin}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{}", r.text());
    }
    assert_eq!(
        state_of(&t, "b1").await,
        "up",
        "a refused drain drains nothing"
    );

    // DNS rebinding: a name that is not ours, whatever the port, on every route.
    for (path, h) in [
        ("/api/pools", "evil.example".to_string()),
        ("/api/pools", format!("evil.example:{port}")),
        ("/", format!("evil.example:{port}")),
        ("/metrics", format!("evil.example:{port}")),
        ("/api/ping", format!("127.0.0.1.evil.example:{port}")),
    ] {
        let r = admin_req(t.admin, "GET", path, &h, None, "").await;
        assert_eq!(r.status, 421, "GET {path} Host {h}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{}", r.text());
    }
    let r = admin_req(
        t.admin,
        "POST",
        drain,
        &format!("evil.example:{port}"),
        Some(&format!("http://evil.example:{port}")),
        "",
    )
    .await;
    assert_eq!(r.status, 421);
    assert_eq!(state_of(&t, "b1").await, "up");

    // IP literals and localhost, any port; a matching Origin is fine.
    for h in [
        host.clone(),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "LocalHost".to_string(),
        format!("[::1]:{port}"),
        "198.51.100.7:8443".to_string(),
    ] {
        let r = admin_req(
            t.admin,
            "GET",
            "/api/pools",
            &h,
            Some(&format!("http://{h}")),
            "",
        )
        .await;
        assert_eq!(r.status, 200, "Host {h}: {}", r.text());
    }
    // Port 80 is the default port of an http Origin.
    let r = admin_req(
        t.admin,
        "GET",
        "/api/ping",
        "127.0.0.1:80",
        Some("http://127.0.0.1"),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // curl, scripts, Prometheus: no Origin, unaffected.
    let r = admin_req(t.admin, "POST", drain, &host, None, "").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(state_of(&t, "b1").await, "draining");
    assert_eq!(
        admin_req(t.admin, "GET", "/metrics", &host, None, "")
            .await
            .status,
        200
    );

    // The status page through a port forward (ssh -L): the browser says the
    // forwarded port in both Host and Origin, so they agree.
    let (fwd, task) = common::tcp::forwarder(t.admin).await;
    let here = fwd.to_string();
    let origin = format!("http://{here}");
    let r = admin_req(fwd, "GET", "/", &here, None, "").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<html"), "the status page");
    let r = admin_req(fwd, "GET", "/api/pools", &here, Some(&origin), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let enable = "/api/pools/app/backends/b1/enable";
    let r = admin_req(
        fwd,
        "POST",
        enable,
        &format!("localhost:{}", fwd.port()),
        Some(&format!("http://localhost:{}", fwd.port())),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(state_of(&t, "b1").await, "up");
    // ...and a foreign page still cannot use the forward.
    let r = admin_req(fwd, "POST", drain, &here, Some("http://evil.example"), "").await;
    assert_eq!(r.status, 403);
    assert_eq!(state_of(&t, "b1").await, "up");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_hosts_names_are_answered_on_any_port() {
    let b = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "tok\n").unwrap();
    let yaml = config(&b, "{ key: { header: X-Device-Id } }", "", "", "").replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", token_file: admin-token, hosts: [tether-admin.internal, Ops.Example] }",
    );
    let t = Tether::start_in(dir, &yaml);
    for h in [
        "tether-admin.internal:9999",
        "tether-admin.internal",
        "TETHER-ADMIN.internal:1",
        "ops.example",
    ] {
        let r = admin_req(t.admin, "GET", "/api/pools", h, None, "").await;
        assert_eq!(r.status, 200, "Host {h}: {}", r.text());
    }
    for h in [
        "other.internal",
        "admin.internal:9999",
        "tether-admin.internal.evil.example",
    ] {
        let r = admin_req(t.admin, "GET", "/api/pools", h, None, "").await;
        assert_eq!(r.status, 421, "Host {h}: {}", r.text());
    }
    // The name check comes before the token: a rebound page learns nothing.
    let r = admin_req(t.admin, "POST", "/api/reload", "evil.example", None, "").await;
    assert_eq!(r.status, 421);
    let h = "tether-admin.internal:8443";
    let r = admin_req(
        t.admin,
        "POST",
        "/api/reload",
        h,
        Some("http://other.internal:8443"),
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = admin_req(
        t.admin,
        "POST",
        "/api/reload",
        h,
        Some(&format!("http://{h}")),
        "",
    )
    .await;
    assert_eq!(
        r.status,
        401,
        "same origin, still needs the token: {}",
        r.text()
    );
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
