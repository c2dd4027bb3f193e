#!/usr/bin/env python3
"""benches/load/reload_client.py: the client of the "reload under load" scenario.

Started by reload.sh (see README.md, "Reload under load"); Python 3 standard library only.

  reload_client.py run --proxy NAME --port PORT --trigger haproxy|api|sighup ...
      One run against a proxy that is already up on 127.0.0.1:PORT:
      1. opens WEBSOCKETS (100) WebSockets through it, each checked with one echo;
      2. starts HTTP_CONNS (4) keep-alive HTTP/1.1 GET loops (closed loop, cookies kept
         like a browser), waits WARMUP seconds;
      3. does RELOADS (50) reloads, one every INTERVAL (0.25 s), alternating config
         variant b (odd reloads) and a (even ones): the variant replaces the live config
         file (atomic rename), then the reload is triggered and checked:
           haproxy  `haproxy -c -q -f LIVE`, SIGUSR2 to the master, then the master CLI's
                    `show proc` must show one more reload, no failed one and a new
                    worker, whose `show servers state be` has s4 exactly in variant b;
           api      POST http://ADMIN/api/reload must answer 200;
           sighup   SIGHUP to tether; tether_config_reloads_total{result="ok"} in
                    /metrics must go up (result="error" going up is a failure);
         and for tether, GET /api/pools must then show b2's weight of the variant (and b4
         after a variant-b reload): proof that the new config is live, not only validated;
      4. keeps the load up SETTLE (2) seconds, stops the HTTP loops, waits for the echoes
         still due, then closes every WebSocket itself (close 1000).
      While the WebSockets send a message every WS_INTERVAL (0.2 s) and expect its echo.
      Prints one JSON line on stdout:
        {"proxy", "trigger", "reloads", "requests", "failed_requests", "websockets",
         "dropped_websockets", "errors": {kind: count}, "samples": [...], ...}
      A failed HTTP request: connect error, reset, EOF before the whole answer, no answer
      within TIMEOUT (2 s), or a status outside 2xx. A dropped WebSocket: a close frame,
      EOF or reset from the proxy, a send error, a wrong echo, or an echo that has not
      arrived ECHO_TIMEOUT (3 s) after its message, before the client closes it.
      Exit 0 when the run went through (whatever it measured), 3 when a reload failed
      (the JSON line then has "error"), 2 when the set-up failed (WebSockets not open).

  reload_client.py summary FILE
      Median (min-max) table of the JSON lines in FILE, per proxy.

  reload_client.py backend --id ID --listen HOST:PORT
      A stand-in backend for when examples/whoami is not built: keep-alive HTTP/1.1
      (`/healthz` -> 200 ok, anything else 200 JSON) and WebSocket echo (`ID: text`).
"""
import argparse
import asyncio
import base64
import collections
import hashlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ---------------------------------------------------------------- WebSocket framing
def ws_frame(opcode, payload, mask=True):
    """One FIN frame; masked with a random key when sent by a client (RFC 6455 5.3)."""
    n = len(payload)
    hdr = bytearray([0x80 | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr.append(mbit | n)
    elif n < 65536:
        hdr.append(mbit | 126)
        hdr += n.to_bytes(2, "big")
    else:
        hdr.append(mbit | 127)
        hdr += n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        hdr += key
        payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return bytes(hdr) + payload


async def ws_read_frame(reader):
    """(fin, opcode, payload) of the next frame, unmasked if it was masked."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    key = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n) if n else b""
    if key:
        data = bytes(b ^ key[i & 3] for i, b in enumerate(data))
    return bool(b0 & 0x80), b0 & 0x0F, data


async def ws_read_message(reader, on_control):
    """(opcode, payload) of the next data or close message; fragments are joined and
    ping/pong frames are handed to on_control(opcode, payload) on the way."""
    parts, first = [], None
    while True:
        fin, op, data = await ws_read_frame(reader)
        if op >= 0x8:
            if op == 0x8:
                return op, data
            on_control(op, data)
            continue
        if first is None:
            first = op
        parts.append(data)
        if fin:
            return first, b"".join(parts)


def ws_accept(key):
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


# ---------------------------------------------------------------- HTTP/1.1 helpers
async def read_head(reader):
    """(status or method line fields, {lower name: value}) of one message head."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            k = k.strip().lower()
            headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
    return lines[0], headers


async def read_body(reader, headers, status):
    """Reads and returns the body of a response; None = delimited by the connection close."""
    if status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(out)
            out.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()  # until EOF


def error_kind(e):
    """A short name for what went wrong on a socket."""
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


# ---------------------------------------------------------------- reload triggers
class ReloadError(Exception):
    pass


def install(src, live):
    """Replace LIVE by a copy of SRC, atomically (a reader sees the old or the new file)."""
    tmp = f"{live}.new"
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(f.read())
    os.replace(tmp, live)


def http_call(url, method="GET", timeout=5.0):
    """(status, body text); (None, reason) when nothing answered."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, urllib.error.URLError) as e:
        return None, str(e)


class HaproxyReload:
    """Master-worker reload: check the file, SIGUSR2 to the master, watch `show proc`."""

    def __init__(self, a):
        self.sock, self.master, self.live = a.master_sock, a.master_pid, a.live
        self.variants = (a.variant_a, a.variant_b)
        self.haproxy = a.haproxy_bin

    def cli(self, cmd, timeout=2.0):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        try:
            s.connect(self.sock)
            s.sendall(cmd.encode() + b"\n")
            s.shutdown(socket.SHUT_WR)  # the master CLI answers, then closes, once it sees EOF
            out = []
            while True:
                d = s.recv(65536)
                if not d:
                    return b"".join(out).decode(errors="replace")
                out.append(d)
        finally:
            s.close()

    def show_proc(self):
        """{'reloads', 'failed', 'workers': [pid], 'old': [(pid, reloads)]}"""
        out = {"reloads": None, "failed": 0, "workers": [], "old": []}
        section = None
        for line in self.cli("show proc").splitlines():
            if line.startswith("# "):
                section = line[2:].strip()
                continue
            f = line.split()
            if len(f) < 3 or line.startswith("#"):
                continue
            if f[1] == "master":
                out["reloads"] = int(f[2])
                m = re.search(r"failed:\s*(\d+)", line)
                out["failed"] = int(m.group(1)) if m else 0
            elif section == "workers":
                out["workers"].append(int(f[0]))
            elif section == "old workers":
                out["old"].append((int(f[0]), int(f[2])))
        return out

    def proc_retry(self, deadline):
        while True:
            try:
                return self.show_proc()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def reload(self, n):
        variant = self.variants[n % 2]  # odd: b, even: a
        before = self.proc_retry(time.monotonic() + 5)
        install(variant, self.live)
        chk = subprocess.run([self.haproxy, "-c", "-q", "-f", self.live], capture_output=True, text=True)
        if chk.returncode != 0:
            raise ReloadError(f"haproxy -c rejected {variant}: {chk.stdout}{chk.stderr}")
        os.kill(self.master, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while True:
            time.sleep(0.01)
            try:
                p = self.show_proc()
            except OSError:
                p = None  # the master is re-executing itself
            if p and p["failed"] > before["failed"]:
                raise ReloadError(f"the master reports a failed reload (show proc: {p}); see haproxy.log")
            if p and p["reloads"] is not None and p["reloads"] > before["reloads"] and p["workers"] \
                    and not set(p["workers"]) & set(before["workers"]):
                break
            if time.monotonic() > deadline:
                raise ReloadError(f"no new worker 10 s after SIGUSR2 (before {before}, now {p})")
        # The new worker runs the new variant: a = s1 s2 s3 weight 1; b = s2 weight 2, and s4.
        state = self.cli("@1 show servers state be")
        weights = {f[3]: f[7] for f in (l.split() for l in state.splitlines()) if len(f) > 7 and f[1] == "be"}
        want = {"s1": "1", "s2": "2", "s3": "1", "s4": "1"} if n % 2 else {"s1": "1", "s2": "1", "s3": "1"}
        if weights != want:
            raise ReloadError(f"reload {n}: the new worker's servers (name: weight) are {weights}, not {want}")

    def info(self):
        try:
            p = self.show_proc()
            return {"workers": len(p["workers"]), "old_workers": len(p["old"]),
                    "old_worker_reloads": sorted(r for _, r in p["old"])}
        except OSError as e:
            return {"error": str(e)}


class TetherReload:
    """Copy the variant over the live proxy.yaml, then POST /api/reload or SIGHUP."""

    def __init__(self, a):
        self.admin, self.pid, self.live, self.sighup = a.admin, a.pid, a.live, a.trigger == "sighup"
        self.variants = (a.variant_a, a.variant_b)

    def counters(self):
        st, body = http_call(f"http://{self.admin}/metrics")
        if st != 200:
            raise ReloadError(f"GET /metrics answered {st}: {body[:200]}")
        c = {"ok": 0.0, "error": 0.0}
        for m in re.finditer(r'^tether_config_reloads_total\{result="(ok|error)"\}\s+(\S+)', body, re.M):
            c[m.group(1)] = float(m.group(2))
        return c

    def reload(self, n):
        variant = self.variants[n % 2]
        if self.sighup:
            before = self.counters()
            install(variant, self.live)
            os.kill(self.pid, signal.SIGHUP)
            deadline = time.monotonic() + 5
            while True:
                time.sleep(0.01)
                c = self.counters()
                if c["error"] > before["error"]:
                    raise ReloadError(f"SIGHUP: tether rejected {variant} "
                                      "(tether_config_reloads_total{result=\"error\"} went up; see tether.log)")
                if c["ok"] > before["ok"]:
                    break
                if time.monotonic() > deadline:
                    raise ReloadError("SIGHUP: tether_config_reloads_total did not move within 5 s")
        else:
            install(variant, self.live)
            st, body = http_call(f"http://{self.admin}/api/reload", "POST")
            if st != 200:
                raise ReloadError(f"POST http://{self.admin}/api/reload answered {st}: {body.strip()[:300]}")
        # The admin API must show the new variant once it is live: b2's weight (1 in a, 2 in
        # b) and, in b, b4. (After a, b4 may still be listed while it drains.)
        want_w2 = 2 if n % 2 else 1
        deadline = time.monotonic() + 2
        while True:
            st, body = http_call(f"http://{self.admin}/api/pools")
            try:
                backends = {b.get("id"): b for p in json.loads(body).get("pools", []) for b in p.get("backends", [])}
            except (ValueError, AttributeError):
                backends = {}
            w2 = backends.get("b2", {}).get("weight")
            if w2 == want_w2 and (n % 2 == 0 or "b4" in backends):
                break
            if time.monotonic() > deadline:
                raise ReloadError(f"reload {n} was accepted but 2 s later GET /api/pools shows b2 weight {w2} "
                                  f"(want {want_w2}) and backends {sorted(map(str, backends))}"
                                  f"{' (want b4)' if n % 2 else ''}: the new config was not applied")
            time.sleep(0.02)

    def info(self):
        return {}


# ---------------------------------------------------------------- the run
class Run:
    def __init__(self, a):
        self.a = a
        self.errors = collections.Counter()
        self.samples = []
        self.requests = 0
        self.failed = 0
        self.reloads_done = 0
        self.reload_started = 0  # the reload under way, or the last one started
        self.reload_ms = []
        self.t0 = time.monotonic()
        self.t_reloads = None  # when the first reload started
        self.stop_http = asyncio.Event()
        self.stop_ws = asyncio.Event()
        self.ws = []

    def note(self, what, kind, detail=""):
        self.errors[f"{what}:{kind}"] += 1
        if sum(1 for s in self.samples if s["what"] == what) < 8:
            t = time.monotonic() - (self.t_reloads or self.t0)
            # t_s: seconds since the first reload started; reload: the last one started
            # (reload n starts at (n - 1) x INTERVAL).
            self.samples.append({"what": what, "kind": kind, "detail": str(detail)[:160],
                                 "t_s": round(t, 3), "reload": self.reload_started,
                                 "reload_done": self.reloads_done == self.reload_started})

    # ---- HTTP
    async def http_loop(self, idx):
        a = self.a
        conn, served, jar = None, 0, {}
        while not self.stop_http.is_set():
            self.requests += 1
            stage = "connect"
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", a.port), a.timeout)
                    served = 0
                r, w = conn
                cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
                w.write((f"GET /?c={idx}&n={self.requests} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
                         + (f"Cookie: {cookie}\r\n" if cookie else "") + "\r\n").encode())
                stage = "send"
                await w.drain()
                stage = "answer"
                line, hdr, body = await asyncio.wait_for(self.http_answer(r), a.timeout)
                parts = line.split(" ", 2)
                status = int(parts[1])
                for c in re.findall(r"(?:^|, )([A-Za-z0-9_.-]+)=([^;,]*)", hdr.get("set-cookie", "")):
                    jar[c[0]] = c[1]
                served += 1
                if not 200 <= status < 300:
                    self.failed += 1
                    self.note("http", f"status_{status}", body[:120])
                if body is None or "close" in hdr.get("connection", "").lower() or parts[0] == "HTTP/1.0":
                    w.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure is counted, none ends the loop
                self.failed += 1
                kind = error_kind(e)
                if kind == "eof" and stage == "answer":
                    nothing = isinstance(e, asyncio.IncompleteReadError) and not e.partial
                    # A kept-alive connection closed under a request: RFC 9112 9.3.1 lets a
                    # client retry it; still a failure here, named apart.
                    kind = ("eof_before_answer_reused" if served else "eof_before_answer") if nothing \
                        else "eof_mid_answer"
                self.note("http", f"{stage}_{kind}" if stage == "connect" else kind, repr(e))
                if conn:
                    conn[1].close()
                conn = None
                await asyncio.sleep(0.01)
        if conn:
            conn[1].close()

    @staticmethod
    async def http_answer(r):
        line, hdr = await read_head(r)
        status = int(line.split(" ", 2)[1])
        body = await read_body(r, hdr, status)
        return line, hdr, (body.decode(errors="replace") if body is not None else None)

    # ---- WebSockets
    async def ws_open(self, i):
        a = self.a
        ws = {"i": i, "pending": collections.deque(), "dropped": None, "closing": False,
              "echoes": 0, "closed": asyncio.Event()}
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", a.port), 5)
        ws["r"], ws["w"] = r, w
        key = base64.b64encode(os.urandom(16)).decode()
        w.write((f"GET /ws/{i} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await w.drain()
        line, hdr = await asyncio.wait_for(read_head(r), 5)
        if line.split(" ", 2)[1] != "101" or hdr.get("sec-websocket-accept") != ws_accept(key):
            raise RuntimeError(f"WebSocket {i}: handshake answered {line!r} {hdr}")
        # One echo before the reloads start: the tunnel works end to end.
        text = f"ws{i} hello"
        w.write(ws_frame(0x1, text.encode(), True))
        op, data = await asyncio.wait_for(ws_read_message(r, lambda *_: None), 5)
        if op != 0x1 or not data.decode(errors="replace").endswith(text):
            raise RuntimeError(f"WebSocket {i}: first echo was opcode {op} {data[:80]!r}")
        return ws

    def ws_drop(self, ws, kind, detail=""):
        if ws["dropped"] is None and not ws["closing"]:
            ws["dropped"] = kind
            self.note("ws", kind, f"ws{ws['i']} {detail}")
            ws["w"].close()

    async def ws_reader(self, ws):
        w = ws["w"]

        def control(op, data):
            if op == 0x9:  # ping: answer pong with the same payload
                w.write(ws_frame(0xA, data, True))

        try:
            while True:
                op, data = await ws_read_message(ws["r"], control)
                if op == 0x8:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                    if ws["closing"]:
                        ws["closed"].set()
                        return
                    self.ws_drop(ws, f"closed_by_peer_{code}", data[2:].decode(errors="replace"))
                    return
                text = data.decode(errors="replace")
                if not ws["pending"]:
                    self.ws_drop(ws, "unexpected_message", text[:80])
                    return
                sent, _ = ws["pending"].popleft()
                if not text.endswith(sent):
                    self.ws_drop(ws, "bad_echo", f"sent {sent!r} got {text[:80]!r}")
                    return
                ws["echoes"] += 1
        except Exception as e:  # noqa: BLE001
            if ws["closing"]:
                ws["closed"].set()
            else:
                self.ws_drop(ws, error_kind(e), repr(e))

    async def ws_writer(self, ws):
        a = self.a
        seq = 0
        # Spread the 100 WebSockets over the interval.
        try:
            await asyncio.wait_for(self.stop_ws.wait(), random.uniform(0, a.ws_interval))
        except asyncio.TimeoutError:
            pass
        while not self.stop_ws.is_set() and ws["dropped"] is None:
            now = time.monotonic()
            if ws["pending"] and now - ws["pending"][0][1] > a.echo_timeout:
                self.ws_drop(ws, "echo_timeout", f"no echo of {ws['pending'][0][0]!r} in {a.echo_timeout} s")
                return
            seq += 1
            text = f"ws{ws['i']} #{seq}"
            ws["pending"].append((text, now))
            try:
                ws["w"].write(ws_frame(0x1, text.encode(), True))
                await ws["w"].drain()
            except Exception as e:  # noqa: BLE001
                self.ws_drop(ws, f"send_{error_kind(e)}", repr(e))
                return
            try:
                await asyncio.wait_for(self.stop_ws.wait(), a.ws_interval)
            except asyncio.TimeoutError:
                pass

    # ---- reloads
    async def reloads(self, reloader):
        a = self.a
        loop = asyncio.get_running_loop()
        self.t_reloads = time.monotonic()
        for n in range(1, a.reloads + 1):
            due = self.t_reloads + (n - 1) * a.interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            t = time.monotonic()
            self.reload_started = n
            await loop.run_in_executor(None, reloader.reload, n)  # raises ReloadError
            self.reload_ms.append((time.monotonic() - t) * 1000)
            self.reloads_done = n

    async def main(self):
        a = self.a
        reloader = HaproxyReload(a) if a.trigger == "haproxy" else TetherReload(a)
        result = {"proxy": a.proxy, "trigger": a.trigger}
        # 1. WebSockets, 20 handshakes at a time.
        sem = asyncio.Semaphore(20)

        async def one(i):
            async with sem:
                return await self.ws_open(i)

        opened = await asyncio.gather(*(one(i) for i in range(a.websockets)), return_exceptions=True)
        bad = [e for e in opened if isinstance(e, BaseException)]
        if bad:
            for ws in opened:
                if not isinstance(ws, BaseException):
                    ws["w"].close()
            print(f"reload_client: {len(bad)} of {a.websockets} WebSockets did not open: {bad[0]!r}", file=sys.stderr)
            return 2, dict(result, error=f"set-up: {len(bad)} WebSockets did not open: {bad[0]!r}")
        self.ws = opened
        tasks = [asyncio.ensure_future(self.ws_reader(ws)) for ws in self.ws]
        writers = [asyncio.ensure_future(self.ws_writer(ws)) for ws in self.ws]
        # 2. HTTP load, warm-up.
        http = [asyncio.ensure_future(self.http_loop(i)) for i in range(a.http_conns)]
        await asyncio.sleep(a.warmup)
        # 3. Reloads.
        rc, err = 0, None
        try:
            await self.reloads(reloader)
        except ReloadError as e:
            rc, err = 3, str(e)
            print(f"reload_client: reload {self.reloads_done + 1} failed: {e}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - a broken trigger is a failed reload too
            rc, err = 3, f"{type(e).__name__}: {e}"
            print(f"reload_client: reload {self.reloads_done + 1} failed: {err}", file=sys.stderr)
        # 4. Settle, then stop.
        if rc == 0:
            await asyncio.sleep(a.settle)
        t_end = time.monotonic()
        self.stop_http.set()
        await asyncio.gather(*http)
        self.stop_ws.set()
        await asyncio.gather(*writers)
        # The echoes still due get ECHO_TIMEOUT to arrive.
        deadline = time.monotonic() + a.echo_timeout
        while time.monotonic() < deadline and any(ws["pending"] and ws["dropped"] is None for ws in self.ws):
            await asyncio.sleep(0.05)
        for ws in self.ws:
            if ws["pending"] and ws["dropped"] is None:
                self.ws_drop(ws, "echo_timeout", f"no echo of {ws['pending'][0][0]!r} by the end")
        info = reloader.info()  # e.g. HAProxy's old workers still holding the WebSockets
        # The client ends the WebSockets: close 1000, the proxy should pass the close back.
        for ws in self.ws:
            if ws["dropped"] is None:
                ws["closing"] = True
                try:
                    ws["w"].write(ws_frame(0x8, (1000).to_bytes(2, "big"), True))
                except Exception:  # noqa: BLE001
                    pass
        live = [ws for ws in self.ws if ws["closing"]]
        if live:
            await asyncio.wait([asyncio.ensure_future(ws["closed"].wait()) for ws in live], timeout=2)
        close_unanswered = sum(1 for ws in live if not ws["closed"].is_set())
        for ws in self.ws:
            ws["w"].close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if a.trigger == "haproxy":
            await asyncio.sleep(1)
            info["old_workers_1s_after_ws_closed"] = reloader.info().get("old_workers")
        rm = sorted(self.reload_ms)
        result.update({
            "reloads": self.reloads_done,
            "requests": self.requests,
            "failed_requests": self.failed,
            "websockets": len(self.ws),
            "dropped_websockets": sum(1 for ws in self.ws if ws["dropped"]),
            "errors": dict(sorted(self.errors.items())),
            "seconds": round(t_end - self.t0, 1),
            "ws_echoes": sum(ws["echoes"] for ws in self.ws),
            "reload_ms_p50": round(statistics.median(rm), 1) if rm else None,
            "reload_ms_max": round(rm[-1], 1) if rm else None,
            "ws_close_unanswered": close_unanswered,
            "proxy_info": info,
            "samples": self.samples,
        })
        if err:
            result["error"] = err
        return rc, result


def cmd_run(a):
    async def go():
        run = Run(a)
        return await asyncio.wait_for(run.main(), a.max_seconds)

    try:
        rc, result = asyncio.run(go())
    except asyncio.TimeoutError:
        rc, result = 4, {"proxy": a.proxy, "trigger": a.trigger, "error": f"run exceeded {a.max_seconds} s"}
    print(json.dumps(result), flush=True)
    return rc


# ---------------------------------------------------------------- summary
def cmd_summary(a):
    rows = collections.defaultdict(list)
    for line in open(a.file):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows[r["proxy"]].append(r)
    if not rows:
        print("no results")
        return 1

    def cell(vals):
        m = statistics.median(vals)
        txt = f"{m:.0f}" if m == int(m) else f"{m:.1f}"
        return txt + (f" ({min(vals)}-{max(vals)})" if len(vals) > 1 else "")

    n = max(len(v) for v in rows.values())
    print(f"medians of {n} run(s) (min-max)")
    cols = ["reloads", "requests", "failed_requests", "websockets", "dropped_websockets", "reload_ms_p50"]
    table = [["proxy"] + cols]
    for proxy, rs in rows.items():
        cells = [proxy]
        for c in cols:
            vals = [r[c] for r in rs if r.get(c) is not None]
            cells.append(cell(vals) if vals else "-")
        table.append(cells)
    widths = [max(len(row[i]) for row in table) + 2 for i in range(len(table[0]))]
    for row in table:
        print("".join(f"{c:<{w}}" for c, w in zip(row, widths)).rstrip())
    for proxy, rs in rows.items():
        errs = collections.Counter()
        for r in rs:
            errs.update(r.get("errors", {}))
        if errs:
            print(f"{proxy}: error kinds over {len(rs)} run(s): {dict(sorted(errs.items()))}")
    return 0


# ---------------------------------------------------------------- stand-in backend
def cmd_backend(a):
    host, port = a.listen.rsplit(":", 1)
    ident = a.id

    async def websocket(r, w):
        while True:
            op, data = await ws_read_message(r, lambda o, d: w.write(ws_frame(0xA, d, False)) if o == 0x9 else None)
            if op == 0x8:
                w.write(ws_frame(0x8, data[:2], False))
                await w.drain()
                return
            w.write(ws_frame(op, f"{ident}: ".encode() + data if op == 0x1 else data, False))
            await w.drain()

    async def handle(r, w):
        try:
            while True:
                line, hdr = await read_head(r)
                method, path = (line.split(" ") + ["", ""])[:2]
                if "content-length" in hdr:
                    await r.readexactly(int(hdr["content-length"]))
                if hdr.get("upgrade", "").lower() == "websocket":
                    w.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             f"Sec-WebSocket-Accept: {ws_accept(hdr.get('sec-websocket-key', ''))}\r\n"
                             f"X-Backend-Id: {ident}\r\n\r\n").encode())
                    await w.drain()
                    await websocket(r, w)
                    return
                if path == "/healthz":
                    body, extra = b"ok", ""
                else:
                    body = json.dumps({"id": ident, "method": method, "path": path}).encode()
                    extra = f"X-Backend-Id: {ident}\r\n"
                w.write((f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            w.close()

    async def main():
        srv = await asyncio.start_server(handle, host, int(port), backlog=1024)
        print(f"backend {ident} listening on {a.listen}", flush=True)
        await srv.serve_forever()

    asyncio.run(main())
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--proxy", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--trigger", choices=["haproxy", "api", "sighup"], required=True)
    r.add_argument("--live", required=True, help="the config file the proxy runs on")
    r.add_argument("--variant-a", required=True)
    r.add_argument("--variant-b", required=True)
    r.add_argument("--master-sock", help="haproxy: the master CLI socket (-S)")
    r.add_argument("--master-pid", type=int, help="haproxy: the master's pid")
    r.add_argument("--haproxy-bin", default="haproxy")
    r.add_argument("--admin", help="tether: admin listen address host:port")
    r.add_argument("--pid", type=int, help="tether: its pid (for SIGHUP)")
    r.add_argument("--reloads", type=int, default=50)
    r.add_argument("--interval", type=float, default=0.25, help="seconds between reload starts")
    r.add_argument("--http-conns", type=int, default=4)
    r.add_argument("--websockets", type=int, default=100)
    r.add_argument("--ws-interval", type=float, default=0.2)
    r.add_argument("--warmup", type=float, default=1.0)
    r.add_argument("--settle", type=float, default=2.0, help="seconds of load after the last reload")
    r.add_argument("--timeout", type=float, default=2.0, help="per HTTP request")
    r.add_argument("--echo-timeout", type=float, default=3.0)
    r.add_argument("--max-seconds", type=float, default=110.0)
    s = sub.add_parser("summary")
    s.add_argument("file")
    b = sub.add_parser("backend")
    b.add_argument("--id", required=True)
    b.add_argument("--listen", required=True)
    a = p.parse_args()
    if a.cmd == "run":
        if a.trigger == "haproxy" and not (a.master_sock and a.master_pid):
            p.error("--trigger haproxy needs --master-sock and --master-pid")
        if a.trigger in ("api", "sighup") and not a.admin:
            p.error("--trigger api/sighup needs --admin")
        if a.trigger == "sighup" and not a.pid:
            p.error("--trigger sighup needs --pid")
        return cmd_run(a)
    return {"summary": cmd_summary, "backend": cmd_backend}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
