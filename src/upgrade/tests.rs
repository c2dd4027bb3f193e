//! Tests of the upgrade handoff: both sides run in this process on two tasks,
//! each test on its own abstract name, with real loopback listeners.

use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn unique(tag: &str) -> String {
    format!("tether-upgrade-test-{}-{tag}", std::process::id())
}

fn loopback() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn cloexec(fd: &impl AsRawFd) -> bool {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    u32::from_str_radix(flags, 8).unwrap() & 0o2_000_000 != 0
}

/// The old side of one complete handoff of `socks`.
async fn serve_one(offer: Offer, socks: Vec<(String, TcpListener)>) -> Result<u32, UpgradeError> {
    let mut successor = offer.accept().await?;
    successor.send_sockets(&socks).await?;
    successor.wait_release().await?;
    let pid = successor.pid();
    successor.released(offer).await?;
    drop(socks); // the old process closes its own copies
    Ok(pid)
}

#[tokio::test]
async fn handoff_keeps_the_backlog_and_frees_the_name() {
    let name = unique("handoff");
    let (web, web_addr) = loopback();
    let (admin, admin_addr) = loopback();
    // Connected before the handoff: it waits in the listener's backlog.
    let mut early = TcpStream::connect(web_addr).unwrap();
    early.write_all(b"early").unwrap();

    let offer = Offer::bind_named(&name).unwrap();
    let old = tokio::spawn(serve_one(
        offer,
        vec![("web".into(), web), ("admin".into(), admin)],
    ));

    let mut pred = Predecessor::connect_named(&name, WAIT).await.unwrap();
    assert_eq!(pred.pid(), std::process::id());
    let mut socks = pred.receive_sockets().await.unwrap();
    assert_eq!(socks.len(), 2);
    assert_eq!(socks["web"].local_addr().unwrap(), web_addr);
    assert_eq!(socks["admin"].local_addr().unwrap(), admin_addr);
    assert!(
        socks.values().all(cloexec),
        "received sockets must be close-on-exec"
    );
    // Until the release the old side still holds the rendezvous.
    assert!(matches!(
        Offer::bind_named(&name),
        Err(UpgradeError::AlreadyRunning { .. })
    ));

    pred.release().await.unwrap();
    // `released` frees the name before it answers: the successor binds it at once.
    let own = Offer::bind_named(&name).unwrap();
    assert_eq!(own.name(), name);
    assert_eq!(old.await.unwrap().unwrap(), std::process::id());

    let web = socks.remove("web").unwrap();
    web.set_nonblocking(true).unwrap();
    let web = tokio::net::TcpListener::from_std(web).unwrap();
    let (conn, _) = timeout(WAIT, web.accept()).await.unwrap().unwrap();
    let mut conn = conn.into_std().unwrap();
    conn.set_nonblocking(false).unwrap();
    let mut got = [0u8; 5];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(
        &got, b"early",
        "the connection queued before the handoff is served"
    );
    drop(early);

    // New connections reach the successor too.
    let _late = TcpStream::connect(web_addr).unwrap();
    timeout(WAIT, web.accept()).await.unwrap().unwrap();
}

#[tokio::test]
async fn many_sockets_cross_several_frames() {
    let name = unique("many");
    let count = MAX_FDS * 2 + 22;
    let listeners: Vec<(String, TcpListener)> = (0..count)
        .map(|i| (format!("l{i}"), loopback().0))
        .collect();
    let addrs: HashMap<String, SocketAddr> = listeners
        .iter()
        .map(|(n, l)| (n.clone(), l.local_addr().unwrap()))
        .collect();
    let offer = Offer::bind_named(&name).unwrap();
    let old = tokio::spawn(serve_one(offer, listeners));
    let mut pred = Predecessor::connect_named(&name, WAIT).await.unwrap();
    let socks = pred.receive_sockets().await.unwrap();
    pred.release().await.unwrap();
    old.await.unwrap().unwrap();
    assert_eq!(socks.len(), count);
    for (n, l) in &socks {
        assert_eq!(l.local_addr().unwrap(), addrs[n], "{n}");
    }
}

#[tokio::test]
async fn no_sockets_is_a_valid_handoff() {
    let name = unique("none");
    let offer = Offer::bind_named(&name).unwrap();
    let old = tokio::spawn(serve_one(offer, Vec::new()));
    let mut pred = Predecessor::connect_named(&name, WAIT).await.unwrap();
    assert!(pred.receive_sockets().await.unwrap().is_empty());
    pred.release().await.unwrap();
    old.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_second_offer_on_a_live_config_is_already_running() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, "{}").unwrap();
    let alias = dir.path().join("sub/../proxy.yaml");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let name = rendezvous_name(&config).unwrap();
    assert_eq!(rendezvous_name(&alias).unwrap(), name);
    assert!(name.starts_with("tether-upgrade-") && name.len() == "tether-upgrade-".len() + 16);

    let _offer = Offer::bind(&config).unwrap();
    let err = Offer::bind(&alias).err().unwrap();
    assert!(matches!(err, UpgradeError::AlreadyRunning { .. }), "{err}");
    assert!(
        err.to_string().contains("another tether already runs on"),
        "{err}"
    );
}

