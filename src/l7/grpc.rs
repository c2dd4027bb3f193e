//! gRPC calls of HTTP/2 clients on a pool that speaks HTTP/2 to its
//! backends: each call is a live connection of its backend, like a
//! WebSocket, and ends when the backend is marked down or drained out so
//! that the client retries on the new owner.
//!
//! How the call is ended without any byte flowing: pingora's h2 proxy loop
//! wakes only for client or backend data, and no filter is polled in between.
//! So tether's own h2 accept loop (`h2_conn`) hands such a stream to pingora
//! as a [`GrpcStream`], a custom downstream session over pingora's h2 one,
//! whose body read (`read_body_or_idle`, always polled while the call lives)
//! also waits on the backend's [`TunnelCtl`]. When that fires it ends the
//! call itself and fails the read; pingora then resets the backend's stream
//! (CANCEL) and the router answers nothing more (`upstream::error_status` is 0
//! for a closed downstream). What the client gets:
//! - response headers already sent: trailers `grpc-status: 14` (UNAVAILABLE),
//!   which gRPC clients retry;
//! - no headers yet: `RST_STREAM(REFUSED_STREAM)`, which they retry
//!   transparently (a `CANCEL` would read as CANCELLED and not be retried).
//!
//! The router registers the call with its backend in `connected_to_upstream`
//! and puts the handle into the [`Slot`] the stream carries in its request
//! extensions. A backend that fails mid-call gets the same trailers (see
//! [`end_failed`]) instead of pingora's bare stream reset.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::v2::server::HttpSession as H2Session;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::{Error, ErrorType, Result};

use crate::backend::{session_tag, BackendRt, CloseReason, TunnelCtl, TunnelGuard};

/// `grpc-status` UNAVAILABLE: the client may retry (elsewhere).
const UNAVAILABLE: &str = "14";

/// Is `req` a gRPC call (`content-type: application/grpc[+proto|;...]`)?
pub(super) fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Where the router puts the call's registration handle once it knows the
/// backend; shared with the [`GrpcStream`] through the request extensions.
#[derive(Default)]
pub(super) struct Slot(ArcSwapOption<TunnelCtl>);

impl Slot {
    pub fn set(&self, ctl: Arc<TunnelCtl>) {
        self.0.store(Some(ctl));
    }
}

/// Register the call `req` with `backend` if it is served through a
/// [`GrpcStream`]; the guard takes it out of the registry when dropped.
pub(super) fn register(
    req: &RequestHeader,
    backend: &Arc<BackendRt>,
    key: Option<&str>,
) -> Option<TunnelGuard> {
    let slot = req.extensions.get::<Arc<Slot>>()?;
    let guard = backend.register_tunnel(session_tag(key));
    slot.set(guard.ctl.clone());
    Some(guard)
}

/// The stream pingora serves for h2 stream `inner`: a [`GrpcStream`] for a
/// gRPC call when `watched`, pingora's own h2 session otherwise.
pub(super) fn session(mut inner: H2Session, watched: bool) -> ServerSession {
    if !(watched && is_grpc(inner.req_header())) {
        return ServerSession::new_http2(inner);
    }
    let slot = Arc::new(Slot::default());
    inner.req_header_mut().extensions_mut().insert(slot.clone());
    ServerSession::new_custom(Box::new(GrpcStream {
        inner,
        slot,
        ended: false,
    }))
}

/// Trailers that end a call with `grpc-status: 14` and `message`.
fn unavailable(message: &'static str) -> HeaderMap {
    let mut t = HeaderMap::with_capacity(2);
    t.insert("grpc-status", HeaderValue::from_static(UNAVAILABLE));
    t.insert("grpc-message", HeaderValue::from_static(message));
    t
}

/// A gRPC call whose backend failed after the response headers went out:
/// end it with UNAVAILABLE trailers, so the client may retry, rather than
/// the stream reset pingora would leave (read as CANCELLED). Before the
/// headers the router's error response (502/504) says as much already.
pub(super) async fn end_failed(down: &mut ServerSession) {
    if !is_grpc(down.req_header()) || down.response_written().is_none() {
        return;
    }
    let t = unavailable("tether: the backend failed during the call");
    if let Err(e) = down.write_response_trailers(t).await {
        tracing::debug!(error = %e, "could not end the gRPC call");
    }
}

/// Is `e` how a call tether ended itself (see the module header) reaches
/// pingora's error log? `registered`: the request is such a call. Nothing
/// failed: the close is logged once per backend where it is decided.
pub(super) fn ended_by_tether(e: &Error, registered: bool) -> bool {
    registered
        && e.esource() == &pingora::ErrorSource::Downstream
        && e.etype() == &ErrorType::ConnectionClosed
}

