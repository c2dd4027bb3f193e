//! Conversion of the TLS settings: a listener's `tls` (certificates loaded
//! and checked now, so a bad file is a located load error and not a failed
//! start) and a pool's `tls` (upstream TLS, whose rustls client is built now).

use std::collections::HashMap;
use std::sync::Arc;

use serde_yaml::Value;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::RootCertStore;

use super::error::Report;
use super::locate::KeyPath;
use super::model::*;
use super::model_tls::*;
use super::raw::*;
use super::values;
use crate::tls::certs::{self, Part};

/// A listener's `tls` against its protocol. `Err(())`: an error was
/// recorded and the listener cannot be built.
pub(crate) fn listener_tls(
    r: &mut Report,
    path: &KeyPath,
    raw: Option<RawListenerTls>,
    protocol: Protocol,
) -> Result<Option<ListenerTls>, ()> {
    let tp = path.key("tls");
    let raw = match (raw, protocol.is_tls()) {
        (Some(raw), true) => raw,
        (None, false) => return Ok(None),
        (Some(_), false) => {
            r.err_key(
                &tp,
                "tls only applies to `protocol: https` or `protocol: tls`",
            );
            return Err(());
        }
        (None, true) => {
            r.err(
                &path.key("protocol"),
                format!(
                    "protocol `{}` needs `tls: {{ certs: [{{ name, cert, key }}] }}`",
                    protocol.as_str()
                ),
            );
            return Err(());
        }
    };
    let certs = certs_list(r, &tp.key("certs"), raw.certs.as_ref());
    let default = match &raw.default {
        Some(name) => {
            let found = certs.iter().position(|c| &*c.name == name.as_str());
            if found.is_none() && !certs.is_empty() {
                let known: Vec<&str> = certs.iter().map(|c| &*c.name).collect();
                r.err(
                    &tp.key("default"),
                    format!(
                        "no certificate named `{}` (certs: {})",
                        name.as_str(),
                        known.join(", ")
                    ),
                );
            }
            found
        }
        None if certs.len() > 1 => {
            r.err_key(
                &tp,
                "with several certificates, `default` must name the one for clients \
                 without SNI (or with a name no certificate has)",
            );
            None
        }
        None => Some(0),
    };
    let alpn = match raw.alpn {
        Some(list) => list
            .into_iter()
            .map(|a| match a {
                RawAlpn::H2 => Alpn::H2,
                RawAlpn::Http11 => Alpn::Http11,
            })
            .collect(),
        None if protocol == Protocol::Https => vec![Alpn::H2, Alpn::Http11],
        None => Vec::new(),
    };
    match default {
        Some(default) if !certs.is_empty() => Ok(Some(ListenerTls {
            certs,
            default,
            alpn,
        })),
        _ => Err(()),
    }
}

/// Each entry of `tls.certs`, loaded. Entries with errors are left out
/// (their errors recorded), so the caller sees fewer than were written.
fn certs_list(r: &mut Report, path: &KeyPath, value: Option<&Value>) -> Vec<TlsCert> {
    let items = match value {
        Some(Value::Sequence(items)) if !items.is_empty() => items,
        Some(Value::Sequence(_)) | None | Some(Value::Null) => {
            r.err(path, "at least one certificate is required");
            return Vec::new();
        }
        Some(_) => {
            r.err(
                path,
                "certs must be a list like `- { name: site, cert: site.crt, key: site.key }`",
            );
            return Vec::new();
        }
    };
    let mut seen: HashMap<String, KeyPath> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let cp = path.idx(i);
        let Some(raw) = r.de::<RawCert>(&cp, item) else {
            continue;
        };
        let name = raw.name.as_str();
        let np = cp.key("name");
        if let Some(problem) = values::id_problem("certificate name", name) {
            r.err(&np, problem);
            continue;
        }
        if let Some(first) = seen.get(name) {
            let line = r.line_of(first);
            r.err(
                &np,
                format!("duplicate certificate name `{name}` (first used at line {line})"),
            );
            continue;
        }
        seen.insert(name.to_owned(), np);
        let (cert, key) = (values::resolve(r, &raw.cert), values::resolve(r, &raw.key));
        match certs::load_pair(&cert, &key) {
            Ok(loaded) => out.push(TlsCert {
                name: Arc::from(name),
                cert,
                key,
                loaded,
            }),
            Err(e) => {
                let at = match e.part() {
                    Part::Cert => cp.key("cert"),
                    Part::Key => cp.key("key"),
                };
                r.err(&at, e.to_string());
            }
        }
    }
    out
}

/// `pools.NAME.tls`: SNI required (an empty one would turn verification off
/// in pingora), verification on unless `verify: false`, `ca` read now.
pub(crate) fn pool_tls(r: &mut Report, path: &KeyPath, raw: RawPoolTls) -> Option<PoolTls> {
    let verify = raw.verify.unwrap_or(true);
    let sni = raw.sni.as_ref().map(|s| s.as_str().trim().to_owned());
    let server_name = match sni.as_deref() {
        None | Some("") => {
            r.err(
                &path.key("sni"),
                "sni is required with upstream TLS: the name sent to the backends and \
                 checked against their certificates (like app.internal)",
            );
            None
        }
        Some(s) => match ServerName::try_from(s.to_owned()) {
            Ok(n) => Some(n),
            Err(_) => {
                r.err(
                    &path.key("sni"),
                    format!("`{s}` is not a DNS name or IP address"),
                );
                None
            }
        },
    };
    let mut roots = RootCertStore::empty();
    let mut ca_der = Vec::new();
    let ca = match &raw.ca {
        Some(_) if !verify => {
            r.err_key(
                &path.key("ca"),
                "ca only applies with `verify: true` (nothing is checked with verify: false)",
            );
            None
        }
        Some(s) => {
            let file = values::resolve(r, s);
            match certs::read_certs(&file) {
                Ok(list) => {
                    for c in list {
                        ca_der.push(c.to_vec());
                        if let Err(e) = roots.add(c) {
                            r.err(
                                &path.key("ca"),
                                format!("`{}`: not a usable CA certificate: {e}", file.display()),
                            );
                        }
                    }
                    Some(file)
                }
                Err(e) => {
                    r.err(&path.key("ca"), e.to_string());
                    None
                }
            }
        }
        None if verify => {
            let found = pingora::tls::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.unwrap_or_default());
            if added == 0 {
                r.err(
                    &path.key("verify"),
                    "no system CA certificates could be loaded to verify the backends: \
                     set `ca` to the CA that signed them",
                );
            }
            None
        }
        None => None,
    };
    let pingora_ca = (!ca_der.is_empty()).then(|| {
        use pingora::utils::tls::{parse_x509, WrappedX509};
        // Every entry parsed as X.509 above, so pingora's parser (the same one) cannot fail.
        let list: Vec<WrappedX509> = ca_der
            .into_iter()
            .map(|der| WrappedX509::new(der, parse_x509))
            .collect();
        Arc::<[WrappedX509]>::from(list)
    });
    let client = crate::tls::client::client_config(roots, verify);
    // The same trust, offering only h2: `health.kind: grpc` probes.
    let mut client_h2 = client.clone();
    client_h2.alpn_protocols = vec![b"h2".to_vec()];
    Some(PoolTls {
        sni: sni?,
        server_name: server_name?,
        verify,
        ca,
        pingora_ca,
        client: Arc::new(client),
        client_h2: Arc::new(client_h2),
    })
}
