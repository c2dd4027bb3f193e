//! The corpus: client bytes and backend scripts, by area. `rfc(..)` states
//! what RFC 9112 (or issue 14's rules, where the RFC lets a server choose)
//! demands of the new path: the final statuses and how many whole requests
//! reach the backend.

use crate::backend::{ok, Op};
use crate::{Area, Case};

use Area::*;

/// The usual head lines of a test request.
const H: &str = "Host: example.test\r\nX-Device: d1\r\n";

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\n{H}\r\n")
}

fn post(extra: &str, body: &str) -> String {
    format!("POST /p HTTP/1.1\r\n{H}{extra}\r\n{body}")
}

/// A backend answer: status line, extra header lines, raw body (marked).
fn resp(status: &str, extra: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nX-Backend: 1\r\n{extra}\r\n{body}").into_bytes()
}

fn c(name: &'static str, area: Area) -> Case {
    Case::new(name, area)
}

pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(valid());
    v.extend(smuggling());
    v.extend(head_syntax());
    v.extend(host());
    v.extend(methods());
    v.extend(http10());
    v.extend(pipelining());
    v.extend(expect());
    v.extend(interim());
    v.extend(no_body());
    v.extend(close_delimited());
    v.extend(trailers());
    v.extend(bad_responses());
    v.extend(reuse_race());
    v.extend(limits());
    v
}

