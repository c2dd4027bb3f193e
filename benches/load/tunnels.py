#!/usr/bin/env python3
"""benches/load/tunnels.py: what long-lived connections cost (issue 12), tether beside
HAProxy 2.6 in the same run (see README.md, "Tunnels").

  idle   IDLE_CONNS (3000) connections held through each proxy, one exchange each
         (WebSocket: the upgrade and one small frame echoed; TCP: one line echoed), then
         idle: RSS per connection = (RSS after - RSS before) / connections. Each
         contender is a fresh process per run; ROUNDS runs, medians (min-max).
  scale  Up to SCALE_CONNS (9000) connections, added in steps (SCALE_STEPS,
         default 1000,3000,5000,7000,9000); each new connection echoes 64 KiB
         (ECHO_KB) and then everything idles IDLE_S (10) seconds before the
         sample: the proxy's RSS, and the kernel's TCP memory (/proc/net/sockstat
         `mem`, pages, for the whole box: clients, proxy and backends). Reports the
         RSS slope (least squares, KB per connection) over the steps.

Backends (on LOAD_CPU): a TCP echo that holds its connections, and a WebSocket
backend that answers the upgrade and then echoes raw bytes (neither proxy reads
frames after the 101). Clients are asyncio processes on LOAD_CPU. The proxy runs
alone on PROXY_CPU with one worker (tether `server.threads: 1`, HAProxy `nbthread
1`, `maxconn` as high as the open-files limit allows: 9,900 here, `timeout tunnel 1h`). Every process is started here, kept by
pid and stopped by pid on exit.

Environment: ROUNDS=3 IDLE_CONNS=3000 SCALE_CONNS SCALE_STEPS ECHO_KB=64 IDLE_S=10
PROXY_CPU=0 LOAD_CPU=1 TETHER_BIN (default target/release/tether) TETHER_LOG=warn
KEEP_TMP=1 SKIP=idle,scale KINDS=ws,tcp
"""
import asyncio
import atexit
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenarios as S  # noqa: E402  (the shared process/port/metering helpers)

ENV = os.environ
IDLE_CONNS = int(ENV.get("IDLE_CONNS", 3000))
SCALE_STEPS = [int(x) for x in ENV.get("SCALE_STEPS", "1000,3000,5000,7000,9000").split(",")]
SCALE_CONNS = int(ENV.get("SCALE_CONNS", SCALE_STEPS[-1]))
SCALE_STEPS = [s for s in SCALE_STEPS if s <= SCALE_CONNS]
ECHO_KB = int(ENV.get("ECHO_KB", 64))
IDLE_S = float(ENV.get("IDLE_S", 10))
KINDS = [k for k in ENV.get("KINDS", "ws,tcp").split(",") if k]
ME = os.path.abspath(__file__)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# ---------------------------------------------------------------- backends (helper roles)


def ws_backend(port):
    """Answers any upgrade with a correct 101, then echoes raw bytes; holds connections."""
    async def handle(r, w):
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            w.close()
            return
        key = b""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        if not key:  # a health probe or junk
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await w.drain()
            w.close()
            return
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while True:
            d = await r.read(65536)
            if not d:
                break
            w.write(d)
            await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=8192, limit=65536)
        await srv.serve_forever()

    asyncio.run(main())


