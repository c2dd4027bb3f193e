#!/usr/bin/env python3
"""benches/load/scenarios.py: the load harness's extra scenarios (see README.md).

  SCENARIO=redis  tether with the Redis store vs the embedded store (issue 4):
                  (a) cached sticky hits (wrk replays one TETHER cookie),
                  (b) new-session-heavy (every request a fresh X-Device-Id, newkey.lua).
  SCENARIO=l4     tether `protocol: tcp` (key source_ip) vs HAProxy `mode tcp`
                  (`balance source`), and tether `https` vs HAProxy `bind ... ssl` (issue 5):
                  (a) bulk MB/s through one connection, (b) new connections/s,
                  (c) TLS handshakes/s (same ECDSA P-256 cert), (d) RSS per idle connection.

Method of shared/benchmarking.md: one worker per proxy, the proxy alone on PROXY_CPU
(taskset), load generators and backends on LOAD_CPU, contenders interleaved per round,
medians (min-max). Every process is started here, kept by pid and stopped by pid.
Run through redis.sh / l4.sh, or `SCENARIO=... python3 scenarios.py`.

Environment: ROUNDS=3 DURATION=5 CONNS=64 PROXY_CPU=0 LOAD_CPU=1 TETHER_BIN
(default target/release/tether), TETHER_LOG=warn, KEEP_TMP=1, and for l4:
BULK_MB=1024 (bytes pushed per bulk run), IDLE_CONNS=4000, RATE_CONNS=16 (wrk
connections for the connection-rate run), SKIP=bulk,rate,tls,idle (comma list;
for redis: SKIP=sticky or SKIP=newkey).
"""
import asyncio
import atexit
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
ENV = os.environ
ROUNDS = int(ENV.get("ROUNDS", 3))
DURATION = int(ENV.get("DURATION", 5))
CONNS = int(ENV.get("CONNS", 64))
PROXY_CPU = ENV.get("PROXY_CPU", "0")
LOAD_CPU = ENV.get("LOAD_CPU", "1")
TETHER_BIN = ENV.get("TETHER_BIN", os.path.join(REPO, "target/release/tether"))
TETHER_LOG = ENV.get("TETHER_LOG", "warn")
KEEP_TMP = ENV.get("KEEP_TMP", "0") == "1"
BULK_MB = int(ENV.get("BULK_MB", 1024))
IDLE_CONNS = int(ENV.get("IDLE_CONNS", 4000))
RATE_CONNS = int(ENV.get("RATE_CONNS", 16))
SKIP = set(filter(None, ENV.get("SKIP", "").split(",")))
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- helpers (driver)
STARTED = []  # Popen objects we started; stopped by pid at exit
TMP = None


def cleanup():
    for p in STARTED:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 5
    for p in STARTED:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    if TMP and not KEEP_TMP:
        shutil.rmtree(TMP, ignore_errors=True)
    elif TMP:
        print(f"configs and logs kept in {TMP}", file=sys.stderr)


def die(msg):
    print(f"scenarios.py: {msg}", file=sys.stderr)
    sys.exit(1)


USED = set()


def free_port():
    lo = 10000
    hi = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]) - 1
    import random
    for _ in range(500):
        p = random.randint(lo, hi)
        if p in USED:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        USED.add(p)
        return p
    die("no free port")


def start(name, argv, cpu, env=None):
    log = open(os.path.join(TMP, f"{name}.log"), "w")
    p = subprocess.Popen(["taskset", "-c", cpu] + argv, stdout=log, stderr=subprocess.STDOUT,
                         env=env, cwd=TMP)
    STARTED.append(p)
    p.name = name
    return p


