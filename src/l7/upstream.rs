//! What pingora's upstream errors and response heads mean for tether: the
//! passive-health [`Fault`] of an error (the rule itself is in
//! `pool::passive`), the timeout errors a [`super::watch::Watch`] stands
//! for, the status a failed request gets, and how a response body is
//! delimited.
//!
//! Where pingora's errors come from (0.9.1): a failed connect or TLS
//! handshake reaches `fail_to_connect`; once connected, the request head and
//! body are written and the response read concurrently, and an upstream I/O
//! failure reaches `error_while_proxy` with `ErrorSource::Upstream`:
//! `ConnectionClosed` (EOF before the head), `ReadError`/`WriteError` (a
//! reset), `ReadTimedout` (no byte within the peer's read timeout). A client
//! that goes away surfaces as a `Downstream` error, and a client that stalls
//! its body as nothing at all: the backend, waiting for the rest, times out,
//! which is why the caller also asks whether the body was complete.

use http::Method;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;
use pingora::{Error, ErrorSource, ErrorType};

use super::watch::Phase;
use crate::config::{PoolTimeouts, UpstreamProtocol};
use crate::pool::Fault;

/// HTTP/2 streams tether opens at once on one backend connection (pingora's
/// default is 1: a connection per request, no multiplexing); a backend that
/// allows fewer (SETTINGS_MAX_CONCURRENT_STREAMS) is held to its own limit,
/// and pingora opens another connection when all are busy.
const H2_MAX_STREAMS: usize = 100;

/// What `peer` speaks (`pools.NAME.protocol`). `h2`: ALPN offers h2 alone,
/// so a backend that negotiates ALPN but not h2 fails the handshake (one
/// that ignores ALPN altogether is spoken to in HTTP/1.1, pingora's rule);
/// `h2c`: pingora speaks h2 with prior knowledge on a plain peer whose
/// lowest version is 2.
pub(super) fn set_protocol(peer: &mut HttpPeer, p: UpstreamProtocol) {
    if p.is_h2() {
        peer.options.alpn = ALPN::H2;
        peer.options.max_h2_streams = H2_MAX_STREAMS;
    }
}

/// pingora marked `e` safe to send again whatever the method: the backend
/// refused the h2 stream before processing it (`REFUSED_STREAM`) or was
/// closing the connection (`GOAWAY` NO_ERROR). gRPC calls are all POSTs,
/// so without this none would be retried.
pub(super) fn unprocessed(e: &Error) -> bool {
    e.etype() == &ErrorType::H2Error && e.retry()
}

/// The fault of a failed connect: the backend's, unless tether itself could
/// not make a socket.
pub(super) fn connect_fault(e: &Error) -> Fault {
    match e.etype() {
        ErrorType::InternalError | ErrorType::SocketError | ErrorType::BindError => Fault::Other,
        _ => Fault::Connect,
    }
}

/// The fault of an error while proxying, before any response head.
pub(super) fn fault(e: &Error) -> Fault {
    if e.esource() != &ErrorSource::Upstream {
        return Fault::Other;
    }
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Fault::Silent,
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => Fault::Reset,
        _ => Fault::Other,
    }
}

/// `e` as the timeout it was when a watch cut the connection in phase
/// `fired` (pingora only saw the connection end); `e` itself otherwise.
pub(super) fn timed_out(e: Box<Error>, fired: Option<Phase>, t: &PoolTimeouts) -> Box<Error> {
    let why = match fired {
        None => return e,
        Some(Phase::Head) => format!(
            "no response head within response_header ({})",
            humantime::format_duration(t.response_header)
        ),
        Some(Phase::Body) => idle_message(t),
    };
    Error::because(ErrorType::ReadTimedout, why, e).into_up()
}

/// The error that ends a body the watch cut for `response_idle`.
pub(super) fn idle_cut(t: &PoolTimeouts) -> Box<Error> {
    Error::explain(ErrorType::ReadTimedout, idle_message(t)).into_up()
}

