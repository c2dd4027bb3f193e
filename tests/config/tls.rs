//! Listener and pool TLS: certificates loaded and matched to their keys, SNI, CA files.

use super::*;

/// A temp dir with certificates `a` (a.test) and `b` (b.test), a CA file,
/// and a file that is no PEM at all.
pub(crate) fn tls_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = tlsh::TestCa::new("config test CA");
    tlsh::write_pair(dir.path(), "a", &ca.leaf("a.test", &["a.test"]));
    tlsh::write_pair(dir.path(), "b", &ca.leaf("b.test", &["b.test"]));
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "not PEM at all\n").unwrap();
    dir
}

/// `BASE` as an https listener with `tls`, plus `pool_tls` on the pool when not empty.
pub(crate) fn https(tls: &str, pool_tls: &str) -> String {
    let text = edit(
        "    pool: app\n",
        &format!("    pool: app\n    protocol: https\n    tls: {tls}\n"),
    );
    if pool_tls.is_empty() {
        return text;
    }
    text.replacen(
        "    backends:\n",
        &format!("    tls: {pool_tls}\n    backends:\n"),
        1,
    )
}

pub(crate) const TWO: &str = "{ certs: [{ name: a, cert: a.crt, key: a.key }, { name: b, cert: b.crt, key: b.key }], default: b }";

#[test]
fn tls_settings_are_loaded_and_checked() {
    let dir = tls_dir();
    let file = dir.path().join("proxy.yaml");
    let parse = |text: &str| config::parse(&file, text);
    let snap =
        parse(&https(TWO, "{ sni: app.internal, ca: ca.pem }")).unwrap_or_else(|e| panic!("{e}"));
    let web = &snap.listeners[0];
    assert_eq!(web.protocol, Protocol::Https);
    let tls = web.tls.as_ref().expect("tls");
    assert_eq!((tls.certs.len(), tls.default), (2, 1));
    assert_eq!(tls.certs[0].loaded.names, ["a.test"]);
    assert_eq!(
        tls.alpn,
        [Alpn::H2, Alpn::Http11],
        "https offers h2 and http/1.1"
    );
    let up = snap.pools[0].tls.as_ref().expect("pool tls");
    assert!(up.verify && up.ca.is_some() && up.pingora_ca.is_some());
    assert_eq!(up.sni, "app.internal");
    // One certificate needs no default; verify: false must be written out.
    let one = "{ certs: [{ name: a, cert: a.crt, key: a.key }], alpn: [http/1.1] }";
    let snap = parse(&https(one, "{ sni: app.internal, verify: false }"))
        .unwrap_or_else(|e| panic!("{e}"));
    let tls = snap.listeners[0].tls.as_ref().expect("tls");
    assert_eq!((tls.default, tls.alpn.as_slice()), (0, &[Alpn::Http11][..]));
    assert!(!snap.pools[0].tls.as_ref().expect("pool tls").verify);
    // A tls listener: L4 keys, no ALPN unless asked.
    let text = tcp("sni").replace(
        "protocol: tcp",
        &format!("protocol: tls\n    tls: {one}").replace(", alpn: [http/1.1]", ""),
    );
    let snap = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.listeners[0].protocol, Protocol::Tls);
    assert!(snap.listeners[0].tls.as_ref().expect("tls").alpn.is_empty());

    let cert = |name: &str, c: &str, k: &str| format!("{{ name: {name}, cert: {c}, key: {k} }}");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            https(
                &format!(
                    "{{ certs: [{}, {}], default: a }}",
                    cert("a", "a.crt", "a.key"),
                    cert("b", "b.crt", "a.key")
                ),
                "",
            ),
            "listeners[0].tls.certs[1].key",
            "does not match the certificate in",
        ),
        (
            https(
                &format!("{{ certs: [{}] }}", cert("a", "missing.crt", "a.key")),
                "",
            ),
            "listeners[0].tls.certs[0].cert",
            "cannot read",
        ),
        (
            https(
                &format!("{{ certs: [{}] }}", cert("a", "garbage.pem", "a.key")),
                "",
            ),
            "listeners[0].tls.certs[0].cert",
            "holds no certificate",
        ),
        (
            https(
                &format!("{{ certs: [{}] }}", cert("a", "a.crt", "garbage.pem")),
                "",
            ),
            "listeners[0].tls.certs[0].key",
            "holds no private key",
        ),
        (
            https(&TWO.replace("default: b", "default: c"), ""),
            "listeners[0].tls.default",
            "no certificate named `c` (certs: a, b)",
        ),
        (
            https(&TWO.replace(", default: b", ""), ""),
            "listeners[0].tls",
            "`default` must name the one for clients without SNI",
        ),
        (
            https(
                &TWO.replace("name: b", "name: a")
                    .replace("default: b", "default: a"),
                "",
            ),
            "listeners[0].tls.certs[1].name",
            "duplicate certificate name `a`",
        ),
        (
            https(&TWO.replace("}], default", "}], alpn: [h3], default"), ""),
            "listeners[0].tls.alpn[0]",
            "unknown variant `h3`",
        ),
        (
            https("{ certs: [] }", ""),
            "listeners[0].tls.certs",
            "at least one certificate is required",
        ),
        (
            edit(
                "    pool: app\n",
                &format!("    pool: app\n    tls: {TWO}\n"),
            ),
            "listeners[0].tls",
            "tls only applies to `protocol: https` or `protocol: tls`",
        ),
        (
            https(TWO, "").replace("protocol: https", "protocol: https\n    h2c: true"),
            "listeners[0].h2c",
            "h2c only applies to `protocol: http`",
        ),
        (
            https(TWO, "{ verify: true }"),
            "pools.app.tls.sni",
            "sni is required with upstream TLS",
        ),
        (
            https(TWO, "{ sni: app.internal, verify: false, ca: ca.pem }"),
            "pools.app.tls.ca",
            "ca only applies with `verify: true`",
        ),
        (
            https(TWO, "{ sni: app.internal, ca: garbage.pem }"),
            "pools.app.tls.ca",
            "holds no certificate",
        ),
        (
            https(TWO, "").replace(COOKIE, "sni"),
            "listeners[0].affinity.key",
            "`sni` keys need `protocol: tcp` or `protocol: tls`",
        ),
        (
            text.replace("key: sni", &format!("key: {COOKIE}")),
            "listeners[0].affinity.key.cookie",
            "`cookie` keys need an http listener (`protocol: http` or `https`)",
        ),
    ];
    let mut failures = Vec::new();
    for (yaml, path, message) in cases {
        match parse(&yaml) {
            Ok(_) => failures.push(format!("{path}: accepted\n{yaml}")),
            Err(errs) => {
                let e = &errs.errors[0];
                if errs.len() != 1 || e.path != path || !e.message.contains(message) {
                    failures.push(format!("{path} / {message}: got\n    {errs}"));
                }
                let shown = e.to_string();
                assert!(
                    shown.starts_with(&format!(
                        "{}:{}:{}: {path}: ",
                        file.display(),
                        e.line,
                        e.col
                    )),
                    "{shown}"
                );
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