fn valid() -> Vec<Case> {
    let big = "b".repeat(100_000);
    vec![
        c("get", Valid).send(get("/")).rfc(&[200], 1),
        c("get_no_key", Valid)
            .send("GET /k HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .rfc(&[200], 1),
        c("post_length", Valid)
            .send(post("Content-Length: 5\r\n", "hello"))
            .rfc(&[200], 1),
        c("post_length_zero", Valid)
            .send(post("Content-Length: 0\r\n", ""))
            .rfc(&[200], 1),
        c("post_chunked", Valid)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            ))
            .rfc(&[200], 1),
        c("post_gzip_chunked", Valid)
            .send(post(
                "Transfer-Encoding: gzip, chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[200], 1),
        c("get_with_body", Valid)
            .send(format!("GET /b HTTP/1.1\r\n{H}Content-Length: 4\r\n\r\nbody"))
            .rfc(&[200], 1),
        c("put_large_body", Valid)
            .send(format!(
                "PUT /big HTTP/1.1\r\n{H}Content-Length: {}\r\n\r\n{big}",
                big.len()
            ))
            .rfc(&[200], 1),
        c("body_in_pieces", Valid)
            .send(format!("POST /p HTTP/1.1\r\n{H}Content-"))
            .pause(30)
            .send("Length: 10\r\n\r\n01234")
            .pause(30)
            .send("56789")
            .rfc(&[200], 1),
        c("chunked_in_pieces", Valid)
            .send(post("Transfer-Encoding: chunked\r\n", "5\r\nhel"))
            .pause(30)
            .send("lo\r\n0\r")
            .pause(30)
            .send("\n\r\n")
            .rfc(&[200], 1),
        c("header_case_and_repeats", Valid)
            .send(format!(
                "GET /h HTTP/1.1\r\n{H}x-MiXeD: One\r\nCookie: a=1\r\nCookie: b=2\r\nAccept:  */*  \r\nX-Empty:\r\n\r\n"
            ))
            .rfc(&[200], 1),
        c("hop_by_hop", Valid)
            .send(format!(
                "GET /hop HTTP/1.1\r\n{H}Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ))
            .rfc(&[200], 1),
        c("spoofed_forwarding", Valid)
            .send(format!(
                "GET /f HTTP/1.1\r\n{H}X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Tether-Session: evil\r\n\r\n"
            ))
            .rfc(&[200], 1),
        c("odd_target", Valid)
            .send(get("/a/../b/%2e%2e?x=%20&y=a:b@c"))
            .rfc(&[200], 1),
        c("extension_method", Valid)
            .send(format!("PURGE /x HTTP/1.1\r\n{H}\r\n"))
            .rfc(&[200], 1),
        c("obs_text_value", Valid)
            .send(format!("GET /o HTTP/1.1\r\n{H}X-Latin: caf\u{e9}\r\n\r\n"))
            .rfc(&[200], 1),
        c("keepalive_two_requests", Valid)
            .send(get("/1"))
            .after(1)
            .send(get("/2"))
            .expect(2)
            .answer(ok("one"))
            .answer(ok("two"))
            .rfc(&[200, 200], 2),
        c("response_chunked", Valid)
            .send(get("/c"))
            .answer(resp(
                "200 OK",
                "Transfer-Encoding: chunked\r\n",
                "4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n",
            ))
            .rfc(&[200], 1),
        c("response_headers_relayed", Valid)
            .send(get("/r"))
            .answer(resp(
                "201 Created",
                "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Odd-Case: V\r\nContent-Length: 2\r\n",
                "hi",
            ))
            .rfc(&[201], 1),
        c("response_404_keeps_connection", Valid)
            .send(get("/missing"))
            .after(1)
            .send(get("/after"))
            .expect(2)
            .answer(resp("404 Not Found", "Content-Length: 4\r\n", "nope"))
            .rfc(&[404, 200], 2),
    ]
}

fn smuggling() -> Vec<Case> {
    vec![
        // RFC 9112 6.1: a request with both is refused (or CL dropped, then
        // the connection closed); the issue: rejected.
        c("cl_te", Smuggling)
            .send(post(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\nG",
            ))
            .rfc(&[400], 0),
        c("te_cl", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "8\r\nSMUGGLED\r\n0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        c("te_trailing_space", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked \r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[200], 1),
        c("te_tab", Smuggling)
            .send(post(
                "Transfer-Encoding:\tchunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[200], 1),
        c("te_upper_case", Smuggling)
            .send(post(
                "Transfer-Encoding: CHUNKED\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[200], 1),
        // RFC 9112 6.1: an unknown coding is a 501.
        c("te_xchunked", Smuggling)
            .send(post(
                "Transfer-Encoding: xchunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[501], 0),
        c("te_xchunked_with_cl", Smuggling)
            .send(post(
                "Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n",
                "abcd",
            ))
            .rfc(&[400], 0),
        // RFC 9112 6.3: chunked must be the final coding of a request.
        c("te_chunked_identity", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked, identity\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        c("te_two_lines_chunked_first", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        c("te_two_lines_chunked_last", Smuggling)
            .send(post(
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[200], 1),
        c("te_empty", Smuggling)
            .send(post("Transfer-Encoding:\r\nContent-Length: 3\r\n", "abc"))
            .rfc(&[400], 0),
        c("te_vertical_tab", Smuggling)
            .send(post(
                "Transfer-Encoding: \x0bchunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        c("te_chunked_http10", Smuggling)
            .send("POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .rfc(&[400], 0),
        // RFC 9112 6.3 item 5: an invalid Content-Length is unrecoverable.
        c("cl_hex", Smuggling)
            .send(post("Content-Length: 0x10\r\n", "0123456789abcdef"))
            .rfc(&[400], 0),
        c("cl_space_inside", Smuggling)
            .send(post("Content-Length: 1 0\r\n", "0123456789"))
            .rfc(&[400], 0),
        c("cl_plus", Smuggling)
            .send(post("Content-Length: +5\r\n", "hello"))
            .rfc(&[400], 0),
        c("cl_minus", Smuggling)
            .send(post("Content-Length: -1\r\n", "hello"))
            .rfc(&[400], 0),
        c("cl_huge", Smuggling)
            .send(post("Content-Length: 99999999999999999999999\r\n", "hello"))
            .rfc(&[400], 0),
        c("cl_empty", Smuggling)
            .send(post("Content-Length:\r\n", "hello"))
            .rfc(&[400], 0),
        c("cl_duplicate_same", Smuggling)
            .send(post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"))
            .rfc(&[400], 0),
        c("cl_duplicate_different", Smuggling)
            .send(post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"))
            .rfc(&[400], 0),
        c("cl_list", Smuggling)
            .send(post("Content-Length: 5, 5\r\n", "hello"))
            .rfc(&[400], 0),
        c("cl_body_is_a_request", Smuggling)
            .send(post(
                "Content-Length: 38\r\n",
                "GET /smuggled HTTP/1.1\r\nHost: evil\r\n\r\n",
            ))
            .rfc(&[200], 1),
        c("chunk_body_then_request", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                "0\r\n\r\nGET /second HTTP/1.1\r\nHost: example.test\r\n\r\n",
            ))
            .expect(2)
            .rfc(&[200, 200], 2),
        // Chunked framing errors: RFC 9112 7.1.
        // Fixed: the new path closed the connection without an answer.
        c("chunk_size_overflow", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                "10000000000000001\r\nx\r\n0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        c("chunk_size_not_hex", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                "0x5\r\nhello\r\n0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        c("chunk_size_leading_space", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                " 5\r\nhello\r\n0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        c("chunk_extension_huge", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                &format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(6000)),
            ))
            .rfc(&[400], 0),
        c("chunk_data_without_crlf", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhelloX0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        c("chunk_size_bare_lf", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                "5\nhello\r\n0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        // Found by the property test (fixed: the new path relayed any trailer
        // line, which a strict backend refuses and a lax one may read as it
        // likes): RFC 9112 7.1.2, a trailer line is a field line.
        c("chunk_trailer_not_a_field", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n0\r\nX-T: 1\r\n\r\n",
            ))
            .rfc(&[400], 0),
        c("chunk_missing_final_crlf", Smuggling)
            .send(post(
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n",
            ))
            .shut()
            .deadline(1500),
    ]
}

fn head_syntax() -> Vec<Case> {
    vec![
        // RFC 9112 2.2 lets a recipient accept a bare LF; the issue: rejected.
        c("bare_lf_everywhere", HeadSyntax)
            .send("GET / HTTP/1.1\nHost: example.test\nX-Device: d1\n\n")
            .rfc(&[400], 0),
        c("bare_lf_in_one_header", HeadSyntax)
            .send("GET / HTTP/1.1\r\nHost: example.test\nX-Device: d1\r\n\r\n")
            .rfc(&[400], 0),
        c("bare_lf_smuggles_te", HeadSyntax)
            .send(post(
                "X: y\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "abc",
            ))
            .rfc(&[400], 0),
        c("bare_cr", HeadSyntax)
            .send("GET / HTTP/1.1\r\nHost: example.test\rX-Device: d1\r\n\r\n")
            .rfc(&[400], 0),
        // RFC 9112 5.2: obs-fold in a request: 400 or replaced by SP; the issue: 400.
        c("obs_fold", HeadSyntax)
            .send(format!("GET / HTTP/1.1\r\n{H}X-Folded: a\r\n b\r\n\r\n"))
            .rfc(&[400], 0),
        c("obs_fold_te", HeadSyntax)
            .send(post(
                "Transfer-Encoding: gzip,\r\n chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ))
            .rfc(&[400], 0),
        // RFC 9112 5.1: whitespace before the colon MUST be a 400.
        c("space_before_colon", HeadSyntax)
            .send("GET / HTTP/1.1\r\nHost : example.test\r\n\r\n")
            .rfc(&[400], 0),
        c("space_before_colon_te", HeadSyntax)
            .send(post(
                "Transfer-Encoding : chunked\r\nContent-Length: 3\r\n",
                "abc",
            ))
            .rfc(&[400], 0),
        c("header_name_invalid_char", HeadSyntax)
            .send(format!("GET / HTTP/1.1\r\n{H}X(Y): 1\r\n\r\n"))
            .rfc(&[400], 0),
        c("header_name_empty", HeadSyntax)
            .send(format!("GET / HTTP/1.1\r\n{H}: empty\r\n\r\n"))
            .rfc(&[400], 0),
        c("nul_in_header_value", HeadSyntax)
            .send(format!("GET / HTTP/1.1\r\n{H}X-Nul: a\0b\r\n\r\n"))
            .rfc(&[400], 0),
        c("nul_in_target", HeadSyntax)
            .send(format!("GET /a\0b HTTP/1.1\r\n{H}\r\n"))
            .rfc(&[400], 0),
        c("ctl_in_header_value", HeadSyntax)
            .send(format!("GET / HTTP/1.1\r\n{H}X-Ctl: a\x01b\r\n\r\n"))
            .rfc(&[400], 0),
        // Fixed: the new path answered 505 (httparse's version error).
        c("space_in_target", HeadSyntax)
            .send(format!("GET /a b HTTP/1.1\r\n{H}\r\n"))
            .rfc(&[400], 0),
        c("lower_case_version", HeadSyntax)
            .send(format!("GET / http/1.1\r\n{H}\r\n"))
            .rfc(&[400], 0),
        c("version_2", HeadSyntax)
            .send(format!("GET / HTTP/2.0\r\n{H}\r\n"))
            .rfc(&[505], 0),
        // RFC 9110 6.2: processed as HTTP/1.1 (fixed: the new path answered 505).
        c("version_1_2", HeadSyntax)
            .send(format!("GET / HTTP/1.2\r\n{H}\r\n"))
            .rfc(&[200], 1),
        c("http09_request", HeadSyntax)
            .send("GET /\r\n\r\n")
            .rfc(&[400], 0),
        // RFC 9112 2.2: a server SHOULD ignore an empty line before the request line.
        c("leading_empty_line", HeadSyntax)
            .send(format!("\r\nGET / HTTP/1.1\r\n{H}\r\n"))
            .rfc(&[200], 1),
        c("garbage", HeadSyntax)
            .send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
            .rfc(&[400], 0),
    ]
}

fn host() -> Vec<Case> {
    vec![
        // RFC 9112 3.2: an HTTP/1.1 request without Host, with several, or
        // with an invalid one MUST be a 400.
        c("no_host", Host)
            .send("GET / HTTP/1.1\r\nX-Device: d1\r\n\r\n")
            .rfc(&[400], 0),
        c("two_hosts", Host)
            .send("GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n")
            .rfc(&[400], 0),
        c("two_hosts_same", Host)
            .send("GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n")
            .rfc(&[400], 0),
        // Fixed: the new path forwarded it.
        c("host_with_space", Host)
            .send("GET / HTTP/1.1\r\nHost: a b.test\r\n\r\n")
            .rfc(&[400], 0),
        c("host_empty", Host)
            .send("GET / HTTP/1.1\r\nHost:\r\nX-Device: d1\r\n\r\n")
            .rfc(&[200], 1),
        c("absolute_form", Host)
            .send("GET http://example.test/abs?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .rfc(&[200], 1),
        // RFC 9112 3.2.2: the Host is ignored, the target's authority is the
        // host, and a proxy generates the Host it forwards from it (fixed:
        // the new path answered 400, as pingora does).
        c("absolute_form_conflicting_host", Host)
            .send("GET http://evil.test/abs HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .rfc(&[200], 1),
        c("absolute_form_no_path", Host)
            .send("GET http://example.test HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .rfc(&[200], 1),
        // Forwarded as HTTP/1.1 with an empty Host (fixed: none, RFC 9112 3.2).
        c("http10_no_host", Host)
            .send("GET / HTTP/1.0\r\n\r\n")
            .rfc(&[200], 1),
    ]
}

fn methods() -> Vec<Case> {
    vec![
        // A reverse proxy tunnels nowhere: 405 (RFC 9110 9.3.6 lets a server
        // refuse CONNECT).
        c("connect", Methods)
            .send("CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
            .rfc(&[405], 0),
        c("options_star", Methods)
            .send("OPTIONS * HTTP/1.1\r\nHost: example.test\r\n\r\n")
            .rfc(&[200], 1),
        c("delete", Methods)
            .send(format!("DELETE /d HTTP/1.1\r\n{H}\r\n"))
            .rfc(&[200], 1),
    ]
}

fn http10() -> Vec<Case> {
    vec![
        c("http10_close", Http10)
            .send("GET /ten HTTP/1.0\r\nHost: example.test\r\n\r\n")
            .rfc(&[200], 1),
        c("http10_keepalive", Http10)
            .send("GET /1 HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n")
            .after(1)
            .send("GET /2 HTTP/1.0\r\nHost: example.test\r\nConnection: keep-alive\r\n\r\n")
            .expect(2)
            .rfc(&[200, 200], 2),
        c("http10_post", Http10)
            .send("POST /p HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
            .rfc(&[200], 1),
        c("http10_client_chunked_response", Http10)
            .send("GET /c HTTP/1.0\r\nHost: example.test\r\n\r\n")
            .answer(resp(
                "200 OK",
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ))
            .rfc(&[200], 1),
        c("http10_backend", Http10)
            .send(get("/1"))
            .after(1)
            .send(get("/2"))
            .expect(2)
            .answer(b"HTTP/1.0 200 OK\r\nX-Backend: 1\r\nContent-Length: 3\r\n\r\none")
            .answer(b"HTTP/1.0 200 OK\r\nX-Backend: 1\r\nContent-Length: 3\r\n\r\ntwo")
            .rfc(&[200, 200], 2),
        c("http10_backend_keepalive", Http10)
            .send(get("/1"))
            .after(1)
            .send(get("/2"))
            .expect(2)
            .answer(b"HTTP/1.0 200 OK\r\nX-Backend: 1\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\none")
            .answer(b"HTTP/1.0 200 OK\r\nX-Backend: 1\r\nContent-Length: 3\r\n\r\ntwo")
            .rfc(&[200, 200], 2),
        c("http10_backend_close_delimited", Http10)
            .send(get("/1"))
            .step(vec![
                Op::W(b"HTTP/1.0 200 OK\r\nX-Backend: 1\r\n\r\nuntil close".to_vec()),
                Op::Close,
            ])
            .rfc(&[200], 1),
    ]
}

fn pipelining() -> Vec<Case> {
    vec![
        c("pipelined_gets", Pipelining)
            .send(format!("{}{}{}", get("/1"), get("/2"), get("/3")))
            .expect(3)
            .answer(ok("one"))
            .answer(ok("two"))
            .answer(ok("three"))
            .rfc(&[200, 200, 200], 3),
        c("pipelined_post_then_get", Pipelining)
            .send(format!(
                "{}{}",
                post("Content-Length: 3\r\n", "abc"),
                get("/2")
            ))
            .expect(2)
            .answer(ok("one"))
            .answer(ok("two"))
            .rfc(&[200, 200], 2),
        c("pipelined_then_bad", Pipelining)
            .send(format!("{}GET / HTTP/1.1\r\nHost : x\r\n\r\n", get("/1")))
            .expect(2)
            .rfc(&[200, 400], 1),
        c("pipelined_head_then_get", Pipelining)
            .send(format!("HEAD /h HTTP/1.1\r\n{H}\r\n{}", get("/2")))
            .expect(2)
            .head(0)
            .answer(resp("200 OK", "Content-Length: 5\r\n", ""))
            .answer(ok("two"))
            .rfc(&[200, 200], 2),
        c("pipelined_after_close", Pipelining)
            .send(format!(
                "GET /1 HTTP/1.1\r\n{H}Connection: close\r\n\r\n{}",
                get("/2")
            ))
            .rfc(&[200], 1),
    ]
}

fn expect() -> Vec<Case> {
    let head = format!("PUT /e HTTP/1.1\r\n{H}Expect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    vec![
        c("expect_continue", Expect)
            .send(&head)
            .pause(150)
            .send("hello")
            .step(vec![
                Op::W(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
                Op::Body,
                Op::W(ok("done")),
            ])
            .rfc(&[200], 1),
        c("expect_continue_body_at_once", Expect)
            .send(format!("{head}hello"))
            .rfc(&[200], 1),
        c("expect_final_without_body", Expect)
            .send(&head)
            .pause(150)
            .send("hello")
            .step(vec![
                Op::NoBody,
                Op::W(resp("417 Expectation Failed", "Content-Length: 0\r\n", "").to_vec()),
                Op::Close,
            ]),
        c("expect_no_body", Expect)
            .send(format!(
                "GET /e HTTP/1.1\r\n{H}Expect: 100-continue\r\n\r\n"
            ))
            .rfc(&[200], 1),
    ]
}

fn interim() -> Vec<Case> {
    vec![
        c("early_hints", Interim)
            .send(get("/i"))
            .answer(
                [
                    &b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"[..],
                    &ok("final"),
                ]
                .concat(),
            )
            .rfc(&[200], 1),
        c("two_interim", Interim)
            .send(get("/i"))
            .answer(
                [
                    &b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"[..],
                    &ok("final"),
                ]
                .concat(),
            )
            .rfc(&[200], 1),
        // RFC 9110 15.2: no 1xx to an HTTP/1.0 client.
        c("interim_to_http10", Interim)
            .send("GET /i HTTP/1.0\r\nHost: example.test\r\n\r\n")
            .answer([&b"HTTP/1.1 103 Early Hints\r\n\r\n"[..], &ok("final")].concat())
            .rfc(&[200], 1),
        c("switching_protocols_unasked", Interim)
            .send(get("/i"))
            .answer(b"HTTP/1.1 101 Switching Protocols\r\nX-Backend: 1\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\nraw bytes")
            .rfc(&[502], 1),
    ]
}

fn no_body() -> Vec<Case> {
    vec![
        c("head_with_length", NoBody)
            .send(format!("HEAD /h HTTP/1.1\r\n{H}\r\n"))
            .after(1)
            .send(get("/after"))
            .expect(2)
            .head(0)
            .answer(resp("200 OK", "Content-Length: 10\r\n", ""))
            .rfc(&[200, 200], 2),
        c("head_with_chunked", NoBody)
            .send(format!("HEAD /h HTTP/1.1\r\n{H}\r\n"))
            .after(1)
            .send(get("/after"))
            .expect(2)
            .head(0)
            .answer(resp("200 OK", "Transfer-Encoding: chunked\r\n", ""))
            .rfc(&[200, 200], 2),
        c("head_backend_sends_body", NoBody)
            .send(format!("HEAD /h HTTP/1.1\r\n{H}\r\n"))
            .after(1)
            .send(get("/after"))
            .expect(2)
            .head(0)
            .answer(resp("200 OK", "Content-Length: 5\r\n", "hello"))
            .rfc(&[200, 200], 2),
        c("no_content_with_length", NoBody)
            .send(get("/204"))
            .after(1)
            .send(get("/after"))
            .expect(2)
            .answer(resp("204 No Content", "Content-Length: 5\r\n", ""))
            .rfc(&[204, 200], 2),
        c("not_modified", NoBody)
            .send(get("/304"))
            .after(1)
            .send(get("/after"))
            .expect(2)
            .answer(resp(
                "304 Not Modified",
                "ETag: \"x\"\r\nContent-Length: 99\r\n",
                "",
            ))
            .rfc(&[304, 200], 2),
        c("no_content_chunked", NoBody)
            .send(get("/204"))
            .after(1)
            .send(get("/after"))
            .expect(2)
            .answer(resp("204 No Content", "Transfer-Encoding: chunked\r\n", ""))
            .rfc(&[204, 200], 2),
    ]
}

fn close_delimited() -> Vec<Case> {
    vec![
        // Chunked to the HTTP/1.1 client so its connection stays open, as
        // pingora does (fixed: the new path closed it after the body).
        c("close_delimited", CloseDelimited)
            .send(get("/cd"))
            .step(vec![Op::W(resp("200 OK", "", "until the end")), Op::Close])
            .rfc(&[200], 1),
        c("close_delimited_gzip", CloseDelimited)
            .send(get("/cd"))
            .step(vec![
                Op::W(resp("200 OK", "Transfer-Encoding: gzip\r\n", "zzz")),
                Op::Close,
            ])
            .rfc(&[200], 1),
        c("close_delimited_slow", CloseDelimited)
            .send(get("/cd"))
            .step(vec![
                Op::W(resp("200 OK", "", "part one, ")),
                Op::Pause(50),
                Op::W(b"part two".to_vec()),
                Op::Close,
            ])
            .rfc(&[200], 1),
    ]
}

fn trailers() -> Vec<Case> {
    vec![
        c("request_trailers", Trailers)
            .send(post(
                "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n",
                "3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n",
            ))
            .rfc(&[200], 1),
        c("response_trailers", Trailers)
            .send(get("/t"))
            .answer(resp(
                "200 OK",
                "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n",
                "3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n",
            ))
            .rfc(&[200], 1),
    ]
}

fn bad_responses() -> Vec<Case> {
    // The issue: a bad response head is a 502 and its connection is not
    // reused: a second client connection's request must reach the backend on
    // a new connection (the backend's `conn 1`).
    let bad = |name: &'static str, answer: &[u8]| {
        c(name, BadResponse)
            .send(get("/bad"))
            .answer(answer)
            .conn()
            .send(get("/next"))
            .rfc(&[502, 200], 2)
    };
    let repaired = |name: &'static str, answer: &[u8]| {
        c(name, BadResponse)
            .send(get("/odd"))
            .answer(answer)
            .conn()
            .send(get("/next"))
            .rfc(&[200, 200], 2)
    };
    vec![
        bad(
            "resp_cl_te",
            &resp(
                "200 OK",
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
        ),
        bad(
            "resp_cl_duplicate_different",
            &resp(
                "200 OK",
                "Content-Length: 3\r\nContent-Length: 4\r\n",
                "abcd",
            ),
        ),
        bad(
            "resp_cl_duplicate_same",
            &resp(
                "200 OK",
                "Content-Length: 3\r\nContent-Length: 3\r\n",
                "abc",
            ),
        ),
        bad(
            "resp_cl_invalid",
            &resp("200 OK", "Content-Length: 3x\r\n", "abc"),
        ),
        bad(
            "resp_cl_negative",
            &resp("200 OK", "Content-Length: -3\r\n", "abc"),
        ),
        // RFC 9112 5.1 and 5.2 let a proxy repair these (drop the space before
        // the colon, replace obs-fold by SP) or answer 502; pingora repairs, and
        // so does the new path (fixed: it answered 502).
        repaired(
            "resp_obs_fold",
            &resp("200 OK", "X-Fold: a\r\n b\r\nContent-Length: 3\r\n", "abc"),
        ),
        repaired(
            "resp_space_before_colon",
            &resp("200 OK", "Content-Length : 3\r\n", "abc"),
        ),
        bad("resp_no_status_line", b"hello there\r\n\r\n"),
        bad(
            "resp_status_out_of_range",
            b"HTTP/1.1 2000 OK\r\nX-Backend: 1\r\nContent-Length: 0\r\n\r\n",
        ),
        // RFC 9112 2.2 lets a recipient accept a bare LF; pingora does for
        // responses, and so does the new path (fixed: it relayed the whole head
        // as the status line's reason phrase).
        c("resp_bare_lf", BadResponse)
            .send(get("/lf"))
            .answer(b"HTTP/1.1 200 OK\nX-Backend: 1\nContent-Length: 2\n\nok")
            .rfc(&[200], 1),
        c("resp_chunk_size_invalid", BadResponse)
            .send(get("/c"))
            .answer(resp(
                "200 OK",
                "Transfer-Encoding: chunked\r\n",
                "zz\r\nabc\r\n0\r\n\r\n",
            ))
            .conn()
            .send(get("/next"))
            .rfc(&[502, 200], 2),
        c("resp_chunk_size_overflow", BadResponse)
            .send(get("/c"))
            .answer(resp(
                "200 OK",
                "Transfer-Encoding: chunked\r\n",
                "10000000000000001\r\nabc\r\n0\r\n\r\n",
            ))
            .conn()
            .send(get("/next"))
            .rfc(&[502, 200], 2),
        c("resp_trailer_not_a_field", BadResponse)
            .send(get("/t"))
            .answer(resp(
                "200 OK",
                "Transfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\nno colon here\r\n\r\n",
            ))
            .conn()
            .send(get("/next"))
            .rfc(&[502, 200], 2),
        c("resp_body_short", BadResponse)
            .send(get("/short"))
            .step(vec![
                Op::W(resp("200 OK", "Content-Length: 10\r\n", "hello")),
                Op::Close,
            ]),
        c("resp_extra_after_body", BadResponse)
            .send(get("/1"))
            .after(1)
            .send(get("/2"))
            .expect(2)
            .answer(resp("200 OK", "Content-Length: 2\r\n", "okEXTRA"))
            .rfc(&[200, 200], 2),
        // pingora's bound, 1 MiB (fixed: the new path refused past 64 KiB).
        c("resp_head_large", BadResponse)
            .send(get("/big"))
            .answer(resp(
                "200 OK",
                &format!("X-Big: {}\r\nContent-Length: 0\r\n", "h".repeat(70_000)),
                "",
            ))
            .rfc(&[200], 1),
        c("resp_head_too_large", BadResponse)
            .send(get("/big"))
            .answer(resp(
                "200 OK",
                &format!("X-Big: {}\r\nContent-Length: 0\r\n", "h".repeat(1_100_000)),
                "",
            ))
            .rfc(&[502], 1),
        c("backend_closes_without_answer", BadResponse)
            .send(get("/x"))
            .step(vec![Op::Close])
            .rfc(&[502], 1),
        c("backend_resets", BadResponse)
            .send(get("/x"))
            .step(vec![Op::Reset])
            .rfc(&[502], 1),
        c("backend_resets_post", BadResponse)
            .send(post("Content-Length: 3\r\n", "abc"))
            .step(vec![Op::Reset])
            .rfc(&[502], 1),
        c("backend_silent", BadResponse)
            .send(get("/x"))
            .step(vec![Op::Hang])
            .rfc(&[504], 1),
    ]
}

fn reuse_race() -> Vec<Case> {
    vec![
        // The backend closes a kept-alive connection just as the next request
        // comes (it read it, then closed without a byte of answer): an
        // idempotent request is retried on a new connection (RFC 9112 9.3.1,
        // the issue), a POST is not.
        c("race_get_retried", ReuseRace)
            .send(get("/1"))
            .after(1)
            .send(get("/2"))
            .expect(2)
            .answer(ok("one"))
            .step(vec![Op::Close])
            .answer(ok("two"))
            .rfc(&[200, 200], 3),
        c("race_post_not_retried", ReuseRace)
            .send(get("/1"))
            .after(1)
            .send(post("Content-Length: 3\r\n", "abc"))
            .expect(2)
            .answer(ok("one"))
            .step(vec![Op::Close])
            .rfc(&[200, 502], 2),
        // The backend closed the idle connection before the next request:
        // the proxy must notice and use a new one, whatever the method.
        c("idle_closed_then_get", ReuseRace)
            .send(get("/1"))
            .after(1)
            .pause(30)
            .send(get("/2"))
            .expect(2)
            .step(vec![Op::W(ok("one")), Op::Close])
            .answer(ok("two"))
            .rfc(&[200, 200], 2),
        c("idle_closed_then_post", ReuseRace)
            .send(get("/1"))
            .after(1)
            .pause(30)
            .send(post("Content-Length: 3\r\n", "abc"))
            .expect(2)
            .step(vec![Op::W(ok("one")), Op::Close])
            .answer(ok("two"))
            .rfc(&[200, 200], 2),
        c("client_half_close", ReuseRace)
            .send(get("/h"))
            .shut()
            .rfc(&[200], 1),
    ]
}

fn limits() -> Vec<Case> {
    // max_header_bytes: 8192 on both listeners.
    let header = |n: usize| format!("GET /l HTTP/1.1\r\n{H}X-Long: {}\r\n\r\n", "v".repeat(n));
    let many = |n: usize| {
        let lines: String = (0..n).map(|i| format!("X-H{i}: {i}\r\n")).collect();
        format!("GET /m HTTP/1.1\r\n{H}{lines}\r\n")
    };
    vec![
        c("header_near_limit", Limits)
            .send(header(7900))
            .rfc(&[200], 1),
        c("header_over_limit", Limits)
            .send(header(9000))
            .rfc(&[431], 0),
        c("header_far_over_limit", Limits)
            .send(header(200_000))
            .rfc(&[431], 0),
        c("many_headers_100", Limits).send(many(100)).rfc(&[200], 1),
        // pingora's bound, 256 lines (fixed: the new path refused past 128).
        c("many_headers_200", Limits).send(many(200)).rfc(&[200], 1),
        c("many_headers_300", Limits).send(many(300)).rfc(&[431], 0),
        c("head_never_ends", Limits)
            .send(format!("GET / HTTP/1.1\r\n{H}"))
            .shut()
            .rfc(&[], 0),
    ]
}