fn idle_message(t: &PoolTimeouts) -> String {
    format!(
        "response body quiet for response_idle ({})",
        humantime::format_duration(t.response_idle)
    )
}

/// The status tether answers a failed request with: 504 for an upstream
/// timeout, 502 for other upstream failures, nothing (0) for a client
/// already gone.
pub(super) fn error_status(e: &Error) -> u16 {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed | ReadTimedout | WriteTimedout => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Does the response to a `method` request with head `resp` have a body,
/// and does the backend's close end it? RFC 9112 6.3, as pingora's reader
/// applies it.
pub(super) fn body_framing(method: &Method, resp: &ResponseHeader) -> (bool, bool) {
    let status = resp.status.as_u16();
    if method == Method::HEAD || matches!(status, 100..=199 | 204 | 304) {
        return (false, false);
    }
    let h = &resp.headers;
    if h.contains_key(http::header::TRANSFER_ENCODING) {
        let chunked = h
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        return (true, !chunked);
    }
    match h
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(len) => (len > 0, false),
        None => (true, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.insert_header(*k, *v).unwrap();
        }
        r
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = &Method::GET;
        assert_eq!(body_framing(get, &head(204, &[])), (false, false));
        assert_eq!(body_framing(get, &head(304, &[])), (false, false));
        assert_eq!(
            body_framing(&Method::HEAD, &head(200, &[("content-length", "9")])),
            (false, false)
        );
        assert_eq!(
            body_framing(get, &head(200, &[("content-length", "0")])),
            (false, false)
        );
        assert_eq!(
            body_framing(get, &head(200, &[("content-length", "9")])),
            (true, false)
        );
        assert_eq!(
            body_framing(get, &head(200, &[("transfer-encoding", "chunked")])),
            (true, false)
        );
        assert_eq!(body_framing(get, &head(200, &[])), (true, true));
    }

    #[test]
    fn only_upstream_io_failures_are_resets_or_silences() {
        assert_eq!(
            fault(&Error::new_up(ErrorType::ConnectionClosed)),
            Fault::Reset
        );
        assert_eq!(fault(&Error::new_up(ErrorType::ReadError)), Fault::Reset);
        assert_eq!(
            fault(&Error::new_up(ErrorType::ReadTimedout)),
            Fault::Silent
        );
        assert_eq!(
            fault(&Error::new_up(ErrorType::InvalidHTTPHeader)),
            Fault::Other
        );
        // The client's side: never the backend's.
        assert_eq!(
            fault(&Error::new_down(ErrorType::ReadTimedout)),
            Fault::Other
        );
        assert_eq!(
            fault(&Error::new_down(ErrorType::ConnectionClosed)),
            Fault::Other
        );
        assert_eq!(
            fault(&Error::new_in(ErrorType::InternalError)),
            Fault::Other
        );
        assert_eq!(
            connect_fault(&Error::new(ErrorType::ConnectRefused)),
            Fault::Connect
        );
        assert_eq!(
            connect_fault(&Error::new(ErrorType::ConnectTimedout)),
            Fault::Connect
        );
        assert_eq!(
            connect_fault(&Error::new(ErrorType::SocketError)),
            Fault::Other
        );
    }

    #[test]
    fn a_watch_timeout_is_reported_as_a_read_timeout_from_upstream() {
        let t = PoolTimeouts {
            connect: std::time::Duration::from_secs(1),
            response_header: std::time::Duration::from_secs(1),
            response_idle: std::time::Duration::from_secs(300),
        };
        let closed = || Error::new_up(ErrorType::ConnectionClosed);
        let e = timed_out(closed(), Some(Phase::Head), &t);
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
        assert_eq!(e.esource(), &ErrorSource::Upstream);
        assert_eq!(fault(&e), Fault::Silent);
        let e = timed_out(closed(), None, &t);
        assert_eq!(e.etype(), &ErrorType::ConnectionClosed);
    }
}
