"""benches/chaos/wire.py: the clients' side of the wire. WebSocket framing (masked client
frames, pings answered), HTTP/1.1 heads and bodies, one request on a fresh connection,
the inserted cookie, and the name a failed exchange is counted under."""
import asyncio
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "load"))
from reload_client import WS_GUID, ws_frame, ws_read_frame  # noqa: E402,F401  (one framing for both harnesses)

COOKIE_RE = re.compile(r"(?:^|[\s,])TETHER=([^;,\s]+)")


async def ws_read_message(reader, writer):
    """(opcode, payload) of the next data or close message; pings are answered."""
    parts, first = [], None
    while True:
        fin, op, data = await ws_read_frame(reader)
        if op >= 0x8:
            if op == 0x8:
                return op, data
            if op == 0x9:
                writer.write(ws_frame(0xA, data))
            continue
        if first is None:
            first = op
        parts.append(data)
        if fin:
            return first, b"".join(parts)


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            k = k.strip().lower()
            headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
    parts = lines[0].split(" ", 2)
    return int(parts[1]), headers


async def read_body(reader, headers, status):
    if status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(out)
            out.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


async def http_once(port, path, method="GET", body=b"", timeout=3.0, headers=None):
    """One request on a fresh connection (Connection: close): (status, headers, body)."""
    async def go():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            w.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await w.drain()
            status, hdrs = await read_head(r)
            data = await read_body(r, hdrs, status)
            return status, hdrs, data
        finally:
            w.close()
    return await asyncio.wait_for(go(), timeout)


def error_kind(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(e, asyncio.IncompleteReadError):
        return "eof"
    if isinstance(e, (asyncio.LimitOverrunError, ValueError, UnicodeError, IndexError)):
        return "bad_response"
    if isinstance(e, OSError):
        return f"oserror_{e.errno}"
    return type(e).__name__


def set_cookie_value(headers):
    m = COOKIE_RE.search(headers.get("set-cookie", ""))
    return m.group(1) if m else None
