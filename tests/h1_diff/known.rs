//! The disagreements left between the engines, each with the rule that
//! decides for the new path.

/// A listed disagreement: the new path's outcome is the one RFC 9112 (or
/// RFC 9110 / issue 14's rule, named) asks for, asserted through the case's
/// `rfc`; pingora's differs. No entry is a choice the RFC leaves open where
/// pingora was followed instead: those were bugs of the new path, fixed
/// (see the cases marked "fixed" in `corpus`).
pub struct Known {
    pub cases: &'static [&'static str],
    /// The rule that decides, and what pingora does instead.
    pub why: &'static str,
}

/// Every disagreement left between the engines.
pub const KNOWN: &[Known] = &[
    Known {
        cases: &["hop_by_hop"],
        why: "RFC 9110 7.6.1: a proxy MUST remove the fields the Connection header names; \
              pingora forwards `X-Secret`",
    },
    Known {
        cases: &["post_gzip_chunked", "te_two_lines_chunked_last"],
        why: "RFC 9112 6.1: Transfer-Encoding lists the codings applied to the content; \
              pingora removes chunked and rewrites the field as `chunked` alone, dropping \
              the gzip coding it did not decode (the backend is told the gzip bytes are \
              plain); the new path relays codings and framing untouched",
    },
    Known {
        cases: &["te_xchunked"],
        why: "RFC 9112 6.1: a transfer coding the server does not understand SHOULD be a 501; \
              pingora answers 400",
    },
    Known {
        cases: &["cl_duplicate_same", "cl_list"],
        why: "RFC 9112 6.3 item 5 and RFC 9110 8.6: repeated Content-Length values are \
              rejected or replaced by one (the issue: rejected, 400); pingora forwards the \
              repeated lines/list as they came, which a strict backend refuses (502) and a \
              lax one may frame its own way",
    },
    Known {
        cases: &[
            "chunk_body_then_request",
            "pipelined_gets",
            "pipelined_post_then_get",
            "pipelined_then_bad",
            "pipelined_head_then_get",
        ],
        why: "RFC 9112 9.3.2 and the issue (pipelined requests answered in order): pingora \
              (pipelining off) answers the first request and closes, leaving requests it \
              already read unanswered",
    },
    Known {
        cases: &["chunk_extension_huge"],
        why: "RFC 9112 7.1.1 (a server ought to limit chunk extensions, 4xx past it) and the \
              issue (extensions bounded): the new path refuses extensions over 4096 bytes \
              with a 400; pingora relays 6000 bytes",
    },
    Known {
        cases: &["bare_lf_everywhere", "bare_lf_in_one_header"],
        why: "RFC 9112 2.2 lets a server accept a bare LF; the issue rejects it (parsers that \
              disagree on line ends are a smuggling vector): 400; pingora accepts it",
    },
    Known {
        cases: &["nul_in_target", "space_in_target"],
        why: "RFC 9112 3: an invalid request-line SHOULD be a 400 (or a 301), and SHOULD NOT \
              be autocorrected and processed; pingora percent-encodes the octet and forwards",
    },
    Known {
        cases: &["version_2"],
        why: "RFC 9110 15.6.6: 505 is the answer to an unsupported major version; pingora 400",
    },
    Known {
        cases: &["version_1_2"],
        why: "RFC 9110 6.2: a higher minor version of a supported major one SHOULD be \
              processed as the highest minor version implemented (1.1); pingora answers 400",
    },
    Known {
        cases: &["no_host", "host_with_space"],
        why: "RFC 9112 3.2: an HTTP/1.1 request without Host, or with an invalid Host value, \
              MUST be a 400; pingora forwards both",
    },
    Known {
        cases: &["absolute_form_conflicting_host"],
        why: "RFC 9112 3.2.2: with an absolute-form target the received Host MUST be \
              ignored, and a proxy MUST generate the Host it forwards from the target; \
              pingora refuses the request (400)",
    },
    Known {
        cases: &["many_headers_300"],
        why: "RFC 6585 5: 431 is the answer to header fields too large (here, too many \
              lines, past pingora's own bound of 256); pingora answers 400",
    },
    Known {
        cases: &["absolute_form", "absolute_form_no_path"],
        why: "RFC 9112 3.2.1: a request to an origin server MUST carry the origin-form \
              (path and query); pingora forwards the absolute-form target",
    },
    Known {
        cases: &["http10_no_host", "http10_post"],
        why: "RFC 9112 3.2: every HTTP/1.1 request carries Host (empty when the target has no \
              authority); both engines forward an HTTP/1.0 client's request as HTTP/1.1 (RFC \
              9110 2.5), pingora without a Host, which the backend refuses (502)",
    },
    Known {
        cases: &["http10_client_chunked_response"],
        why: "RFC 9112 6.1: a server MUST NOT send Transfer-Encoding in a response to an \
              HTTP/1.0 request; pingora relays the chunked body, the new path de-chunks it \
              and ends it with the close",
    },
    Known {
        cases: &["expect_continue"],
        why: "RFC 9112 9.3: connections persist by default; pingora closes after the exchange \
              because its close-when-answering-before-the-body-is-read rule fires on the \
              backend's 100 Continue too",
    },
    Known {
        cases: &["interim_to_http10"],
        why: "RFC 9110 15.2: a server MUST NOT send a 1xx response to an HTTP/1.0 client; \
              pingora relays the 103",
    },
    Known {
        cases: &["switching_protocols_unasked"],
        why: "RFC 9110 7.8 and 15.2.2: a server MUST NOT switch to a protocol the request did \
              not ask for; such a 101 is an invalid answer (502); pingora relays it and \
              tunnels the bytes after it",
    },
    Known {
        cases: &["request_trailers", "response_trailers"],
        why: "RFC 9112 7.1.2 lets a recipient that removes the chunked coding discard the \
              trailers; the new path does not remove it (chunked framing relayed as it came) \
              so the trailer section goes along; pingora de-chunks and drops it",
    },
    Known {
        cases: &["chunk_trailer_not_a_field", "resp_trailer_not_a_field"],
        why: "RFC 9112 7.1.2: the trailer section is field lines; a line without a colon makes \
              the chunked framing invalid (400 to a client, 502 for a backend's answer: the \
              issue); pingora discards trailers unread and accepts the message",
    },
    Known {
        cases: &["resp_cl_te", "resp_cl_duplicate_same"],
        why: "RFC 9112 6.3 (item 3: CL with TE ought to be handled as an error; item 5: \
              repeated lengths) and the issue (a bad response is a 502, its connection not \
              reused); pingora relays the answer and reuses the connection",
    },
    Known {
        cases: &["resp_chunk_size_invalid", "resp_chunk_size_overflow"],
        why: "RFC 9112 7.1 framing error found before any byte went to the client: the issue \
              (a bad response is a 502); pingora sends the 200 head, then cuts the body",
    },
    Known {
        cases: &["race_get_retried"],
        why: "RFC 9112 9.3.1.1 and the issue (the reuse race retried for idempotent \
              requests): the new path sends the GET again on a new connection; tether's \
              pingora router only retries on another backend, and there is none (502)",
    },
    Known {
        cases: &["client_half_close"],
        why: "RFC 9293 3.6 / RFC 9112 9.6: a half-close ends what the client sends, not its \
              request; the new path answers it; pingora drops the request unanswered",
    },
];
