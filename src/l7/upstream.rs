//! What pingora's upstream errors mean for tether: the passive-health
//! [`Fault`] of an error (the rule itself is in `pool::passive`) and the
//! status a failed request gets.
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

use pingora::{Error, ErrorSource, ErrorType};

use crate::pool::Fault;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
