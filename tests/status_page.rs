//! The status page served at `/` by the admin listener, end to end in
//! headless Chromium driven over the DevTools protocol: it lists every
//! backend with its state, follows health changes, drains and enables
//! through the admin API, and asks for the token when reads are protected.
//!
//! Needs Debian's `chromium` (`apt-get install -y --no-install-recommends
//! chromium`); without it these tests fail, they never skip. Screenshots go
//! to `target/test-artifacts/status-page-*.png`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::cdp::{Chromium, ConsoleError, Page};
use common::{backends, config, wait_state, Client, Tether};
use serde_json::Value;

const HEALTH: &str =
    "    health: { kind: http, path: /healthz, interval: 200ms, timeout: 150ms, rise: 1, fall: 1 }\n";
const TOKEN: &str = "page-s3cret";

/// One Chromium at a time: the machine is small and the timings matter.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artifacts")
        .join(format!("{name}.png"))
}

fn yaml(b: &[common::whoami::Running], admin: &str) -> String {
    config(b, "{ key: { header: X-Device-Id } }", HEALTH, "", "").replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        &format!("admin: {{ listen: \"127.0.0.1:0\"{admin} }}"),
    )
}

/// `GET /api/pools` (with the token when given): backend id -> state.
async fn api_states(t: &Tether, token: Option<&str>) -> Vec<(String, String)> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let r = Client::new(t.admin)
        .get("/api/pools", &headers)
        .await
        .expect("admin");
    assert_eq!(r.status, 200, "GET /api/pools: {}", r.text());
    r.json()["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap_or("").to_string(),
                b["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// What the page shows: `[backend, data-state, state badge text]` per row of pool `app`.
const ROWS: &str = r#"[...document.querySelectorAll('tr.backend[data-pool="app"]')].map(r =>
    [r.dataset.backend, r.dataset.state, (r.querySelector('.state') || {}).textContent])"#;

fn row_state(id: &str) -> String {
    format!(
        r#"(document.querySelector('tr.backend[data-pool="app"][data-backend="{id}"]') || {{dataset: {{}}}}).dataset.state"#
    )
}

/// A page step that must hold within `limit`: on failure, a screenshot
/// (`status-page-<shot>-failed.png`), the page's text and errors, and tether's log.
async fn expect(
    page: &Page,
    t: &Tether,
    shot: &str,
    what: &str,
    expr: &str,
    limit: Duration,
) -> Value {
    match page.wait_for(expr, limit).await {
        Ok(v) => v,
        Err(e) => {
            let path = artifact(&format!("status-page-{shot}-failed"));
            let _ = page.screenshot(&path).await;
            let text = page
                .eval("document.body ? document.body.innerText : ''")
                .await
                .unwrap_or_default();
            panic!(
                "{what}: {e}\nscreenshot: {}\npage text:\n{}\npage errors: {:#?}\ntether log:\n{}",
                path.display(),
                text.as_str().unwrap_or(""),
                page.errors(),
                t.log_text()
            );
        }
    }
}

/// tether on `yaml` with `admin.token_file` holding `TOKEN`, plus `admin` settings.
fn with_token(b: &[common::whoami::Running], admin: &str) -> Tether {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    Tether::start_in(dir, &yaml(b, &format!(", token_file: token{admin}")))
}

async fn shoot(page: &Page, name: &str) {
    let path = artifact(name);
    page.screenshot(&path)
        .await
        .unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()));
}

/// Open the admin listener's `/` and check it is the status page.
async fn open(page: &Page, t: &Tether) {
    let url = format!("http://{}/", t.admin);
    page.navigate(&url)
        .await
        .expect("navigate to the status page");
    let is_page = page
        .eval("!!document.getElementById('pools') && !!document.getElementById('conn')")
        .await
        .unwrap_or(Value::Bool(false));
    if is_page != Value::Bool(true) {
        let body = page
            .eval("document.body ? document.body.innerText : ''")
            .await
            .unwrap_or_default();
        panic!(
            "GET {url} does not serve the status page (src/admin/status.html); it shows: {}",
            body.as_str().unwrap_or("")
        );
    }
}