/// pingora's h2 session of one gRPC call, plus the close signal of the
/// backend it is proxied to (see the module header).
pub(super) struct GrpcStream {
    inner: H2Session,
    slot: Arc<Slot>,
    /// tether ended the call: later writes are dropped.
    ended: bool,
}

impl GrpcStream {
    /// Wait for the backend's close signal; pending until the call is registered.
    async fn closed(slot: &Slot) -> CloseReason {
        let ctl = slot.0.load_full();
        std::future::poll_fn(|cx| match &ctl {
            Some(c) => c
                .poll_closed(cx)
                .map_or(std::task::Poll::Pending, std::task::Poll::Ready),
            None => std::task::Poll::Pending,
        })
        .await
    }

    /// End the call for `why` (see the module header) and give pingora the
    /// error that stops proxying it.
    fn end(&mut self, why: CloseReason) -> Box<Error> {
        self.ended = true;
        let message = match why {
            CloseReason::Moved => "tether: the backend went away, retry",
            CloseReason::Shutdown => "tether: shutting down, retry",
        };
        if self.inner.response_written().is_some() {
            if let Err(e) = self.inner.write_trailers(unavailable(message)) {
                tracing::debug!(error = %e, "could not end the gRPC call");
            }
        } else {
            self.inner.shutdown_with_reason(h2::Reason::REFUSED_STREAM);
        }
        Error::explain(ErrorType::ConnectionClosed, message)
    }

    /// `read` unless the backend's close comes first.
    async fn or_closed(&mut self, no_body_expected: Option<bool>) -> Result<Option<Bytes>> {
        if self.ended {
            return Error::e_explain(ErrorType::ConnectionClosed, "gRPC call ended by tether");
        }
        let slot = self.slot.clone();
        let why = {
            let read = async {
                match no_body_expected {
                    Some(no_body) => self.inner.read_body_or_idle(no_body).await,
                    None => self.inner.read_body_bytes().await,
                }
            };
            tokio::select! {
                r = read => return r,
                why = Self::closed(&slot) => why,
            }
        };
        Err(self.end(why))
    }
}

#[async_trait]
impl CustomSession for GrpcStream {
    fn req_header(&self) -> &RequestHeader {
        self.inner.req_header()
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.inner.req_header_mut()
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        self.or_closed(None).await
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        self.inner.drain_request_body().await
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.inner.write_response_header(resp, end)
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.inner.write_response_header_ref(resp, end)
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.inner.write_body(data, end).await
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.inner.write_trailers(trailers)
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        if self.ended {
            return Ok(true);
        }
        self.inner.response_duplex_vec(tasks).await
    }

    fn set_read_timeout(&mut self, _timeout: Option<Duration>) {
        // As for pingora's h2 sessions: a stream has no read timeout of its own.
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        None
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_write_timeout(timeout)
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.inner.get_write_timeout()
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_total_drain_timeout(timeout)
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.inner.get_total_drain_timeout()
    }

    fn request_summary(&self) -> String {
        self.inner.request_summary()
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.inner.response_written()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        // What pingora's h2 session does for `shutdown`: reset the stream.
        if !self.ended {
            self.inner.shutdown();
        }
    }

    fn is_body_done(&mut self) -> bool {
        self.inner.is_body_done()
    }

    async fn finish(&mut self) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.inner.finish()
    }

    fn is_body_empty(&mut self) -> bool {
        self.inner.is_body_empty()
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        self.or_closed(Some(no_body_expected)).await
    }

    fn body_bytes_sent(&self) -> usize {
        self.inner.body_bytes_sent()
    }

    fn body_bytes_read(&self) -> usize {
        self.inner.body_bytes_read()
    }

    fn digest(&self) -> Option<&Digest> {
        self.inner.digest()
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.inner.digest_mut()
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.inner.client_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.inner.server_addr()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.inner.pseudo_raw_h1_request_header()
    }

    fn enable_retry_buffering(&mut self) {
        self.inner.enable_retry_buffering()
    }

    fn retry_buffer_truncated(&self) -> bool {
        self.inner.retry_buffer_truncated()
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        self.inner.get_retry_buffer()
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    // No custom message channels: this is plain HTTP/2 to pingora.
    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn futures_util::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>>
    {
        None
    }

    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<
            dyn futures_util::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static,
        >,
    ) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Ok(())
    }
}
