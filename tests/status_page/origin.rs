//! A foreign page cannot drain; the page itself, through a port forward, can.

use super::*;

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