/// Errors other than the HTTP answers the page expects and handles: the
/// network log entries Chromium writes for them (`allowed`: (url suffix, status)).
fn unexpected_errors(page: &Page, allowed: &[(&str, u16)]) -> Vec<ConsoleError> {
    page.errors()
        .into_iter()
        .filter(|e| {
            !(e.kind == "log"
                && e.source.as_deref() == Some("network")
                && allowed.iter().any(|(suffix, status)| {
                    e.url.as_deref().is_some_and(|u| u.ends_with(suffix))
                        && e.text.contains(&format!("status of {status}"))
                }))
        })
        .collect()
}

/// Click `selector` in the page (failing if it is missing or disabled).
async fn click(page: &Page, selector: &str) {
    let js = format!(
        "(() => {{ const e = document.querySelector({sel}); \
         if (!e) throw new Error('no element ' + {sel}); \
         if (e.disabled) throw new Error('disabled: ' + {sel}); \
         e.click(); return true; }})()",
        sel = Value::from(selector)
    );
    page.eval(&js).await.expect("click");
}

/// Click a backend's drain button and confirm the deadline dialog with `deadline`.
async fn drain_via_page(page: &Page, t: &Tether, id: &str, deadline: &str, shot: &str) {
    click(
        page,
        &format!(r#"button[data-action="drain"][data-pool="app"][data-backend="{id}"]"#),
    )
    .await;
    expect(
        page,
        t,
        shot,
        "the drain dialog opens",
        "document.getElementById('drain-dialog').open",
        Duration::from_secs(3),
    )
    .await;
    page.eval(&format!(
        "document.getElementById('drain-deadline').value = {}; \
         document.getElementById('drain-confirm').click(); true",
        Value::from(deadline)
    ))
    .await
    .expect("confirm the drain");
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_page_cannot_drain_and_a_port_forward_can() {
    let _serial = SERIAL.lock().await;
    let chrome = Chromium::launch();
    let b = backends(2).await;
    let t = Tether::start(&yaml(&b, ""));
    for id in ["b1", "b2"] {
        wait_state(&t, id, "up", Duration::from_secs(5)).await;
    }
    let cdp = chrome.connect().await;

    // Another site open in the same browser (here a backend's origin) posts to
    // the admin API the way a cross-site form would: no preflight, no token.
    let foreign = cdp.new_page().await;
    foreign
        .navigate(&format!("http://{}/", b[0].addr))
        .await
        .expect("open the foreign page");
    let sent = foreign
        .eval(&format!(
            "fetch('http://{}/api/pools/app/backends/b2/drain', {{ method: 'POST', mode: 'no-cors', body: '{{}}' }})\
             .then(() => 'sent', e => 'failed: ' + e)",
            t.admin
        ))
        .await
        .expect("fetch");
    assert_eq!(sent, "sent", "the request left the browser");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api_states(&t, None).await,
        ["b1", "b2"].map(|id| (id.to_string(), "up".to_string())),
        "nothing drained by a foreign page\n{}",
        t.log_text()
    );

    // The status page through a port forward on another port (ssh -L): it
    // loads, polls and drains.
    let (fwd, task) = common::tcp::forwarder(t.admin).await;
    let page = cdp.new_page().await;
    page.navigate(&format!("http://{fwd}/"))
        .await
        .expect("open the page through the forward");
    expect(
        &page,
        &t,
        "forwarded",
        "the page lists b1 and b2 as up through the forward",
        &format!("(() => {{ const r = {ROWS}; return r.length === 2 && r.every(x => x[1] === 'up'); }})()"),
        Duration::from_secs(5),
    )
    .await;
    drain_via_page(&page, &t, "b2", "10m", "forwarded").await;
    wait_state(&t, "b2", "draining", Duration::from_secs(5)).await;
    expect(
        &page,
        &t,
        "forwarded",
        "b2 shows as draining",
        &format!("{} === 'draining'", row_state("b2")),
        Duration::from_secs(5),
    )
    .await;
    let errors = unexpected_errors(&page, &[]);
    assert!(
        errors.is_empty(),
        "console errors through the forward: {errors:#?}"
    );
    task.abort();
}
