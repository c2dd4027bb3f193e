//! The ClientHello/SNI reader (`l4::sni`): real ClientHellos from rustls and
//! hand-built ones with random extensions, fragmented over random records;
//! hostile bytes (random, bit flips, truncations, lengths past the end,
//! duplicated pieces).

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use tether::l4::sni::{server_name, Hello};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::{bound, gen, peak};

/// A DNS name of 1 to 5 labels, mixed case, maybe with a trailing dot. The
/// last label starts with a letter: an all-digit one reads as an IP address
/// (rustls refuses it as a name).
fn dns_name() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,12}[a-zA-Z0-9])?", 0..4),
        "[a-zA-Z]([a-zA-Z0-9-]{0,12}[a-zA-Z0-9])?",
        prop::bool::weighted(0.2),
    )
        .prop_map(|(mut labels, last, dot)| {
            labels.push(last);
            let mut n = labels.join(".");
            if dot {
                n.push('.');
            }
            n
        })
}

/// What the reader should answer for `name`.
fn canonical(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn rustls_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// The first flight of a rustls client connecting to `name`.
fn rustls_hello(name: &str) -> Vec<u8> {
    let server = ServerName::try_from(name.to_owned()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut conn = ClientConnection::new(rustls_config(), server).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

fn vec16(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// One extension: type, then its data with a 2-byte length.
fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut e = kind.to_be_bytes().to_vec();
    e.extend(vec16(data));
    e
}

/// A ClientHello handshake message (type 1, 3-byte length) put together by
/// hand: random session id, cipher suites, unrelated extensions around the
/// `server_name` one, whose list may start with entries of other types.
fn handmade_hello() -> impl Strategy<Value = (String, Vec<u8>)> {
    let other_ext = (1u16.., prop::collection::vec(any::<u8>(), 0..40));
    let other_entry = (1u8.., prop::collection::vec(any::<u8>(), 0..20));
    (
        dns_name(),
        prop::collection::vec(any::<u8>(), 0..=32),
        prop::collection::vec(any::<u16>(), 1..20),
        prop::collection::vec(other_ext.clone(), 0..6),
        prop::collection::vec(other_ext, 0..6),
        prop::collection::vec(other_entry, 0..3),
    )
        .prop_map(|(name, sid, suites, before, after, entries)| {
            let mut list = Vec::new();
            for (kind, data) in &entries {
                list.push(*kind);
                list.extend(vec16(data));
            }
            list.push(0); // host_name
            list.extend(vec16(name.as_bytes()));
            let mut exts = Vec::new();
            for (kind, data) in &before {
                exts.extend(ext(*kind, data));
            }
            exts.extend(ext(0, &vec16(&list)));
            for (kind, data) in &after {
                exts.extend(ext(*kind, data));
            }
            let mut body = vec![3, 3];
            body.extend([0x5a; 32]);
            body.push(sid.len() as u8);
            body.extend(&sid);
            let suites: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
            body.extend(vec16(&suites));
            body.extend([1, 0]); // compression: null
            body.extend(vec16(&exts));
            let mut msg = vec![1];
            msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
            msg.extend(body);
            (name, msg)
        })
}

/// The handshake message of a rustls first flight (a single record).
fn rustls_message(name: &str) -> Vec<u8> {
    let rec = rustls_hello(name);
    let len = usize::from(u16::from_be_bytes([rec[3], rec[4]]));
    assert_eq!(rec.len(), 5 + len, "rustls sent one record");
    rec[5..].to_vec()
}

/// `msg` in handshake records whose payload sizes cycle through `sizes`.
fn records(msg: &[u8], sizes: &[usize], minor: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < msg.len() {
        let n = sizes[i % sizes.len()].min(msg.len() - at);
        out.extend([0x16, 3, minor]);
        out.extend((n as u16).to_be_bytes());
        out.extend(&msg[at..at + n]);
        at += n;
        i += 1;
    }
    out
}

/// A name and its ClientHello, made by rustls or by hand, fragmented over
/// one or more records.
fn hello() -> impl Strategy<Value = (String, Vec<u8>)> {
    let source = prop_oneof![
        dns_name().prop_map(|n| {
            let msg = rustls_message(&n);
            (n, msg)
        }),
        handmade_hello(),
    ];
    (
        source,
        prop_oneof![
            Just(vec![16 * 1024]),
            prop::collection::vec(1usize..600, 1..8)
        ],
        prop_oneof![Just(1u8), Just(3u8)],
    )
        .prop_map(|((name, msg), sizes, minor)| (name, records(&msg, &sizes, minor)))
}

proptest! {
    #![proptest_config(crate::config(128))]

    #[test]
    fn finds_the_name_that_was_put_in((name, wire) in hello()) {
        let (got, used) = peak(|| server_name(&wire));
        prop_assert_eq!(got, Hello::Done(Some(canonical(&name))));
        prop_assert!(used <= bound(wire.len()), "{} bytes for {}", used, wire.len());
        // Every prefix (a read cut anywhere) asks for more.
        for m in (0..wire.len()).step_by(7).chain([wire.len() - 1]) {
            prop_assert_eq!(server_name(&wire[..m]), Hello::More, "{} of {} bytes", m, wire.len());
        }
    }

    #[test]
    fn hostile_hellos_are_bounded(
        buf in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..3000),
            (prop::collection::vec(any::<u8>(), 0..3000)).prop_map(|mut b| {
                // a plausible record header so the reader gets past its first check
                b.splice(0..0, [0x16, 3, 1]);
                b
            }),
            hello().prop_flat_map(|(_, w)| gen::mutate(w)),
            hello().prop_flat_map(|(_, w)| gen::mutate(w)).prop_flat_map(gen::mutate),
        ],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 8),
    ) {
        let (full, used) = peak(|| server_name(&buf));
        prop_assert!(used <= bound(buf.len()), "{} bytes for {}", used, buf.len());
        if let Hello::Done(Some(n)) = &full {
            prop_assert!(!n.is_empty() && n.len() <= 253 && !n.ends_with('.'));
            prop_assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)));
        }
        // A decision never changes as more bytes arrive.
        for cut in cuts {
            let m = cut.index(buf.len() + 1);
            let early = server_name(&buf[..m]);
            prop_assert!(early == Hello::More || early == full, "{m}: {early:?} vs {full:?}");
        }
    }
}
