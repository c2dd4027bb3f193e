//! TLS test helpers, included with `#[path]` by the tests that need them:
//! certificates made with rcgen (a test CA and leaves signed by it, written
//! into the test's temp dir, never committed), rustls clients, a one-shot
//! HTTP/1.1 exchange over any stream, HTTP/2 requests with the `h2` crate,
//! and a small TLS HTTP backend.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A certificate authority for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(cn: &str) -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("ca key");
        let cert = p.self_signed(&key).expect("ca cert");
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf with common name `cn` for DNS `names`: (cert PEM, key PEM).
    pub fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names).expect("leaf params");
        p.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("leaf key");
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }

    pub fn roots(&self) -> RootCertStore {
        let mut r = RootCertStore::empty();
        r.add(self.cert.der().clone()).expect("ca root");
        r
    }

    /// A client that trusts this CA only, offering `alpn`.
    pub fn connector(&self, alpn: &[&str]) -> TlsConnector {
        let mut c = ClientConfig::builder()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        TlsConnector::from(Arc::new(c))
    }
}

/// Write a (cert, key) PEM pair as `dir/stem.crt` and `dir/stem.key`.
pub fn write_pair(dir: &Path, stem: &str, pair: &(String, String)) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, &pair.0).expect("write cert");
    std::fs::write(&k, &pair.1).expect("write key");
    (c, k)
}

/// A client that accepts any certificate, so a test can look at whichever it is given.
pub fn any_cert_connector(alpn: &[&str]) -> TlsConnector {
    let mut c = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    TlsConnector::from(Arc::new(c))
}

#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        tokio_rustls::rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS to `addr` with server name `sni` (a DNS name, or an IP: then no SNI is sent).
pub async fn connect(
    c: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).map_err(io::Error::other)?;
    c.connect(name, tcp).await
}

/// The common name of the certificate the server presented.
pub fn peer_cn<S>(s: &TlsStream<S>) -> String {
    let certs = s.get_ref().1.peer_certificates().unwrap_or(&[]);
    let Some(leaf) = certs.first() else {
        return String::new();
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).expect("x509");
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("")
        .to_string();
    cn
}

/// The ALPN protocol the server chose.
pub fn alpn<S>(s: &TlsStream<S>) -> Option<String> {
    let p = s.get_ref().1.alpn_protocol()?;
    Some(String::from_utf8_lossy(p).into_owned())
}

/// One HTTP/1.x response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// whoami's `id`.
    pub fn backend(&self) -> String {
        self.json()["id"].as_str().unwrap_or_default().to_string()
    }
    /// The `name=value` part of the Set-Cookie for `name`, if any.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let line = self.header("set-cookie")?;
        let pair = line.split(';').next()?;
        pair.starts_with(&format!("{name}="))
            .then(|| pair.to_string())
    }
}

/// `GET path` over `s` (kept open), with extra header lines.
pub async fn get<S>(s: &mut S, path: &str, headers: &[(&str, &str)]) -> io::Result<Resp>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: web.test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    read_resp(s).await
}

/// Read one response (Content-Length or chunked body).
pub async fn read_resp<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (status, headers, head_len) = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(len) = r.parse(&buf).map_err(io::Error::other)? {
            let headers = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            break (r.code.unwrap_or(0), headers, len);
        }
    };
    let mut body = buf.split_off(head_len);
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if let Some(len) = find("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        while body.len() < len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !body.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body = dechunk(&body);
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = raw.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&raw[..p]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[p + 2..p + 2 + size]);
        raw = &raw[p + 4 + size..];
    }
    out
}

/// An HTTP/2 client connection over `io` (its driver runs on a task).
pub async fn h2_client<S>(io: S) -> h2::client::SendRequest<Bytes>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// `GET path` on an h2 connection: (status, set-cookie `name=value` if any, whoami id, x-forwarded-proto seen).
pub async fn h2_get(
    send: &h2::client::SendRequest<Bytes>,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut req = http::Request::builder().uri(format!("https://web.test{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let mut send = send.clone().ready().await.expect("h2 ready");
    let (resp, _) = send
        .send_request(req.body(()).expect("request"), true)
        .expect("send");
    let resp = resp.await.expect("h2 response");
    let status = resp.status().as_u16();
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("h2 body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, set_cookie, json)
}

/// A TLS HTTP/1.1 backend: every request gets 200 `{"id":ID,"proto":"https"}`.
pub async fn tls_backend(
    id: &str,
    pair: &(String, String),
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let certs = CertificateDer::pem_slice_iter(pair.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("backend cert");
    let key = PrivateKeyDer::from_pem_slice(pair.1.as_bytes()).expect("backend key");
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("backend config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = format!("{{\"id\":\"{id}\",\"proto\":\"https\"}}");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() || s.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}
