//! The page lists every backend with its state, follows health changes, and drains
//! and enables through the admin API.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_backends_follows_health_and_drains() {
    let _serial = SERIAL.lock().await;
    let chrome = Chromium::launch();
    let mut b = backends(3).await;
    let t = Tether::start(&yaml(&b, ""));
    let cdp = chrome.connect().await;
    let page = cdp.new_page().await;
    open(&page, &t).await;

    // a) every backend with its state, no console errors
    for id in ["b1", "b2", "b3"] {
        wait_state(&t, id, "up", Duration::from_secs(5)).await;
    }
    // Sessions to show as bars (and to move later).
    let keys: Vec<String> = (0..24).map(|i| format!("device-{i}")).collect();
    let mut web = Client::new(t.addr("web"));
    for k in &keys {
        let r = web.get("/", &[("X-Device-Id", k)]).await.unwrap();
        assert_eq!(r.status, 200);
    }
    let rows = expect(
        &page,
        &t,
        "loaded",
        "the page lists b1..b3 as up",
        &format!(
            "(() => {{ const r = {ROWS}; return r.length === 3 && r.every(x => x[1] === 'up' && x[2] === 'up') && r; }})()"
        ),
        Duration::from_secs(5),
    )
    .await;
    let shown: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(shown, ["b1", "b2", "b3"]);
    let api: Vec<(String, String)> = api_states(&t, None).await;
    assert_eq!(
        api,
        ["b1", "b2", "b3"].map(|id| (id.to_string(), "up".to_string()))
    );
    // address and weight per backend, the connection badge live
    let details = page
        .eval(
            r#"[...document.querySelectorAll('tr.backend')].map(r =>
                [r.querySelector('.addr').textContent, r.querySelector('.weight').textContent])"#,
        )
        .await
        .unwrap();
    for (i, be) in b.iter().enumerate() {
        assert_eq!(details[i][0], be.addr.to_string(), "address of {}", be.id);
        assert_eq!(details[i][1], "1", "weight of {}", be.id);
    }
    expect(
        &page,
        &t,
        "loaded",
        "the connection badge says live",
        "document.getElementById('conn').dataset.state === 'live'",
        Duration::from_secs(3),
    )
    .await;
    // The session bars follow /api/pools: numbers as the API has them, the longest bar for the most.
    let pools = Client::new(t.admin)
        .get("/api/pools", &[])
        .await
        .unwrap()
        .json();
    let api_sessions: Vec<u64> = pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sessions"].as_u64().unwrap())
        .collect();
    assert_eq!(api_sessions.iter().sum::<u64>(), keys.len() as u64);
    assert!(
        api_sessions[0] > 0,
        "b1 holds sessions to move: {api_sessions:?}"
    );
    let sel = r#"[...document.querySelectorAll('tr.backend td.sessions')].map(c =>
        [Number(c.querySelector('.num').textContent), parseFloat(c.querySelector('.bar > span').style.width)])"#;
    let want = serde_json::json!(api_sessions);
    let bars = expect(
        &page,
        &t,
        "loaded",
        "the session bars show the API's numbers",
        &format!(
            "(() => {{ const b = {sel}; return JSON.stringify(b.map(x => x[0])) === {} && b; }})()",
            Value::from(want.to_string())
        ),
        Duration::from_secs(5),
    )
    .await;
    let max = *api_sessions.iter().max().unwrap();
    for (i, n) in api_sessions.iter().enumerate() {
        let width = bars[i][1].as_f64().unwrap();
        let expected = (*n as f64 / max as f64 * 100.0).round();
        assert_eq!(width, expected, "bar of b{} ({n} of max {max})", i + 1);
    }
    shoot(&page, "status-page-loaded").await;
    page.call(
        "Emulation.setEmulatedMedia",
        serde_json::json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
    )
    .await
    .expect("dark mode");
    shoot(&page, "status-page-dark").await;
    page.call(
        "Emulation.setEmulatedMedia",
        serde_json::json!({ "features": [] }),
    )
    .await
    .expect("light mode");
    // No VIP in this config: `vip` is null in /api/pools and the page hides it.
    assert_eq!(
        page.eval("document.getElementById('vip').hidden")
            .await
            .unwrap(),
        Value::Bool(true)
    );
    let errors = unexpected_errors(&page, &[]);
    assert!(errors.is_empty(), "console errors on load: {errors:#?}");

    // b) a killed backend shows as down within a few seconds
    let killed = b.remove(0);
    killed.shutdown().await;
    let took = std::time::Instant::now();
    expect(
        &page,
        &t,
        "down",
        "b1 shows as down",
        &format!("{} === 'down'", row_state("b1")),
        Duration::from_secs(5),
    )
    .await;
    let badge = page
        .eval(r#"document.querySelector('tr.backend[data-backend="b1"] .state').textContent"#)
        .await
        .unwrap();
    assert_eq!(badge, "down");
    eprintln!("b1 shown down {:?} after it was killed", took.elapsed());
    // The health history: one dot per check the API reports (at most 20), the
    // newest a failure whose hover title has its time and error.
    let pools = Client::new(t.admin)
        .get("/api/pools", &[])
        .await
        .unwrap()
        .json();
    let checks = pools["pools"][0]["backends"][0]["checks"]
        .as_array()
        .cloned()
        .expect("/api/pools lists each backend's `checks`");
    assert!(!checks.is_empty() && checks.len() <= 20, "{checks:?}");
    let title = expect(
        &page,
        &t,
        "down",
        "b1's last health dot is a failure with its time and detail",
        r#"(() => { const d = document.querySelectorAll('tr.backend[data-backend="b1"] .dot');
            const last = d[d.length - 1];
            return d.length > 0 && d.length <= 20 && last.dataset.ok === 'false'
                && last.title.includes('failed: ') && last.title; })()"#,
        Duration::from_secs(3),
    )
    .await;
    eprintln!("b1's last health dot: {title}");
    // The sessions pinned to b1 move on their next request: the feed shows them.
    for k in &keys {
        let r = web.get("/", &[("X-Device-Id", k)]).await.unwrap();
        assert_eq!(r.status, 200);
    }
    let pools = Client::new(t.admin)
        .get("/api/pools", &[])
        .await
        .unwrap()
        .json();
    let moves = pools["pools"][0]["moves"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        moves.len() as u64,
        api_sessions[0].min(50),
        "one move per session that was on b1: {moves:?}"
    );
    for m in &moves {
        assert_eq!(
            (m["from"].as_str(), m["reason"].as_str()),
            (Some("b1"), Some("down"))
        );
        assert!(
            !keys.iter().any(|k| m["session"] == k.as_str()),
            "the key itself is never shown"
        );
    }
    {
        let newest = &moves[0];
        let session = newest["session"].as_str().unwrap();
        let to = newest["to"].as_str().unwrap();
        let li = expect(
            &page,
            &t,
            "down",
            "the feed lists the moves, newest first",
            &format!(
                r#"(() => {{ const l = [...document.querySelectorAll('section[data-pool="app"] li.move')];
                    return l.length === {n} && l[0].dataset.session === {s} && l[0].dataset.reason === 'down' && l[0].textContent; }})()"#,
                n = moves.len(),
                s = Value::from(session)
            ),
            Duration::from_secs(5),
        )
        .await;
        let text = li.as_str().unwrap();
        assert!(
            text.contains(&format!("b1 → {to}")) && text.contains("ago"),
            "move line: {text}"
        );
    }
    shoot(&page, "status-page-down").await;

    // c) the drain button drains a backend (b2: b1 is down, and down outranks draining)
    drain_via_page(&page, &t, "b2", "10m", "drained").await;
    wait_state(&t, "b2", "draining", Duration::from_secs(5)).await;
    expect(
        &page,
        &t,
        "drained",
        "b2 shows as draining, its drain button disabled",
        &format!(
            r#"{} === 'draining' && document.querySelector('button[data-action="drain"][data-backend="b2"]').disabled"#,
            row_state("b2")
        ),
        Duration::from_secs(5),
    )
    .await;
    shoot(&page, "status-page-drained").await;
    shoot(&page, "status-page").await;
    // ... and enable brings it back
    click(
        &page,
        r#"button[data-action="enable"][data-pool="app"][data-backend="b2"]"#,
    )
    .await;
    wait_state(&t, "b2", "up", Duration::from_secs(5)).await;
    expect(
        &page,
        &t,
        "enabled",
        "b2 shows as up again",
        &format!("{} === 'up'", row_state("b2")),
        Duration::from_secs(5),
    )
    .await;

    // e) a rejected reload: the page shows its errors with file:line:col
    let good = std::fs::read_to_string(&t.config).unwrap();
    std::fs::write(
        &t.config,
        good.replace("    backends:\n", "    bogus_key: 1\n    backends:\n"),
    )
    .unwrap();
    let r = Client::new(t.admin)
        .request("POST", "/api/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "a bad config is rejected: {}", r.text());
    let errors = r.json()["errors"].clone();
    let first = errors[0].as_str().expect("errors listed").to_string();
    let loc = first.split(": ").next().unwrap().to_string();
    let shown = expect(
        &page,
        &t,
        "reload-error",
        "the reload error shows with its location",
        r#"(() => { const r = document.getElementById('reload');
            const e = [...r.querySelectorAll('.errors li')];
            return r.dataset.result === 'error' && e.length > 0
                && [e[0].querySelector('code.loc')?.textContent, e[0].textContent, getComputedStyle(e[0]).color]; })()"#,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(shown[0], loc.as_str(), "location of {first}");
    assert!(loc.contains("proxy.yaml:"), "file:line:col in {first}");
    assert_eq!(shown[1], first.as_str());
    let color = shown[2].as_str().unwrap();
    assert!(
        color.starts_with("rgb(198, 40, 40"),
        "errors in red, not {color}"
    );
    let text = page
        .eval("document.getElementById('reload').textContent")
        .await
        .unwrap();
    assert!(text.as_str().unwrap().contains("trigger api"), "{text}");
    shoot(&page, "status-page-reload-error").await;
    let errors = unexpected_errors(&page, &[]);
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // f) tether gone: a quiet "disconnected" badge, no exception, the last data kept
    t.signal(nix::sys::signal::Signal::SIGKILL);
    expect(
        &page,
        &t,
        "disconnected",
        "the badge says disconnected",
        "document.getElementById('conn').dataset.state === 'disconnected' \
         && document.querySelectorAll('tr.backend').length === 3",
        Duration::from_secs(10),
    )
    .await;
    shoot(&page, "status-page-disconnected").await;
    let thrown: Vec<_> = page
        .errors()
        .into_iter()
        .filter(|e| e.source.as_deref() != Some("network"))
        .collect();
    assert!(thrown.is_empty(), "errors once disconnected: {thrown:#?}");
    drop((page, cdp, chrome));
    for be in b {
        be.shutdown().await;
    }
}
