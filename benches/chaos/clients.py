"""benches/chaos/clients.py: the client loops: HTTP (a keep-alive connection to each
instance, alternating), WebSocket (a cookie confirmed through both instances, then one
socket at a time) and TCP devices (README.md, "Load"). Each feeds the counts, the
latencies and the data-path observations the invariants are checked on.

A mixin of soak.Soak: the state it reads and writes is created in Soak.__init__."""
import asyncio
import base64
import hashlib
import json
import os
import random

from common import ECHO_BOUND, ECHO_HARD, REQUEST_BOUND, REQUEST_HARD
from wire import (WS_GUID, error_kind, http_once, read_body, read_head, set_cookie_value, ws_frame,
                  ws_read_message)


class Clients:
    # -------------------------------------------------------------- HTTP clients
    async def http_client(self, n):
        rng = random.Random(self.a.seed * 1000 + n)
        await asyncio.sleep(rng.uniform(0, 3))
        st = {"cookie": None, "key": None, "confirmed": False}
        conns = {"A": None, "B": None}
        conn_pid = {"A": None, "B": None}   # the serving process when the connection was opened
        turn = n % 2
        seq = 0
        k = self.kinds["http"]

        async def request(inst, path, cookie):
            reused = conns[inst] is not None
            for attempt in (0, 1):
                if conns[inst] is None:
                    conn_pid[inst] = self.tethers[inst]["pid"]
                    r, w = await asyncio.open_connection("127.0.0.1", self.tethers[inst]["web"])
                    conns[inst] = (r, w)
                    k["connections"] += 1
                r, w = conns[inst]
                ck = f"Cookie: TETHER={cookie}\r\n" if cookie else ""
                w.write(f"GET {path} HTTP/1.1\r\nHost: soak.test\r\nUser-Agent: chaos-soak\r\n{ck}\r\n".encode())
                try:
                    await w.drain()
                    status, hdrs = await read_head(r)
                except (asyncio.IncompleteReadError, ConnectionError) as e:
                    # A kept-alive connection the server closed meanwhile: like a browser,
                    # retry once on a fresh connection (nothing of the answer was read).
                    close(inst)
                    partial = isinstance(e, asyncio.IncompleteReadError) and e.partial
                    if reused and attempt == 0 and not partial:
                        k["keepalive_retries"] += 1
                        reused = False
                        continue
                    raise
                body = await read_body(r, hdrs, status)
                if "close" in hdrs.get("connection", "").lower():
                    close(inst)
                return status, hdrs, body

        def close(inst):
            if conns[inst]:
                try:
                    conns[inst][1].close()
                except Exception:
                    pass
                conns[inst] = None

        while not self.stopping:
            inst = "AB"[turn]
            turn ^= 1
            seq += 1
            cookie = st["cookie"]
            t_send = self.now()
            try:
                status, hdrs, body = await asyncio.wait_for(request(inst, f"/h{n}/{seq}", cookie), REQUEST_HARD)
            except Exception as e:
                el = self.now() - t_send
                kind = error_kind(e)
                k["failed"] += 1
                k[f"failed_{kind}"] += 1
                close(inst)
                if el > REQUEST_BOUND:
                    self.slow("http", "request", el, REQUEST_BOUND, client=n, instance=inst, key=st["key"],
                              error=kind)
                await asyncio.sleep(0.5)
                continue
            el = self.now() - t_send
            self.lat["http"].append(el)
            k["requests"] += 1
            if el > REQUEST_BOUND:
                self.slow("http", "request", el, REQUEST_BOUND, client=n, instance=inst, key=st["key"], status=status)
            if not 200 <= status < 300:
                k["failed"] += 1
                k[f"failed_{status}"] += 1
                await asyncio.sleep(self.a.http_interval * rng.uniform(0.8, 1.2))
                continue
            k["ok"] += 1
            try:
                j = json.loads(body)
                backend, h = j["id"], j["headers"]
            except Exception:
                k["bad_body"] += 1
                await asyncio.sleep(self.a.http_interval)
                continue
            hkey = h.get("x-tether-session")
            moved_from = h.get("x-tether-moved-from")
            if moved_from:
                k[f"moved_header_{h.get('x-tether-move-reason')}"] += 1
            if cookie and hkey != st["key"]:
                self.violate("b_no_session_lost", kind="http", what="the request carried the session's cookie "
                             "but was routed as another session", client=n, instance=inst,
                             key=st["key"], routed_as=hkey, confirmed=st["confirmed"])
            if cookie and not st["confirmed"]:
                st["confirmed"] = True
                self.register(("app", st["key"]), "http", n)
            sc = set_cookie_value(hdrs)
            if sc:
                if st["cookie"] is None:
                    st.update(cookie=sc, key=hkey)
                elif sc != st["cookie"]:
                    if st["confirmed"]:
                        self.violate("b_no_session_lost", kind="http", what="a new Set-Cookie replaced a "
                                     "confirmed session", client=n, instance=inst, key=st["key"],
                                     new_key=hkey, backend=backend)
                        self.sessions.get(("app", st["key"]), {})["abandoned"] = True
                    else:
                        k["unconfirmed_replaced"] += 1
                    st.update(cookie=sc, key=hkey, confirmed=False)
            if st["key"]:
                self.observe(("app", st["key"]), inst, backend, t_send, "http", explained=bool(moved_from),
                             pid=conn_pid[inst])
            await asyncio.sleep(self.a.http_interval * rng.uniform(0.8, 1.2))
        for inst in ("A", "B"):
            close(inst)

    # -------------------------------------------------------------- WebSocket clients
    async def ws_setup(self, n, k):
        """An inserted cookie from one instance, confirmed through the other."""
        first = "AB"[n % 2]
        second = "BA"[n % 2]
        while not self.stopping:
            try:
                st, hdrs, body = await http_once(self.tethers[first]["web"], f"/ws-setup/{n}", timeout=REQUEST_HARD)
                cookie = set_cookie_value(hdrs)
                key = json.loads(body)["headers"]["x-tether-session"] if st == 200 else None
                if st == 200 and cookie and key:
                    st2, _, body2 = await http_once(self.tethers[second]["web"], f"/ws-confirm/{n}",
                                                    timeout=REQUEST_HARD, headers={"Cookie": f"TETHER={cookie}"})
                    if st2 == 200 and json.loads(body2)["headers"].get("x-tether-session") == key:
                        self.register(("app", key), "ws", n)
                        return cookie, key
            except Exception as e:
                k[f"setup_failed_{error_kind(e)}"] += 1
            k["setup_retries"] += 1
            await asyncio.sleep(1.0)
        return None, None

    async def ws_client(self, n):
        rng = random.Random(self.a.seed * 2000 + n)
        await asyncio.sleep(rng.uniform(0, 3))
        k = self.kinds["ws"]
        cookie, key = await self.ws_setup(n, k)
        if not cookie:
            return
        sid = ("app", key)
        turn = n % 2
        seq = 0
        opened = 0
        while not self.stopping:
            inst = "AB"[turn]
            turn ^= 1
            t_open = self.now()
            pid_open = self.tethers[inst]["pid"]
            w = None
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.tethers[inst]["web"]),
                                              REQUEST_HARD)
                wskey = base64.b64encode(os.urandom(16)).decode()
                w.write((f"GET /ws/{n} HTTP/1.1\r\nHost: soak.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {wskey}\r\nSec-WebSocket-Version: 13\r\nCookie: TETHER={cookie}\r\n\r\n").encode())
                await w.drain()
                status, hdrs = await asyncio.wait_for(read_head(r), max(0.1, REQUEST_HARD - (self.now() - t_open)))
                el = self.now() - t_open
                if el > REQUEST_BOUND:
                    self.slow("ws", "handshake", el, REQUEST_BOUND, client=n, instance=inst, key=key, status=status)
                if status != 101:
                    k["failed"] += 1
                    k[f"open_failed_{status}"] += 1
                    w.close()
                    await asyncio.sleep(0.5)
                    continue
                acc = base64.b64encode(hashlib.sha1(wskey.encode() + WS_GUID).digest()).decode()
                if hdrs.get("sec-websocket-accept") != acc:
                    k["bad_accept"] += 1
                sc = set_cookie_value(hdrs)
                if sc and sc != cookie:
                    self.violate("b_no_session_lost", kind="ws", what="the 101 set a new cookie for a confirmed "
                                 "session", client=n, instance=inst, key=key)
                    self.sessions[sid]["abandoned"] = True
                    return
                self.lat["ws_open"].append(el)
            except Exception as e:
                el = self.now() - t_open
                k["failed"] += 1
                k[f"open_failed_{error_kind(e)}"] += 1
                if el > REQUEST_BOUND:
                    self.slow("ws", "handshake", el, REQUEST_BOUND, client=n, instance=inst, key=key,
                              error=error_kind(e))
                if w:
                    w.close()
                await asyncio.sleep(0.5)
                continue
            opened += 1
            if opened > 1:
                k["reconnects"] += 1
            conn_backend = None
            voluntary_at = self.now() + rng.uniform(20, 30)
            why = None
            while not self.stopping:
                if self.now() >= voluntary_at:
                    why = "voluntary"
                    break
                seq += 1
                msg = f"w{n}-{seq}"
                t_send = self.now()
                try:
                    w.write(ws_frame(1, msg.encode()))
                    await w.drain()
                    op, data = await asyncio.wait_for(ws_read_message(r, w), ECHO_HARD)
                except Exception as e:
                    el = self.now() - t_send
                    why = error_kind(e)
                    if el > ECHO_BOUND:
                        self.slow("ws", "echo", el, ECHO_BOUND, client=n, instance=inst, key=key,
                                  backend=conn_backend, error=why)
                    k["lost_echo"] += 1
                    break
                el = self.now() - t_send
                if op == 0x8:
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                    why = f"close_{code}"
                    if el > ECHO_BOUND:
                        self.slow("ws", "echo", el, ECHO_BOUND, client=n, instance=inst, key=key,
                                  backend=conn_backend, error=why)
                    k["lost_echo"] += 1
                    try:
                        w.write(ws_frame(0x8, data[:2]))
                    except Exception:
                        pass
                    break
                text = data.decode(errors="replace")
                backend, _, echoed = text.partition(": ")
                if echoed != msg:
                    k["wrong_echo"] += 1
                    self.violate("b_no_session_lost", kind="ws", what="wrong echo", client=n, instance=inst,
                                 key=key, sent=msg, got=text[:100])
                    why = "wrong_echo"
                    break
                self.lat["ws_echo"].append(el)
                k["echoes"] += 1
                if el > ECHO_BOUND:
                    self.slow("ws", "echo", el, ECHO_BOUND, client=n, instance=inst, key=key, backend=backend)
                if conn_backend is None:
                    conn_backend = backend
                    self.observe(sid, inst, backend, t_open, "ws", pid=pid_open, via="ws-open")
                    self.conn_ids += 1
                    conn_id = self.conn_ids
                    self.live[sid] = {"backend": backend, "instance": inst, "pid": pid_open, "since": t_open,
                                      "id": conn_id}
                elif backend != conn_backend:
                    self.violate("b_no_session_lost", kind="ws", what="echo from another backend on the same "
                                 "connection", client=n, instance=inst, key=key, first=conn_backend, now=backend)
                await asyncio.sleep(max(0.0, 1.0 - el))
            if why is None:
                why = "end"
            k[f"closed_{why}"] += 1
            if conn_backend is not None:
                self.live.pop(sid, None)
                self.note_history(sid, self.now(), via="closed", why=why, instance=inst, backend=conn_backend)
            if why in ("voluntary", "end"):
                try:
                    w.write(ws_frame(0x8, (1000).to_bytes(2, "big")))
                    await w.drain()
                    await asyncio.wait_for(ws_read_message(r, w), 1.0)
                except Exception:
                    pass
            try:
                w.close()
            except Exception:
                pass

    # -------------------------------------------------------------- TCP device clients
    async def tcp_client(self, n):
        rng = random.Random(self.a.seed * 3000 + n)
        await asyncio.sleep(rng.uniform(0, 3))
        k = self.kinds["tcp"]
        dev = f"dev{n:03d}"
        sid = ("dev", dev)
        turn = n % 2
        seq = 0
        opened = 0
        while not self.stopping:
            inst = "AB"[turn]
            turn ^= 1
            t_open = self.now()
            pid_open = self.tethers[inst]["pid"]
            w = None
            try:
                async def open_():
                    r, w = await asyncio.open_connection("127.0.0.1", self.tethers[inst]["dev"])
                    return r, w
                r, w = await asyncio.wait_for(open_(), REQUEST_HARD)
                hello = f"HELLO device={dev}\n"
                w.write(hello.encode())
                await w.drain()
                line = await asyncio.wait_for(r.readline(), max(0.1, REQUEST_HARD - (self.now() - t_open)))
                el = self.now() - t_open
                if not line:
                    raise asyncio.IncompleteReadError(b"", None)
                backend, _, echoed = line.decode(errors="replace").rstrip("\n").partition(": ")
                if echoed != hello.rstrip("\n"):
                    raise ValueError(f"bad hello echo {line[:80]!r}")
                if el > REQUEST_BOUND:
                    self.slow("tcp", "open", el, REQUEST_BOUND, client=n, instance=inst, key=dev)
                self.lat["tcp_open"].append(el)
            except Exception as e:
                el = self.now() - t_open
                k["failed"] += 1
                k[f"open_failed_{error_kind(e)}"] += 1
                if el > REQUEST_BOUND:
                    self.slow("tcp", "open", el, REQUEST_BOUND, client=n, instance=inst, key=dev, error=error_kind(e))
                if w:
                    w.close()
                await asyncio.sleep(0.5)
                continue
            opened += 1
            if opened > 1:
                k["reconnects"] += 1
            self.register(sid, "tcp", n)
            self.observe(sid, inst, backend, t_open, "tcp", pid=pid_open, via="tcp-open")
            conn_backend = backend
            self.conn_ids += 1
            conn_id = self.conn_ids
            self.live[sid] = {"backend": backend, "instance": inst, "pid": pid_open, "since": t_open, "id": conn_id}
            voluntary_at = self.now() + rng.uniform(20, 30)
            why = None
            await asyncio.sleep(1.0)
            while not self.stopping:
                if self.now() >= voluntary_at:
                    why = "voluntary"
                    break
                seq += 1
                msg = f"ping {seq}"
                t_send = self.now()
                try:
                    w.write(f"{msg}\n".encode())
                    await w.drain()
                    line = await asyncio.wait_for(r.readline(), ECHO_HARD)
                    if not line:
                        raise asyncio.IncompleteReadError(b"", None)
                except Exception as e:
                    el = self.now() - t_send
                    why = error_kind(e)
                    if el > ECHO_BOUND:
                        self.slow("tcp", "echo", el, ECHO_BOUND, client=n, instance=inst, key=dev,
                                  backend=conn_backend, error=why)
                    k["lost_echo"] += 1
                    break
                el = self.now() - t_send
                backend, _, echoed = line.decode(errors="replace").rstrip("\n").partition(": ")
                if echoed != msg or backend != conn_backend:
                    self.violate("b_no_session_lost", kind="tcp", what="wrong echo", client=n, instance=inst,
                                 key=dev, sent=msg, got=line[:100].decode(errors="replace"), backend=conn_backend)
                    why = "wrong_echo"
                    break
                self.lat["tcp_echo"].append(el)
                k["echoes"] += 1
                if el > ECHO_BOUND:
                    self.slow("tcp", "echo", el, ECHO_BOUND, client=n, instance=inst, key=dev, backend=backend)
                await asyncio.sleep(max(0.0, 1.0 - el))
            if why is None:
                why = "end"
            k[f"closed_{why}"] += 1
            if conn_backend is not None:
                self.live.pop(sid, None)
                self.note_history(sid, self.now(), via="closed", why=why, instance=inst, backend=conn_backend)
            try:
                w.close()
            except Exception:
                pass