def frame(payload):
    """A masked binary frame (the mask is zero: the bytes stay as they are)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x82, 0x80 | n])
    elif n < 65536:
        head = bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def open_one(kind, port, echo_bytes):
    r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    if kind == "ws":
        w.write(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(head.split(b"\r\n")[0].decode())
        out = frame(b"x" * echo_bytes)
    else:
        out = b"x" * (echo_bytes - 1) + b"\n"
    w.write(out)
    await w.drain()
    got = await r.readexactly(len(out))
    if got != out:
        raise RuntimeError("bad echo")
    return r, w


def client(kind, port, counts, echo_bytes):
    """Open connections in the steps of `counts` (cumulative), one exchange of
    `echo_bytes` each; after each step print 'ready N failed M' and wait for a line
    on stdin; hold everything until stdin closes."""
    async def main():
        sem = asyncio.Semaphore(200)
        conns, failed = [], []

        async def one():
            async with sem:
                try:
                    conns.append(await open_one(kind, port, echo_bytes))
                except Exception as e:  # noqa: BLE001 (counted and shown)
                    failed.append(repr(e))

        loop = asyncio.get_running_loop()
        for c in counts:
            await asyncio.gather(*(one() for _ in range(c - len(conns) - len(failed))))
            print(f"ready {len(conns)} failed {len(failed)} {failed[:1]}", flush=True)
            if not await loop.run_in_executor(None, sys.stdin.readline):
                break
        for _, w in conns:
            w.close()

    asyncio.run(main())


# ---------------------------------------------------------------- proxies

TETHER = """\
admin: {{ listen: "127.0.0.1:{admin}" }}
server: {{ threads: 1, shutdown_grace: 1s, max_connections: 50000 }}
store: {{ kind: embedded }}
pools:
  hold: {{ backends: [ {{ id: h1, addr: "127.0.0.1:{hold}" }} ] }}
  ws: {{ backends: [ {{ id: w1, addr: "127.0.0.1:{ws}" }} ] }}
listeners:
  - {{ name: tcp, bind: "127.0.0.1:{tcp_p}", protocol: tcp, pool: hold, max_connections: 20000, backlog: 16384,
      timeouts: {{ idle: 1h }}, affinity: {{ key: source_ip }} }}
  - {{ name: ws, bind: "127.0.0.1:{ws_p}", protocol: http, pool: ws, max_connections: 20000, backlog: 16384,
      timeouts: {{ idle: 1h }}, affinity: {{ key: source_ip }} }}
"""

HAPROXY = """\
global
  nbthread 1
  maxconn {maxconn}
defaults
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend tcp
  mode tcp
  bind 127.0.0.1:{tcp_p}
  default_backend hold
frontend ws
  mode http
  bind 127.0.0.1:{ws_p}
  default_backend ws
backend hold
  mode tcp
  server h1 127.0.0.1:{hold}
backend ws
  mode http
  server w1 127.0.0.1:{ws}
