"""benches/chaos/wire.py: the clients' side of the wire. WebSocket framing (masked client
frames, pings answered), HTTP/1.1 heads and bodies, one request on a fresh connection,
the inserted cookie, and the name a failed exchange is counted under."""
import asyncio
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "load"))
import reload_client as rc  # noqa: E402  (one wire for both harnesses)
from reload_client import WS_GUID, error_kind, read_body, ws_frame  # noqa: E402,F401

COOKIE_RE = re.compile(r"(?:^|[\s,])TETHER=([^;,\s]+)")


async def ws_read_message(reader, writer):
    """(opcode, payload) of the next data or close message; pings are answered."""
    def answer(op, data):
        if op == 0x9:
            writer.write(ws_frame(0xA, data))
    return await rc.ws_read_message(reader, answer)


async def read_head(reader):
    """(status, {lower name: value}) of a response head."""
    line, headers = await rc.read_head(reader)
    return int(line.split(" ", 2)[1]), headers


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


def set_cookie_value(headers):
    m = COOKIE_RE.search(headers.get("set-cookie", ""))
    return m.group(1) if m else None
