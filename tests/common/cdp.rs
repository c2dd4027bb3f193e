//! A small Chrome DevTools Protocol client for end-to-end page tests:
//! headless Chromium started on a fresh profile (killed on drop), one
//! WebSocket to its browser endpoint, and flattened page sessions.
//!
//! ```ignore
//! let chrome = Chromium::launch();          // panics with install hints if missing
//! let cdp = chrome.connect().await;
//! let page = cdp.new_page().await;          // Runtime, Log and Page enabled
//! page.navigate("http://127.0.0.1:1234/").await?;
//! let n = page.eval("document.querySelectorAll('tr').length").await?;
//! page.wait_for("document.title === 'x'", Duration::from_secs(5)).await?;
//! page.screenshot(&path).await?;
//! assert!(page.errors().is_empty());
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long one CDP call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary: `$CHROMIUM`, else Debian's `/usr/bin/chromium`.
/// Panics (never skips) when it is missing, saying how to install it.
pub fn chromium_binary() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "headless Chromium is required for this test but {} does not exist: \
         install it with `apt-get install -y --no-install-recommends chromium` \
         (Debian package `chromium`, see scripts/deps.sh), or point $CHROMIUM at a binary",
        path.display()
    );
    path
}

/// A headless Chromium process on a fresh profile; killed (with its helper
/// processes, by process group) on drop.
pub struct Chromium {
    child: Child,
    /// `ws://127.0.0.1:PORT/devtools/browser/...`
    pub ws_url: String,
    /// The DevTools HTTP port (`/json/list` and friends).
    pub port: u16,
    /// Everything Chromium wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Start Chromium and wait for its `DevTools listening on ws://...` line.
    pub fn launch() -> Chromium {
        use std::os::unix::process::CommandExt;
        let bin = chromium_binary();
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so drop can take the renderer/zygote helpers with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let (log, rx) = super::drain_lines(child.stderr.take().expect("stderr"));
        let mut chrome = Chromium {
            child,
            ws_url: String::new(),
            port: 0,
            log,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.split("DevTools listening on ").nth(1) {
                        chrome.ws_url = url.trim().to_string();
                        break;
                    }
                }
                Err(_) => panic!(
                    "chromium did not print its DevTools endpoint within 30s; stderr:\n{}",
                    chrome.log_text()
                ),
            }
        }
        chrome.port = chrome
            .ws_url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .and_then(|hp| hp.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad DevTools endpoint {:?}", chrome.ws_url));
        chrome
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Connect to the browser endpoint.
    pub async fn connect(&self) -> Cdp {
        Cdp::connect(&self.ws_url).await
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        // The group we created at spawn (pgid = our child's pid), then the child itself.
        let _ = kill(Pid::from_raw(-self.pid()), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One CDP event.
#[derive(Debug, Clone)]
pub struct Event {
    pub method: String,
    pub params: Value,
    /// The flattened session it belongs to (`None`: the browser's).
    pub session: Option<String>,
}

/// An error the page reported: an uncaught exception, a `console.error`, or
/// a browser log entry of level error (network failures included).
#[derive(Debug, Clone)]
pub struct ConsoleError {
    /// `exception`, `console` or `log`.
    pub kind: &'static str,
    pub text: String,
    /// For log entries: `network`, `javascript`, `security`, ...
    pub source: Option<String>,
    pub url: Option<String>,
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}", self.kind)?;
        if let Some(s) = &self.source {
            write!(f, "/{s}")?;
        }
        write!(f, "] {}", self.text)?;
        if let Some(u) = &self.url {
            write!(f, " ({u})")?;
        }
        Ok(())
    }
}

type Reply = Result<Value, String>;

struct Inner {
    out: mpsc::UnboundedSender<String>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    events: Mutex<Vec<Event>>,
    next: AtomicU64,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A connection to the browser endpoint; cheap to clone.
#[derive(Clone)]
pub struct Cdp {
    inner: Arc<Inner>,
}

impl Cdp {
    pub async fn connect(ws_url: &str) -> Cdp {
        let connect = tokio_tungstenite::connect_async(ws_url);
        let ws = match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => panic!("connecting to {ws_url}: {e}"),
            Err(_) => panic!("connecting to {ws_url} timed out"),
        };
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let inner = Arc::new(Inner {
            out: tx,
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
        });
        let writer = tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                if sink.send(Message::Text(text)).await.is_err() {
                    return;
                }
            }
        });
        let weak = Arc::downgrade(&inner);
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let Some(inner) = weak.upgrade() else { return };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    let waiter = inner.pending.lock().unwrap().remove(&id);
                    if let Some(w) = waiter {
                        let reply = match v.get("error") {
                            Some(e) => Err(e.to_string()),
                            None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                        };
                        let _ = w.send(reply);
                    }
                } else if let Some(method) = v.get("method").and_then(Value::as_str) {
                    inner.events.lock().unwrap().push(Event {
                        method: method.to_string(),
                        params: v.get("params").cloned().unwrap_or(Value::Null),
                        session: v
                            .get("sessionId")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    });
                }
            }
            // Closed: fail whatever still waits.
            if let Some(inner) = weak.upgrade() {
                inner.pending.lock().unwrap().clear();
            }
        });
        inner.tasks.lock().unwrap().extend([writer, reader]);
        Cdp { inner }
    }

    /// Call `method` on `session` (`None`: the browser).
    pub async fn send(&self, session: Option<&str>, method: &str, params: Value) -> Reply {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().unwrap().insert(id, tx);
        self.inner
            .out
            .send(msg.to_string())
            .map_err(|_| format!("{method}: CDP connection closed"))?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply.map_err(|e| format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: CDP connection closed")),
            Err(_) => {
                self.inner.pending.lock().unwrap().remove(&id);
                Err(format!("{method}: no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }

    /// A browser-level call.
    pub async fn call(&self, method: &str, params: Value) -> Reply {
        self.send(None, method, params).await
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Event> {
        self.inner.events.lock().unwrap().clone()
    }

    /// A new tab on about:blank, attached (flattened) with Runtime, Log and Page enabled.
    pub async fn new_page(&self) -> Page {
        let target = self
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await
            .expect("Target.createTarget");
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await
            .expect("Target.attachToTarget");
        let session_id = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        let page = Page {
            cdp: self.clone(),
            target_id,
            session_id,
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).await.expect(domain);
        }
        page
    }
}

/// One attached tab.
pub struct Page {
    pub cdp: Cdp,
    pub target_id: String,
    pub session_id: String,
}

impl Page {
    /// A call on this page's session.
    pub async fn call(&self, method: &str, params: Value) -> Reply {
        self.cdp.send(Some(&self.session_id), method, params).await
    }

    /// This page's events so far, all or of one `method`.
    pub fn events(&self, method: Option<&str>) -> Vec<Event> {
        self.cdp
            .events()
            .into_iter()
            .filter(|e| e.session.as_deref() == Some(self.session_id.as_str()))
            .filter(|e| method.is_none_or(|m| e.method == m))
            .collect()
    }

    /// Navigate and wait until `url` is the loaded document (readyState complete).
    pub async fn navigate(&self, url: &str) -> Result<(), String> {
        let r = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(err) = r.get("errorText").and_then(Value::as_str) {
            return Err(format!("navigating to {url}: {err}"));
        }
        let check = format!(
            "location.href === {} && document.readyState === 'complete'",
            Value::from(url)
        );
        self.wait_for(&check, Duration::from_secs(15))
            .await
            .map(|_| ())
    }

    /// `Runtime.evaluate` with `returnByValue` (promises awaited): the value,
    /// or the exception's description.
    pub async fn eval(&self, expression: &str) -> Reply {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "returnByValue": true,
                    "awaitPromise": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("evaluating `{expression}`: {text}"));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluate `expression` every 100 ms until it is truthy (its value), or
    /// fail after `limit` with the last value or error.
    pub async fn wait_for(&self, expression: &str, limit: Duration) -> Reply {
        let start = Instant::now();
        loop {
            let last = self.eval(expression).await;
            match &last {
                Ok(v) if truthy(v) => return last,
                _ => {}
            }
            if start.elapsed() >= limit {
                return Err(format!(
                    "`{expression}` not true after {limit:?} (last: {last:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Errors the page reported so far: uncaught exceptions, `console.error`
    /// (and failed `console.assert`), and log entries of level error.
    pub fn errors(&self) -> Vec<ConsoleError> {
        let mut out = Vec::new();
        for e in self.events(None) {
            let p = &e.params;
            match e.method.as_str() {
                "Runtime.exceptionThrown" => {
                    let d = &p["exceptionDetails"];
                    let text = d["exception"]["description"]
                        .as_str()
                        .or_else(|| d["text"].as_str())
                        .unwrap_or("exception")
                        .to_string();
                    out.push(ConsoleError {
                        kind: "exception",
                        text,
                        source: None,
                        url: d["url"].as_str().map(str::to_string),
                    });
                }
                "Runtime.consoleAPICalled"
                    if matches!(p["type"].as_str(), Some("error") | Some("assert")) =>
                {
                    let text = p["args"]
                        .as_array()
                        .map(|args| {
                            args.iter()
                                .map(|a| match a.get("value") {
                                    Some(Value::String(s)) => s.clone(),
                                    Some(v) => v.to_string(),
                                    None => a["description"].as_str().unwrap_or("?").to_string(),
                                })
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    out.push(ConsoleError {
                        kind: "console",
                        text,
                        source: None,
                        url: None,
                    });
                }
                "Log.entryAdded" if p["entry"]["level"] == "error" => {
                    let entry = &p["entry"];
                    out.push(ConsoleError {
                        kind: "log",
                        text: entry["text"].as_str().unwrap_or("").to_string(),
                        source: entry["source"].as_str().map(str::to_string),
                        url: entry["url"].as_str().map(str::to_string),
                    });
                }
                _ => {}
            }
        }
        out
    }

    /// A PNG of the whole page (beyond the viewport), written to `path`
    /// (parent directories created).
    pub async fn screenshot(&self, path: &Path) -> Result<(), String> {
        use base64::Engine;
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &metrics["cssContentSize"];
        let w = size["width"].as_f64().unwrap_or(1280.0).max(1.0);
        let h = size["height"].as_f64().unwrap_or(900.0).max(1.0);
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": w, "height": h, "scale": 1 },
                }),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or(""))
            .map_err(|e| format!("screenshot data: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// JavaScript truthiness of a returned value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
