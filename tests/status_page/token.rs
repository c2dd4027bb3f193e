//! The page asks for the admin token when reads, or a drain, need it.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_asks_for_the_token_when_reads_are_protected() {
    let _serial = SERIAL.lock().await;
    let chrome = Chromium::launch();
    let b = backends(3).await;
    let t = with_token(&b, ", protect_reads: true");
    // The contract: reads need the token too.
    let r = Client::new(t.admin).get("/api/pools", &[]).await.unwrap();
    assert_eq!(
        r.status,
        401,
        "GET /api/pools without the token: {}",
        r.text()
    );
    for id in ["b1", "b2", "b3"] {
        let start = std::time::Instant::now();
        while !api_states(&t, Some(TOKEN))
            .await
            .contains(&(id.to_string(), "up".to_string()))
        {
            assert!(start.elapsed() < Duration::from_secs(5), "{id} not up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cdp = chrome.connect().await;
    let page = cdp.new_page().await;
    open(&page, &t).await;

    // d) the token form, a refused token, then the right one
    let form_shown = "!document.getElementById('token-form').hidden \
                      && document.getElementById('conn').dataset.state === 'auth'";
    expect(
        &page,
        &t,
        "token-form",
        "the token form shows",
        form_shown,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('tr.backend').length")
            .await
            .unwrap(),
        0,
        "no backends before the token"
    );
    shoot(&page, "status-page-token-form").await;
    let submit = |token: &str| {
        format!(
            "document.getElementById('token').value = {}; \
             document.getElementById('token-form').requestSubmit(); true",
            Value::from(token)
        )
    };
    page.eval(&submit("not-the-token")).await.unwrap();
    expect(
        &page,
        &t,
        "token-refused",
        "a wrong token brings the form back",
        &format!("{form_shown} && document.getElementById('token-error').textContent !== ''"),
        Duration::from_secs(5),
    )
    .await;
    page.eval(&submit(TOKEN)).await.unwrap();
    expect(
        &page,
        &t,
        "token",
        "with the token the page lists b1..b3 as up",
        &format!(
            "(() => {{ const r = {ROWS}; return document.getElementById('token-form').hidden \
             && r.length === 3 && r.every(x => x[1] === 'up'); }})()"
        ),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        page.eval("sessionStorage.getItem('tether.token')")
            .await
            .unwrap(),
        TOKEN,
        "kept for the tab"
    );
    shoot(&page, "status-page-token").await;

    drain_via_page(&page, &t, "b3", "", "token-drain").await;
    let start = std::time::Instant::now();
    loop {
        let states = api_states(&t, Some(TOKEN)).await;
        if states.contains(&("b3".to_string(), "draining".to_string())) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b3 not draining after the page's drain: {states:?}\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect(
        &page,
        &t,
        "token-drain",
        "b3 shows as draining",
        &format!("{} === 'draining'", row_state("b3")),
        Duration::from_secs(5),
    )
    .await;
    shoot(&page, "status-page-token-drain").await;
    // Only the 401s that asked for the token were logged.
    let errors = unexpected_errors(&page, &[("", 401)]);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    drop((page, cdp, chrome));
    for be in b {
        be.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_asks_for_the_token_when_a_drain_needs_it() {
    let _serial = SERIAL.lock().await;
    let chrome = Chromium::launch();
    let b = backends(3).await;
    // Reads open, mutating calls behind the token.
    let t = with_token(&b, "");
    for id in ["b1", "b2", "b3"] {
        wait_state(&t, id, "up", Duration::from_secs(5)).await;
    }
    let cdp = chrome.connect().await;
    let page = cdp.new_page().await;
    open(&page, &t).await;
    expect(
        &page,
        &t,
        "drain-token",
        "the page lists b1..b3 without asking for a token",
        &format!(
            "(() => {{ const r = {ROWS}; return document.getElementById('token-form').hidden \
             && r.length === 3 && r.every(x => x[1] === 'up'); }})()"
        ),
        Duration::from_secs(5),
    )
    .await;
    drain_via_page(&page, &t, "b1", "1h", "drain-token").await;
    expect(
        &page,
        &t,
        "drain-token",
        "the refused drain asks for the token, the page keeps refreshing",
        "!document.getElementById('token-form').hidden \
         && document.getElementById('conn').dataset.state === 'live'",
        Duration::from_secs(5),
    )
    .await;
    shoot(&page, "status-page-drain-token").await;
    assert_eq!(
        api_states(&t, None).await[0],
        ("b1".to_string(), "up".to_string())
    );
    // The token given, the drain goes through without a second click.
    page.eval(&format!(
        "document.getElementById('token').value = {}; \
         document.getElementById('token-form').requestSubmit(); true",
        Value::from(TOKEN)
    ))
    .await
    .unwrap();
    wait_state(&t, "b1", "draining", Duration::from_secs(5)).await;
    expect(
        &page,
        &t,
        "drain-token",
        "b1 shows as draining",
        &format!(
            "{} === 'draining' && document.getElementById('token-form').hidden",
            row_state("b1")
        ),
        Duration::from_secs(5),
    )
    .await;

    // The VIP and a successful reload, as the page renders them: a real VIP
    // needs a network namespace (tests/vip.rs), so these two answers are
    // stubbed in the page.
    page.eval(
        r#"(() => {
            const real = window.fetch.bind(window);
            const answer = (body) => Promise.resolve(new Response(JSON.stringify(body),
                { status: 200, headers: { "content-type": "application/json" } }));
            window.fetch = (url, opts) => {
                if (url === "/api/pools") return real(url, opts).then((r) => r.json()).then((b) => {
                    b.vip = { address: "198.18.0.100/24", role: "leader", holder: "node-a",
                        since: Date.now() - 90000 };
                    return answer(b); });
                if (url === "/api/reload") return answer({ trigger: "signal", at_unix_ms: Date.now() - 5000,
                    result: "ok", summary: { pools_added: [], pools_removed: [], pools: { app: {} },
                    not_applied: ["admin.listen"] } });
                return real(url, opts);
            };
            return true; })()"#,
    )
    .await
    .unwrap();
    let vip = expect(
        &page,
        &t,
        "vip",
        "the VIP role and holder show",
        "(() => { const v = document.getElementById('vip'); \
          return !v.hidden && v.dataset.role === 'leader' && v.textContent; })()",
        Duration::from_secs(5),
    )
    .await;
    let vip = vip.as_str().unwrap();
    assert!(
        vip.contains("198.18.0.100/24") && vip.contains("node-a") && vip.contains("since 1m ago"),
        "{vip}"
    );
    let reload = page
        .eval("(() => { const r = document.getElementById('reload'); return [r.dataset.result, r.textContent]; })()")
        .await
        .unwrap();
    assert_eq!(reload[0], "ok");
    let text = reload[1].as_str().unwrap();
    assert!(
        text.contains("trigger signal")
            && text.contains("pools changed: app")
            && text.contains("needs restart: admin.listen"),
        "{text}"
    );
    shoot(&page, "status-page-vip").await;

    // The refused POST's 401 is the only error logged.
    let errors = unexpected_errors(&page, &[("/drain", 401)]);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    drop((page, cdp, chrome));
    for be in b {
        be.shutdown().await;
    }
}