"""


def start_proxy(who, ports, tag):
    if who == "tether":
        cfg = TETHER.format(**ports)
        p = S.tether(f"tether-{tag}", cfg)
    else:
        path = os.path.join(S.TMP, f"haproxy-{tag}.cfg")
        # HAProxy refuses a maxconn it cannot back with two fds each.
        import resource
        maxconn = (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 200) // 2
        open(path, "w").write(HAPROXY.format(maxconn=maxconn, **ports))
        p = S.start(f"haproxy-{tag}", ["haproxy", "-f", path, "-db"], S.PROXY_CPU)
    S.wait_port(p, ports["tcp_p"], 30)
    S.wait_port(p, ports["ws_p"], 30)
    time.sleep(0.5)
    return p


def stop(p):
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def sockstat_mem_pages():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            f = line.split()
            return int(f[f.index("mem") + 1])
    return 0


def run_client(kind, port, counts, echo_bytes):
    c = subprocess.Popen(["taskset", "-c", S.LOAD_CPU, sys.executable, ME, "_client", kind, str(port),
                          ",".join(map(str, counts)), str(echo_bytes)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    S.STARTED.append(c)
    return c


def read_ready(c):
    line = c.stdout.readline().strip()
    if not line.startswith("ready"):
        S.die(f"client broke: {line!r}")
    f = line.split()
    return int(f[1]), int(f[3]), line


def fresh_ports(hold, ws):
    return dict(admin=S.free_port(), tcp_p=S.free_port(), ws_p=S.free_port(), hold=hold, ws=ws)


def scenario_idle(hold, ws):
    for rnd in range(1, S.ROUNDS + 1):
        for kind in KINDS:
            for who in ("tether", "haproxy"):
                ports = fresh_ports(hold, ws)
                p = start_proxy(who, ports, f"idle-{kind}-{rnd}")
                pids = S.tree(p.pid)
                before = S.rss_kb(pids)
                c = run_client(kind, ports[f"{kind}_p"], [IDLE_CONNS], 16)
                ok, bad, line = read_ready(c)
                time.sleep(2)
                after = S.rss_kb(pids)
                c.stdin.close()
                c.wait(60)
                stop(p)
                S.record(f"idle-{kind}", who, rnd, conns=ok, rss_before_KB=before, rss_after_KB=after,
                         KB_conn=(after - before) / max(1, ok))
                if bad:
                    print(f"note: {who} {kind}: {line}")


def slope(points):
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def scenario_scale(hold, ws):
    results = {}
    for kind in KINDS:
        for who in ("tether", "haproxy"):
            ports = fresh_ports(hold, ws)
            p = start_proxy(who, ports, f"scale-{kind}")
            pids = S.tree(p.pid)
            base_rss, base_mem = S.rss_kb(pids), sockstat_mem_pages()
            c = run_client(kind, ports[f"{kind}_p"], SCALE_STEPS, ECHO_KB * 1024)
            points, mems = [], []
            for step in SCALE_STEPS:
                ok, bad, line = read_ready(c)
                time.sleep(IDLE_S)
                rss, mem = S.rss_kb(pids), sockstat_mem_pages()
                points.append((ok, rss))
                mems.append((ok, mem))
                print(f"scale {kind:<3} {who:<8} {ok:>5} conns (failed {bad})  RSS {rss} KB  "
                      f"({(rss - base_rss) / max(1, ok):.2f} KB/conn)  sockstat mem {mem} pages", flush=True)
                c.stdin.write("\n")
                c.stdin.flush()
            c.stdin.close()
            c.wait(120)
            stop(p)
            results[(kind, who)] = dict(
                rss_slope_KB=slope(points), sockmem_slope_KB=slope([(x, y * 4) for x, y in mems]),
                points=points, base_rss_KB=base_rss, base_sockmem_pages=base_mem)
            time.sleep(2)
    print("\nscale: RSS and kernel TCP memory per connection (least-squares slope over the steps)")
    print(f"{'kind':<5}{'proxy':<9}{'RSS KB/conn':>12}{'sockstat KB/conn':>18}")
    for (kind, who), r in results.items():
        print(f"{kind:<5}{who:<9}{r['rss_slope_KB']:>12.2f}{r['sockmem_slope_KB']:>18.2f}")
    for kind in KINDS:
        t, h = results.get((kind, "tether")), results.get((kind, "haproxy"))
        if t and h and h["rss_slope_KB"]:
            print(f"{kind}: tether/haproxy RSS slope {t['rss_slope_KB'] / h['rss_slope_KB']:.2f}")
    print(json.dumps({f"{k}/{w}": {x: y for x, y in r.items() if x != "points"} for (k, w), r in results.items()}))


def main():
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        role = sys.argv[1]
        if role == "_client":
            kind, port, counts, echo = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
            client(kind, port, [int(x) for x in counts.split(",")], echo)
        elif role == "_ws":
            ws_backend(int(sys.argv[2]))
        elif role == "_hold":
            S.hold_server(int(sys.argv[2]))
        return
    if not os.access(S.TETHER_BIN, os.X_OK):
        S.die(f"no tether binary at {S.TETHER_BIN}: cargo build --release --bin tether")
    for tool in ("haproxy", "taskset"):
        if not S.shutil.which(tool):
            S.die(f"missing {tool} (apt-get install -y {tool})")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * SCALE_CONNS + 100:
        S.die(f"the open-files limit ({hard}) cannot hold {SCALE_CONNS} proxied connections")
    S.TMP = tempfile.mkdtemp(prefix="tether-tunnels.")
    atexit.register(S.cleanup)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    hold, ws = S.free_port(), S.free_port()
    hp = S.start("hold", [sys.executable, ME, "_hold", str(hold)], S.LOAD_CPU)
    wp = S.start("wsback", [sys.executable, ME, "_ws", str(ws)], S.LOAD_CPU)
    S.wait_port(hp, hold, 10)
    S.wait_port(wp, ws, 10)
    if "idle" not in S.SKIP:
        scenario_idle(hold, ws)
        S.summary([f"idle-{k}" for k in KINDS], ["tether", "haproxy"], ["KB_conn"], [("tether", "haproxy")])
    if "scale" not in S.SKIP:
        scenario_scale(hold, ws)


if __name__ == "__main__":
    main()
