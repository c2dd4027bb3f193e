//! A tcp connection's key from its first bytes (`sni`, `prefix`; on a tls
//! listener the decrypted bytes, `sni` coming from the handshake), read
//! within a size bound and a deadline. Whatever was read is kept, to be
//! forwarded to the backend untouched before anything else.

use std::io;
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::sni::{self, Hello};
use crate::affinity::key::MAX_KEY_LEN;
use crate::config::{Key, PrefixKey};

/// What reading the first bytes gave.
pub struct Opening {
    /// `None`: no key within the bounds; the listener's fallback decides.
    pub key: Option<String>,
    /// Every byte read, in order.
    pub bytes: Vec<u8>,
    /// The client half-closed while we read.
    pub eof: bool,
}

/// Read the key `key` asks for. `source_ip` needs no bytes; `sni` waits up
/// to `hello_timeout` (the listener's `client_header`), `prefix` up to its own.
pub async fn read<S: AsyncRead + Unpin>(
    tcp: &mut S,
    key: &Key,
    hello_timeout: Duration,
) -> io::Result<Opening> {
    match key {
        Key::Sni => {
            read_until(
                tcp,
                sni::MAX_BUFFER,
                hello_timeout,
                |buf| match sni::server_name(buf) {
                    Hello::More => None,
                    Hello::Done(name) => Some(name),
                },
            )
            .await
        }
        Key::Prefix(p) => read_until(tcp, p.max_bytes, p.timeout, |buf| prefix(p, buf)).await,
        _ => Ok(Opening {
            key: None,
            bytes: Vec::new(),
            eof: false,
        }),
    }
}

/// The prefix's capture group, once the pattern matches. A match whose id is
/// empty, too long or not UTF-8 decides too: there is no usable key.
fn prefix(p: &PrefixKey, buf: &[u8]) -> Option<Option<String>> {
    let caps = p.pattern.captures(buf)?;
    Some(
        caps.get(1)
            .and_then(|m| std::str::from_utf8(m.as_bytes()).ok())
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
            .map(str::to_owned),
    )
}

/// Read until `judge` decides (`Some`), `max` bytes were read, the client
/// half-closes or `limit` passes; only the first answers with a key. Never
/// reads past `max`: the rest of the stream stays in the socket.
async fn read_until<S: AsyncRead + Unpin>(
    tcp: &mut S,
    max: usize,
    limit: Duration,
    mut judge: impl FnMut(&[u8]) -> Option<Option<String>>,
) -> io::Result<Opening> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut bytes = Vec::with_capacity(max.min(2048));
    let mut eof = false;
    let mut key = None;
    while bytes.len() < max {
        let room = max - bytes.len();
        let mut into = (&mut bytes).limit(room);
        match tokio::time::timeout_at(deadline, tcp.read_buf(&mut into)).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => {
                eof = true;
                break;
            }
            Ok(Ok(_)) => {
                if let Some(decided) = judge(&bytes) {
                    key = decided;
                    break;
                }
            }
        }
    }
    Ok(Opening { key, bytes, eof })
}
