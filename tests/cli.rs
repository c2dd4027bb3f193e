//! The command line: `check`, `--version`, and errors on a bad file.

use std::process::Command;

fn tether() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether"))
}

#[test]
fn check_passes_on_the_shipped_proxy_yaml() {
    let out = tether()
        .args(["check", "--config", "proxy.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.starts_with("proxy.yaml: 1 pool (2 backends), 1 listener"),
        "{line}"
    );
}

#[test]
fn check_reports_every_error_with_file_line_col_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "pools:\n  app:\n    backends:\n      - { id: a, addr: \"127.0.0.1:1\", weight: 0 }\n      - { id: a, addr: \"nowhere\" }\n\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:8080\"\n    pool: missing\n    affinity: { key: source_ip }\n    colour: blue\n",
    )
    .unwrap();
    let out = tether().arg("check").arg("-c").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = path.display().to_string();
    for want in [
        format!("{f}:4:"),
        "pools.app.backends[0].weight".to_string(),
        format!("{f}:5:"),
        "pools.app.backends[1].addr".to_string(),
        "listeners[0].colour".to_string(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.lines().count() >= 3,
        "all errors, not just the first:\n{err}"
    );
    assert!(
        err.lines().all(|l| l.starts_with(&f)),
        "every line is FILE:LINE:COL: ...\n{err}"
    );
}

#[test]
fn running_on_a_bad_file_fails_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, "pools: {}\n").unwrap();
    let out = tether().arg("-c").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("p.yaml:"));
}

#[test]
fn version() {
    let out = tether().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(
        &path,
        "admin: { listen: \"127.0.0.1:0\" }\npools:\n  app:\n    backends:\n      - { id: a, addr: \"127.0.0.1:9\" }\n\
         listeners:\n  - { name: web, bind: \"127.0.0.1:0\", pool: app, affinity: { key: source_ip } }\n",
    )
    .unwrap();
    let mut child = tether()
        .args(["--log-format", "json", "-c"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref().take(3) {
        let line = line.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        seen.push(v);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|v| v["fields"]["message"] == "listening" && v["fields"]["listener"] == "web"),
        "{seen:?}"
    );
}