def wait_port(p, port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.poll() is not None:
            die(f"{p.name} exited at start-up; log:\n" + open(os.path.join(TMP, f"{p.name}.log")).read()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    die(f"{p.name} did not listen on {port} within {timeout}s")


def wait_http_ok(p, port, timeout=30, headers=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.poll() is not None:
            die(f"{p.name} exited at start-up; log:\n" + open(os.path.join(TMP, f"{p.name}.log")).read()[-2000:])
        try:
            r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", headers=headers or {}), timeout=2)
            if r.read() == b"ok":
                return r
        except OSError:
            pass
        time.sleep(0.1)
    die(f"{p.name} did not answer 200 ok on {port}")


def tree(pid):
    """pid and all its descendants."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            parent[int(d)] = int(s.rsplit(") ", 1)[1].split()[1])
    out = {pid}
    changed = True
    while changed:
        changed = False
        for c, pp in parent.items():
            if pp in out and c not in out:
                out.add(c)
                changed = True
    return sorted(out)


def cpu_ticks(pids):
    t = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        t += int(f[11]) + int(f[12])
    return t


def rss_kb(pids):
    t = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    t += int(line.split()[1])
        except OSError:
            pass
    return t


def cpu_busy():
    """(busy, total) ticks of PROXY_CPU and LOAD_CPU."""
    out = {}
    for line in open("/proc/stat"):
        f = line.split()
        if f[0] in (f"cpu{PROXY_CPU}", f"cpu{LOAD_CPU}"):
            v = list(map(int, f[1:9]))
            out[f[0]] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7], sum(v))
    return out[f"cpu{PROXY_CPU}"], out[f"cpu{LOAD_CPU}"]


class Meter:
    """CPU of a process tree and both cores over a block."""

    def __init__(self, pids):
        self.pids = pids

    def __enter__(self):
        self.t0 = cpu_ticks(self.pids)
        self.s0 = cpu_busy()
        self.w0 = time.time()
        return self

    def __exit__(self, *a):
        self.wall = time.time() - self.w0
        self.cpu_s = (cpu_ticks(self.pids) - self.t0) / CLK_TCK
        s1 = cpu_busy()
        self.busy = [100.0 * (s1[i][0] - self.s0[i][0]) / max(1, s1[i][1] - self.s0[i][1]) for i in (0, 1)]
        # busy time of the proxy core that was not the proxy's (someone else's load)
        tot = max(1, s1[0][1] - self.s0[0][1])
        self.other = max(0.0, self.busy[0] - 100.0 * (cpu_ticks(self.pids) - self.t0) / tot) if self.pids else 0.0


def wrk(port, seconds, conns, headers=(), script=None):
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
            "-s", script or os.path.join(HERE, "report.lua")]
    for h in headers:
        argv += ["-H", h]
    argv.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    with open(os.path.join(TMP, "wrk.txt"), "a") as f:
        f.write(out)
    m = re.search(r"^WRKRESULT (.*)$", out, re.M)
    if not m:
        die(f"no WRKRESULT from wrk on {port}: {out}")
    r = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


RESULTS = []  # (test, contender, round, metric dict)


def record(test, who, rnd, **m):
    RESULTS.append((test, who, rnd, m))
    extra = "".join(
        f"  {k} {v:.2f}" if isinstance(v, float) else f"  {k} {v}" for k, v in m.items())
    print(f"round {rnd}/{ROUNDS}  {test:<8} {who:<9}{extra}", flush=True)


def med(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def summary(tests, contenders, metrics, pairs):
    print("\nmedians (min-max)")
    meds = {}
    for test in tests:
        for who in contenders:
            rows = [m for (t, w, _, m) in RESULTS if t == test and w == who]
            if not rows:
                continue
            cells = []
            for key in metrics:
                md, lo, hi = med([r.get(key) for r in rows])
                if md is None:
                    continue
                meds[test, who, key] = md
                cells.append(f"{key} {md:.2f} ({lo:.2f}-{hi:.2f})" if len(rows) > 1 else f"{key} {md:.2f}")
            print(f"  {test:<8} {who:<9} " + "  ".join(cells))
    print("\nratios of medians")
    for a, b in pairs:
        for test in tests:
            cells = []
            for key in metrics:
                if (test, a, key) in meds and (test, b, key) in meds and meds[test, b, key]:
                    cells.append(f"{key} {meds[test, a, key] / meds[test, b, key]:.3f}")
            if cells:
                print(f"  {test:<8} {a}/{b}: " + "  ".join(cells))
    busy = [(t, w, r) for (t, w, r, m) in RESULTS if m.get("other%", 0) > 10]
    if busy:
        print(f"note: BUSY BOX in {len(busy)} run(s) (over 10% of CPU{PROXY_CPU} was not the proxy): {busy}")


def nginx_backend(port):
    os.makedirs(os.path.join(TMP, "backend-tmp"), exist_ok=True)
    tmpl = open(os.path.join(HERE, "nginx-backend.conf.tmpl")).read()
    cfg = tmpl.replace("@DIR@", TMP).replace("@BACKEND_PORT@", str(port))
    path = os.path.join(TMP, "backend.conf")
    open(path, "w").write(cfg)
    p = start("backend", ["nginx", "-e", os.path.join(TMP, "backend-error.log"), "-p", TMP, "-c", path], LOAD_CPU)
    wait_http_ok(p, port, 10)
    return p


def tether(name, cfg):
    path = os.path.join(TMP, f"{name}.yaml")
    open(path, "w").write(cfg)
    chk = subprocess.run([TETHER_BIN, "check", "-c", path], capture_output=True, text=True)
    if chk.returncode != 0:
        die(f"tether check {path} failed: {chk.stdout}{chk.stderr}")
    env = dict(os.environ, RUST_LOG=TETHER_LOG)
    return start(name, [TETHER_BIN, "-c", path], PROXY_CPU, env)


# ---------------------------------------------------------------- scenario: redis
TETHER_REDIS = """\
admin: {{ listen: "127.0.0.1:{admin}" }}
server: {{ threads: 1, shutdown_grace: 1s }}
store: {store}
pools:
  app:
    backends:
      - {{ id: b1, addr: "127.0.0.1:{backend}" }}
listeners:
  - name: web
    bind: "127.0.0.1:{web}"
    protocol: http
    pool: app
    affinity:
      key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }}
  - name: dev
    bind: "127.0.0.1:{dev}"
    protocol: http
    pool: app
    affinity:
      key: {{ header: X-Device-Id }}
      fallback: random
"""


def scenario_redis():
    backend = free_port()
    redis_port = free_port()
    nginx_backend(backend)
    rp = start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--protected-mode", "no"], LOAD_CPU)
    wait_port(rp, redis_port, 10)
    stores = {
        "embedded": "{ kind: embedded }",
        "redis": f'{{ kind: redis, redis: {{ url: "redis://127.0.0.1:{redis_port}/0" }} }}',
    }
    procs, ports, cookie, pids = {}, {}, {}, {}
    for who, store in stores.items():
        ports[who] = (free_port(), free_port())
        procs[who] = tether(f"tether-{who}", TETHER_REDIS.format(admin=free_port(), store=store, backend=backend,
                                                                 web=ports[who][0], dev=ports[who][1]))
    for who in stores:
        r = wait_http_ok(procs[who], ports[who][0], 30)
        c = [v for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("TETHER=")]
        if not c:
            die(f"tether-{who} set no TETHER cookie")
        cookie[who] = c[0].split(";")[0]
        pids[who] = tree(procs[who].pid)
    redis_pids = tree(rp.pid)
    print(f"redis vs embedded: {ROUNDS} round(s) x {DURATION}s, wrk -t1 -c{CONNS}; tether on CPU{PROXY_CPU},"
          f" wrk + nginx backend + redis-server on CPU{LOAD_CPU}", flush=True)
    newkey = os.path.join(HERE, "newkey.lua")
    for who in stores:  # warm-up
        wrk(ports[who][0], 1, CONNS, [f"Cookie: {cookie[who]}"])
        if "newkey" not in SKIP:
            wrk(ports[who][1], 1, CONNS, script=newkey)
    for rnd in range(1, ROUNDS + 1):
        for test in [t for t in ("sticky", "newkey") if t not in SKIP]:
            for who in stores:
                with Meter(pids[who]) as m:
                    r0 = cpu_ticks(redis_pids)
                    if test == "sticky":
                        r = wrk(ports[who][0], DURATION, CONNS, [f"Cookie: {cookie[who]}"])
                    else:
                        r = wrk(ports[who][1], DURATION, CONNS, script=newkey)
                    rcpu = (cpu_ticks(redis_pids) - r0) / CLK_TCK
                n = max(1, r["requests"])
                record(test, who, rnd, rps=r["rps"], p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000,
                       us_req=m.cpu_s * 1e6 / n, redis_us_req=(rcpu * 1e6 / n if who == "redis" else None),
                       **{"cpu0%": m.busy[0], "cpu1%": m.busy[1], "other%": m.other,
                          "errors": r["errors"] + r["bad_status"]})
    summary(["sticky", "newkey"], list(stores), ["rps", "p50_ms", "p99_ms", "us_req", "redis_us_req", "cpu0%", "cpu1%"],
            [("redis", "embedded")])
    # RSS of each tether and the number of keys redis holds, for the record
    try:
        s = socket.create_connection(("127.0.0.1", redis_port))
        s.sendall(b"DBSIZE\r\n")
        print(f"redis DBSIZE after the runs: {s.recv(100).decode().strip()}")
    except OSError:
        pass
    for who in stores:
        print(f"tether-{who} RSS after the runs: {rss_kb(pids[who])} KB")


# ---------------------------------------------------------------- scenario: l4
def sink_server(port):
    """Backend for bulk runs: reads an 8-byte length, then that many bytes, answers b'k'."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(128)

    def serve(c):
        buf = bytearray(1 << 20)
        hdr = b""
        while len(hdr) < 8:
            d = c.recv(8 - len(hdr))
            if not d:
                return
            hdr += d
        left = int.from_bytes(hdr, "big")
        while left > 0:
            n = c.recv_into(buf, min(len(buf), left))
            if not n:
                return
            left -= n
        c.sendall(b"k")
        c.close()

    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def hold_server(port):
    """Backend for idle runs: echoes whatever arrives, holds every connection open."""
    async def handle(r, w):
        while True:
            d = await r.read(4096)
            if not d:
                break
            w.write(d)
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        await srv.serve_forever()

    asyncio.run(main())


def bulk_client(port, nbytes):
    s = socket.create_connection(("127.0.0.1", port))
    chunk = b"\0" * (1 << 20)
    t0 = time.time()
    s.sendall(nbytes.to_bytes(8, "big"))
    left = nbytes
    mv = memoryview(chunk)
    while left > 0:
        n = min(left, len(chunk))
        s.sendall(mv[:n])
        left -= n
    if s.recv(1) != b"k":
        print("FAIL")
        return
    print(f"{time.time() - t0:.6f}")


def idle_client(port, n):
    """Open n connections, one echo each, print 'ready', hold them until stdin closes."""
    async def main():
        sem = asyncio.Semaphore(100)
        conns = []

        async def one():
            async with sem:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"x")
                await w.drain()
                if await r.readexactly(1) != b"x":
                    raise RuntimeError("bad echo")
                conns.append((r, w))

        res = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        bad = [e for e in res if isinstance(e, BaseException)]
        print(f"ready {len(conns)} failed {len(bad)} {bad[:1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for _, w in conns:
            w.close()

    asyncio.run(main())


TETHER_L4 = """\
admin: {{ listen: "127.0.0.1:{admin}" }}
server: {{ threads: 1, shutdown_grace: 1s }}
store: {{ kind: embedded }}
pools:
  web:  {{ backends: [ {{ id: w1, addr: "127.0.0.1:{backend}" }} ] }}
  sink: {{ backends: [ {{ id: s1, addr: "127.0.0.1:{sink}" }} ] }}
  hold: {{ backends: [ {{ id: h1, addr: "127.0.0.1:{hold}" }} ] }}
listeners:
  - {{ name: rate, bind: "127.0.0.1:{rate_p}", protocol: tcp, pool: web, affinity: {{ key: source_ip }} }}
  - {{ name: bulk, bind: "127.0.0.1:{bulk_p}", protocol: tcp, pool: sink, affinity: {{ key: source_ip }} }}
  - {{ name: idle, bind: "127.0.0.1:{idle_p}", protocol: tcp, pool: hold, affinity: {{ key: source_ip }} }}
"""
TETHER_TLS = """\
  - name: tls
    bind: "127.0.0.1:{tls_p}"
    protocol: https
    pool: web
    tls: {{ certs: [ {{ name: site, cert: "{dir}/site.crt", key: "{dir}/site.key" }} ] }}
    affinity: {{ key: source_ip }}
"""

HAPROXY_L4 = """\
global
  nbthread 1
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend rate
  bind 127.0.0.1:{rate_p}
  default_backend web
frontend bulk
  bind 127.0.0.1:{bulk_p}
  default_backend sink
frontend idle
  bind 127.0.0.1:{idle_p}
  default_backend hold
frontend tls
  mode http
  bind 127.0.0.1:{tls_p} ssl crt {dir}/site.pem
  default_backend webhttp
backend web
  balance source
  server w1 127.0.0.1:{backend}
backend sink
  balance source
  server s1 127.0.0.1:{sink}
backend hold
  balance source
  server h1 127.0.0.1:{hold}
backend webhttp
  mode http
  balance source
  server w1 127.0.0.1:{backend}
"""


def scenario_l4():
    me = os.path.abspath(__file__)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", f"{TMP}/site.key", "-out", f"{TMP}/site.crt", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    open(f"{TMP}/site.pem", "w").write(open(f"{TMP}/site.crt").read() + open(f"{TMP}/site.key").read())
    backend, sink, hold = free_port(), free_port(), free_port()
    nginx_backend(backend)
    sp = start("sink", [sys.executable, me, "_sink", str(sink)], LOAD_CPU)
    hp = start("hold", [sys.executable, me, "_hold", str(hold)], LOAD_CPU)
    wait_port(sp, sink, 10)
    wait_port(hp, hold, 10)
    ports = {}
    for who in ("tether", "haproxy"):
        ports[who] = dict(rate_p=free_port(), bulk_p=free_port(), idle_p=free_port(), tls_p=free_port())
    ports["direct"] = dict(rate_p=backend, bulk_p=sink, idle_p=hold, tls_p=None)
    t = tether("tether", (TETHER_L4 + ("" if "tls" in SKIP else TETHER_TLS)).format(admin=free_port(), backend=backend, sink=sink, hold=hold, dir=TMP,
                                          **ports["tether"]))
    hcfg = os.path.join(TMP, "haproxy.cfg")
    open(hcfg, "w").write(HAPROXY_L4.format(backend=backend, sink=sink, hold=hold, dir=TMP, **ports["haproxy"]))
    h = start("haproxy", ["haproxy", "-f", hcfg, "-db"], PROXY_CPU)
    procs = {"tether": t, "haproxy": h}
    for who, p in procs.items():
        wait_port(p, ports[who]["rate_p"], 30)
        if "tls" not in SKIP:
            wait_port(p, ports[who]["tls_p"], 30)
    pids = {who: tree(p.pid) for who, p in procs.items()}
    pids["direct"] = []
    who_all = ["direct", "tether", "haproxy"]
    print(f"l4: {ROUNDS} round(s); bulk {BULK_MB} MB, conn rate wrk -c{RATE_CONNS} 'Connection: close' {DURATION}s,"
          f" TLS openssl s_time -new {DURATION}s; proxy on CPU{PROXY_CPU}, clients + backends on CPU{LOAD_CPU}",
          flush=True)
    nbytes = BULK_MB << 20
    # warm-up
    for who in who_all:
        wrk(ports[who]["rate_p"], 1, RATE_CONNS, ["Connection: close"])
    for rnd in range(1, ROUNDS + 1):
        if "bulk" not in SKIP:
            for who in who_all:
                with Meter(pids[who]) as m:
                    out = subprocess.run(["taskset", "-c", LOAD_CPU, sys.executable, me, "_bulk",
                                          str(ports[who]["bulk_p"]), str(nbytes)], capture_output=True, text=True)
                try:
                    secs = float(out.stdout.strip())
                except ValueError:
                    die(f"bulk client failed against {who}: {out.stdout}{out.stderr}")
                record("bulk", who, rnd, MB_s=BULK_MB / secs, us_MB=(m.cpu_s * 1e6 / BULK_MB if pids[who] else None),
                       **{"cpu0%": m.busy[0], "cpu1%": m.busy[1], "other%": m.other})
        if "rate" not in SKIP:
            for who in who_all:
                with Meter(pids[who]) as m:
                    r = wrk(ports[who]["rate_p"], DURATION, RATE_CONNS, ["Connection: close"])
                n = max(1, r["requests"])
                record("rate", who, rnd, conn_s=r["rps"], p99_ms=r["p99_us"] / 1000,
                       us_conn=(m.cpu_s * 1e6 / n if pids[who] else None),
                       **{"cpu0%": m.busy[0], "cpu1%": m.busy[1], "other%": m.other,
                          "errors": r["errors"] + r["bad_status"]})
        if "tls" not in SKIP:
            for who in ("tether", "haproxy"):
                with Meter(pids[who]) as m:
                    out = subprocess.run(["taskset", "-c", LOAD_CPU, "openssl", "s_time", "-connect",
                                          f"127.0.0.1:{ports[who]['tls_p']}", "-new", "-time", str(DURATION)],
                                         capture_output=True, text=True)
                mm = re.search(r"(\d+) connections in ([\d.]+)s", out.stdout)
                if not mm:
                    die(f"s_time failed against {who}: {out.stdout}{out.stderr}")
                n = int(mm.group(1))
                record("tls", who, rnd, hs_s=n / m.wall, us_hs=m.cpu_s * 1e6 / max(1, n),
                       **{"cpu0%": m.busy[0], "cpu1%": m.busy[1], "other%": m.other})
    if "idle" not in SKIP:
        for who in ("tether", "haproxy"):
            before = rss_kb(pids[who])
            c = subprocess.Popen(["taskset", "-c", LOAD_CPU, sys.executable, me, "_idle", str(ports[who]["idle_p"]),
                                  str(IDLE_CONNS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            STARTED.append(c)
            line = c.stdout.readline().strip()
            time.sleep(1)
            after = rss_kb(pids[who])
            c.stdin.close()
            c.wait(30)
            ok = int(line.split()[1]) if line.startswith("ready") else 0
            record("idle", who, 1, conns=ok, rss_before_KB=before, rss_after_KB=after,
                   KB_conn=(after - before) / max(1, ok))
            if ok != IDLE_CONNS:
                print(f"note: {who}: {line}")
            time.sleep(1)
    summary(["bulk", "rate", "tls", "idle"], who_all,
            ["MB_s", "us_MB", "conn_s", "p99_ms", "us_conn", "hs_s", "us_hs", "KB_conn", "cpu0%", "cpu1%"],
            [("tether", "haproxy"), ("tether", "direct")])


def main():
    global TMP
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):  # helper roles, started by the driver
        role, port = sys.argv[1], int(sys.argv[2])
        {"_sink": lambda: sink_server(port), "_hold": lambda: hold_server(port),
         "_bulk": lambda: bulk_client(port, int(sys.argv[3])),
         "_idle": lambda: idle_client(port, int(sys.argv[3]))}[role]()
        return
    scenario = ENV.get("SCENARIO") or (sys.argv[1] if len(sys.argv) > 1 else "")
    if scenario not in ("redis", "l4"):
        die("SCENARIO must be redis or l4")
    for tool in ["wrk", "taskset", "nginx"] + (["redis-server"] if scenario == "redis" else ["haproxy", "openssl"]):
        if not shutil.which(tool):
            die(f"missing {tool} (apt-get install -y {'redis-server' if tool == 'redis-server' else tool})")
    if not os.access(TETHER_BIN, os.X_OK):
        die(f"no tether binary at {TETHER_BIN}: cargo build --release --bin tether")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    TMP = tempfile.mkdtemp(prefix=f"tether-{scenario}.")
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    {"redis": scenario_redis, "l4": scenario_l4}[scenario]()


if __name__ == "__main__":
    main()
