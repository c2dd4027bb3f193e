//! The status page served at `/` by the admin listener, end to end in
//! headless Chromium driven over the DevTools protocol: it lists every
//! backend with its state, follows health changes, drains and enables
//! through the admin API, and asks for the token when reads are protected.
//!
//! Needs Debian's `chromium` (`apt-get install -y --no-install-recommends
//! chromium`); without it these tests fail, they never skip. Screenshots go
//! to `target/test-artifacts/status-page-*.png`. The page's own checks are in
//! `health`, the token's in `token`, the cross-site ones in `origin`; the
//! helpers they share are here.

#[path = "../common/mod.rs"]
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

mod health;
mod origin;
mod token;