#[test]
fn the_file_name_is_kept_and_the_directory_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("v1.yaml"), "{}").unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
    std::os::unix::fs::symlink("v1.yaml", real.join("proxy.yaml")).unwrap();
    let name = rendezvous_name(&real.join("proxy.yaml")).unwrap();
    assert_eq!(
        rendezvous_name(&dir.path().join("link/proxy.yaml")).unwrap(),
        name
    );
    // Retargeting a symlinked proxy.yaml (a package upgrade) keeps the name.
    assert_ne!(rendezvous_name(&real.join("v1.yaml")).unwrap(), name);
}

#[tokio::test]
async fn a_successor_leaving_early_changes_nothing_on_the_old_side() {
    let name = unique("early-exit");
    let (web, web_addr) = loopback();
    let offer = Offer::bind_named(&name).unwrap();
    let pred = tokio::spawn({
        let name = name.clone();
        async move {
            let mut pred = Predecessor::connect_named(&name, WAIT).await.unwrap();
            pred.receive_sockets().await.unwrap();
            // Dropped without `release`: it failed to start.
        }
    });
    let mut successor = offer.accept().await.unwrap();
    successor.send_sockets(&[("web", &web)]).await.unwrap();
    pred.await.unwrap();
    let err = successor.wait_release().await.unwrap_err();
    assert!(matches!(err, UpgradeError::SuccessorGone(_)), "{err}");
    // The old side still serves its socket and can hand it to the next successor.
    assert_eq!(web.local_addr().unwrap(), web_addr);
    let old = tokio::spawn(serve_one(offer, vec![("web".into(), web)]));
    let mut pred = Predecessor::connect_named(&name, WAIT).await.unwrap();
    assert_eq!(
        pred.receive_sockets().await.unwrap()["web"]
            .local_addr()
            .unwrap(),
        web_addr
    );
    pred.release().await.unwrap();
    old.await.unwrap().unwrap();
}

#[tokio::test]
async fn nobody_to_take_over_is_a_clear_error() {
    let err = Predecessor::connect_named(&unique("nobody"), WAIT)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, UpgradeError::NoPredecessor { .. }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = Predecessor::connect(&dir.path().join("proxy.yaml"), WAIT)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().starts_with("no running tether for "),
        "{err}"
    );
}

#[tokio::test]
async fn a_busy_predecessor_times_out() {
    let name = unique("busy");
    let _offer = Offer::bind_named(&name).unwrap(); // never accepts
    let err = Predecessor::connect_named(&name, Duration::from_millis(200))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, UpgradeError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn a_stranger_on_the_name_is_a_protocol_error() {
    let name = unique("stranger");
    let listener = UnixListener::bind(abstract_path(&name)).unwrap();
    let stranger = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let conn = Conn::new(stream, UpgradeError::SuccessorGone);
        conn.send(HELLO, &[0, 9], &[], "test").await.unwrap();
        conn.send(42, b"what", &[], "test").await.unwrap();
    });
    let err = Predecessor::connect_named(&name, WAIT).await.err().unwrap();
    assert!(matches!(err, UpgradeError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("protocol version 1"), "{err}");
    stranger.await.unwrap();
}

#[test]
fn only_our_user_or_root_is_trusted() {
    assert!(trusted(1000, 1000));
    assert!(trusted(0, 1000));
    assert!(!trusted(1001, 1000));
    assert!(!trusted(1000, 0));
}

#[test]
fn argv0_resolves_against_the_start_dir_or_path() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("tether");
    std::fs::write(&exe, "").unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(["/nonexistent", bin.to_str().unwrap()]).unwrap();
    assert_eq!(
        resolve_argv0(Path::new("bin/tether"), Some(dir.path()), None),
        Some(exe.clone())
    );
    assert_eq!(resolve_argv0(&exe, None, None), Some(exe.clone()));
    assert_eq!(
        resolve_argv0(Path::new("tether"), None, Some(&path)),
        Some(exe.clone())
    );
    assert_eq!(resolve_argv0(Path::new("other"), None, Some(&path)), None);
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert_eq!(resolve_argv0(&exe, None, None), None, "not executable");
}

#[test]
fn the_successor_command_upgrades_on_the_same_config() {
    remember_start();
    let cmd = successor_command(Path::new("proxy.yaml"));
    assert!(Path::new(cmd.get_program()).is_absolute());
    assert!(!cmd.get_program().as_bytes().ends_with(b" (deleted)"));
    let args: Vec<&OsStr> = cmd.get_args().collect();
    assert_eq!(args[..2], [OsStr::new("--upgrade"), OsStr::new("--config")]);
    let config = Path::new(args[2]);
    assert!(
        config.is_absolute() && config.ends_with("proxy.yaml"),
        "{config:?}"
    );
}
