//! A real gRPC server and client (tonic) for the HTTP/2 backend tests, with
//! hand-written prost messages and stubs (what `tonic-build` would generate,
//! without protoc or a build script).
//!
//! Service `test.Echo`: `Who` (unary: which backend answered, the device id
//! and `te` it saw) and `Watch` (server stream: `count` replies, one every
//! `interval_ms`, forever with 0; the head held back `head_delay_ms`; the
//! call failed with ABORTED after `fail_after` replies). Plus the standard
//! `grpc.health.v1.Health/Check`, answering SERVING until told otherwise.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoReply {
    #[prost(string, tag = "1")]
    pub backend: String,
    #[prost(string, tag = "2")]
    pub device: String,
    #[prost(uint32, tag = "3")]
    pub seq: u32,
    #[prost(string, tag = "4")]
    pub te: String,
    /// The address the call came from: tether's end of a backend connection.
    #[prost(string, tag = "5")]
    pub peer: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    #[prost(uint32, tag = "1")]
    pub count: u32,
    #[prost(uint32, tag = "2")]
    pub interval_ms: u32,
    #[prost(uint32, tag = "3")]
    pub head_delay_ms: u32,
    #[prost(uint32, tag = "4")]
    pub fail_after: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// One backend's identity and switches, shared with its server.
#[derive(Clone)]
pub struct Backend {
    pub id: String,
    pub serving: Arc<AtomicBool>,
}

fn reply<T>(b: &Backend, req: &Request<T>, seq: u32) -> WhoReply {
    let meta = req.metadata();
    let get = |k: &str| {
        meta.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    WhoReply {
        backend: b.id.clone(),
        device: get("x-device-id"),
        seq,
        te: get("te"),
        peer: req.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
    }
}

struct Who(Backend);

impl tonic::server::UnaryService<WhoRequest> for Who {
    type Response = WhoReply;
    type Future = BoxFuture<Response<WhoReply>, Status>;
    fn call(&mut self, req: Request<WhoRequest>) -> Self::Future {
        let b = self.0.clone();
        Box::pin(async move {
            if req.get_ref().name == "fail" {
                return Err(Status::failed_precondition("asked to fail"));
            }
            Ok(Response::new(reply(&b, &req, 0)))
        })
    }
}

struct Watch(Backend);

type ReplyStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<WhoReply, Status>> + Send>>;

impl tonic::server::ServerStreamingService<WatchRequest> for Watch {
    type Response = WhoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;
    fn call(&mut self, req: Request<WatchRequest>) -> Self::Future {
        let b = self.0.clone();
        Box::pin(async move {
            let w = req.get_ref().clone();
            let first = reply(&b, &req, 0);
            // tonic sends the head once this future returns: holding it back holds the head.
            tokio::time::sleep(Duration::from_millis(u64::from(w.head_delay_ms))).await;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                let mut seq = 0u32;
                loop {
                    if w.fail_after > 0 && seq == w.fail_after {
                        let _ = tx.send(Err(Status::aborted("enough"))).await;
                        return;
                    }
                    if w.count > 0 && seq == w.count {
                        return;
                    }
                    let r = WhoReply {
                        seq,
                        ..first.clone()
                    };
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(u64::from(w.interval_ms))).await;
                }
            });
            let s: ReplyStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(Response::new(s))
        })
    }
}

struct Health(Backend);

impl tonic::server::UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<Response<HealthCheckResponse>, Status>;
    fn call(&mut self, req: Request<HealthCheckRequest>) -> Self::Future {
        let serving = self.0.serving.load(Ordering::SeqCst);
        Box::pin(async move {
            if !req.get_ref().service.is_empty() {
                return Err(Status::not_found("unknown service"));
            }
            Ok(Response::new(HealthCheckResponse {
                status: if serving { 1 } else { 2 },
            }))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for Backend {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let b = self.clone();
        Box::pin(async move {
            let resp = match req.uri().path() {
                "/test.Echo/Who" => {
                    let mut g = tonic::server::Grpc::new(ProstCodec::default());
                    g.unary(Who(b), req).await
                }
                "/test.Echo/Watch" => {
                    let mut g = tonic::server::Grpc::new(ProstCodec::default());
                    g.server_streaming(Watch(b), req).await
                }
                "/grpc.health.v1.Health/Check" => {
                    let mut g = tonic::server::Grpc::new(ProstCodec::default());
                    g.unary(Health(b), req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(resp)
        })
    }
}

/// A running backend; its server stops when this is dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub backend: Backend,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Start backend `id` on a loopback port: h2c, or TLS (ALPN h2) with `tls`'s
/// (cert PEM, key PEM).
pub async fn start(id: &str, tls: Option<&(String, String)>) -> Running {
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let backend = Backend {
        id: id.to_owned(),
        serving: Arc::new(AtomicBool::new(true)),
    };
    let mut server = Server::builder();
    if let Some((cert, key)) = tls {
        server = server
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .unwrap();
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let svc = backend.clone();
    tokio::spawn(async move {
        let _ = server
            .serve_with_incoming_shutdown(svc, incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Running {
        addr,
        backend,
        _stop: stop,
    }
}

/// A channel to `addr`: h2c, or TLS trusting `ca_pem` for `domain`.
pub async fn channel(addr: SocketAddr, tls: Option<(&str, &str)>) -> Channel {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    if let Some((ca_pem, domain)) = tls {
        e = e
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca_pem))
                    .domain_name(domain),
            )
            .unwrap();
    }
    e.connect().await.expect("gRPC channel to tether")
}

fn with_device<T>(msg: T, device: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-device-id", device.parse().expect("device id"));
    r
}

async fn grpc(ch: &Channel) -> Result<tonic::client::Grpc<Channel>, Status> {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    Ok(g)
}

/// `test.Echo/Who` for `device`; `name: "fail"` makes the backend fail it.
pub async fn who(ch: &Channel, device: &str, name: &str) -> Result<WhoReply, Status> {
    let req = with_device(
        WhoRequest {
            name: name.to_owned(),
        },
        device,
    );
    let path = http::uri::PathAndQuery::from_static("/test.Echo/Who");
    grpc(ch)
        .await?
        .unary(req, path, ProstCodec::default())
        .await
        .map(Response::into_inner)
}

/// `test.Echo/Watch` for `device`: the reply stream once the head is in.
pub async fn watch(
    ch: &Channel,
    device: &str,
    w: WatchRequest,
) -> Result<Streaming<WhoReply>, Status> {
    let path = http::uri::PathAndQuery::from_static("/test.Echo/Watch");
    grpc(ch)
        .await?
        .server_streaming(with_device(w, device), path, ProstCodec::default())
        .await
        .map(Response::into_inner)
}
