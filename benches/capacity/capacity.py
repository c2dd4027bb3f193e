#!/usr/bin/env python3
"""benches/capacity/capacity.py: measures the slopes of docs/capacity.md on this box, checks
the model on a mixed point it was not fitted on, and prints the capacity table.

  python3 benches/capacity/capacity.py             # ~6 minutes on 2 cores
  OUT=slopes.json python3 benches/capacity/capacity.py

Each slope is measured on a fresh release tether (one worker, alone on PROXY_CPU; clients,
backends and redis-server on LOAD_CPU), from points at several sizes (least squares):
  connections  RSS, kernel memory (/proc/meminfo Slab + /proc/net/sockstat TCP mem) and file
               descriptors per idle proxied WebSocket and TCP connection (CONN_STEPS, one
               1 KiB echo each, then IDLE_S of quiet). The kernel figure is the whole box's
               (client, tether's two sockets, backend), halved: tether holds two of the four
               sockets of a proxied connection on loopback.
  sessions     tether RSS per stored session (embedded store, header key, a new key per
               request), bytes of affinity.db per session, and redis-server `used_memory`
               per session (and tether's cache RSS) with the Redis store (SESSION_STEPS).
  cpu          tether CPU per kept-alive sticky request (wrk -c64, cookie), per new TCP
               connection (wrk `Connection: close` through a tcp listener) and per TLS full
               handshake (`openssl s_time -new`), ROUNDS rounds, medians.
  reconnect    tether CPU per reconnect in a storm: `cargo bench --bench failover` with
               N=RECONNECT_N KILL=1 (each a GET with the cookie, a WebSocket and an echo).
Then the check (CHECK_WS WebSockets + CHECK_TCP TCP connections + CHECK_SESSIONS sessions
on one tether; and keep-alive requests with new connections at once): predicted vs
measured, each within 15 % or the script says MISSED and exits 1.

Environment: ROUNDS=3 DURATION=5 CONN_STEPS=1000,2500,4000 SESSION_STEPS=4 (x ~40k)
IDLE_S=3 RECONNECT_N=3000 CHECK_WS=3000 CHECK_TCP=2000 CHECK_SESSIONS=60000 SKIP=reconnect
PROXY_CPU=0 LOAD_CPU=1 TETHER_BIN KEEP_TMP=1 OUT (slopes JSON, default capacity-slopes.json
in the current directory).
"""
import atexit
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from statistics import median

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "load"))
sys.path.insert(0, HERE)
import scenarios as S  # noqa: E402  (process, port and CPU metering helpers)
import tunnels as T  # noqa: E402  (connection clients and backends)
import model  # noqa: E402

ENV = os.environ
CONN_STEPS = [int(x) for x in ENV.get("CONN_STEPS", "1000,2500,4000").split(",")]
SESSION_STEPS = int(ENV.get("SESSION_STEPS", 4))
IDLE_S = float(ENV.get("IDLE_S", 3))
RECONNECT_N = int(ENV.get("RECONNECT_N", 3000))
CHECK_WS = int(ENV.get("CHECK_WS", 3000))
CHECK_TCP = int(ENV.get("CHECK_TCP", 2000))
CHECK_SESSIONS = int(ENV.get("CHECK_SESSIONS", 60000))
OUT = ENV.get("OUT", "capacity-slopes.json")
ECHO = 1024
TOLERANCE = 0.15

CONFIG = """\
admin: {{ listen: "127.0.0.1:{admin}" }}
server: {{ threads: 1, shutdown_grace: 1s, max_connections: 50000 }}
store: {store}
pools:
  web:  {{ backends: [ {{ id: n1, addr: "127.0.0.1:{nginx}" }} ] }}
  hold: {{ backends: [ {{ id: h1, addr: "127.0.0.1:{hold}" }} ] }}
  ws:   {{ backends: [ {{ id: w1, addr: "127.0.0.1:{ws}" }} ] }}
listeners:
  - {{ name: web, bind: "127.0.0.1:{web_p}", protocol: http, pool: web,
      affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }} }}
  - {{ name: dev, bind: "127.0.0.1:{dev_p}", protocol: http, pool: web,
      affinity: {{ key: {{ header: X-Device-Id }}, fallback: random }} }}
  - {{ name: rate, bind: "127.0.0.1:{rate_p}", protocol: tcp, pool: web, affinity: {{ key: source_ip }} }}
  - {{ name: tls, bind: "127.0.0.1:{tls_p}", protocol: https, pool: web, affinity: {{ key: source_ip }},
      tls: {{ certs: [ {{ name: site, cert: "{dir}/site.crt", key: "{dir}/site.key" }} ] }} }}
  - {{ name: tcp, bind: "127.0.0.1:{tcp_p}", protocol: tcp, pool: hold, max_connections: 20000, backlog: 16384,
      timeouts: {{ idle: 1h }}, affinity: {{ key: source_ip }} }}
  - {{ name: ws, bind: "127.0.0.1:{ws_p}", protocol: http, pool: ws, max_connections: 20000, backlog: 16384,
      timeouts: {{ idle: 1h }}, affinity: {{ key: source_ip }} }}
"""


class Box:
    """The backends (started once) and a way to start a fresh tether on them."""

    def __init__(self):
        self.nginx, self.hold, self.ws = S.free_port(), S.free_port(), S.free_port()
        S.nginx_backend(self.nginx)
        for role, port in (("_hold", self.hold), ("_ws", self.ws)):
            p = S.start(role[1:], [sys.executable, T.ME, role, str(port)], S.LOAD_CPU)
            S.wait_port(p, port, 10)
        self.n = 0

    def tether(self, store="{ kind: embedded }"):
        self.n += 1
        d = os.path.join(S.TMP, f"t{self.n}")
        os.makedirs(d)
        ports = {k: S.free_port() for k in ("admin", "web_p", "dev_p", "rate_p", "tls_p", "tcp_p", "ws_p")}
        store = store.replace("@DIR@", d)
        cfg = CONFIG.format(store=store, nginx=self.nginx, hold=self.hold, ws=self.ws, dir=S.TMP, **ports)
        p = S.tether(f"tether-{self.n}", cfg)
        S.wait_http_ok(p, ports["web_p"], 30)
        S.wait_port(p, ports["tls_p"], 30)
        time.sleep(0.5)
        return p, ports, d

    @staticmethod
    def stop(p):
        T.stop(p)


def slab_kb():
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":")
        m[k] = int(v.split()[0])
    return m["Slab"]


def kernel_kb():
    """Kernel memory the box's sockets hold: slab objects plus TCP buffer pages."""
    return slab_kb() + 4 * T.sockstat_mem_pages()


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(port, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


# ---------------------------------------------------------------- connections

def measure_conns(box, kind):
    p, ports, _ = box.tether()
    pids = S.tree(p.pid)
    c = T.run_client(kind, ports[f"{kind}_p"], CONN_STEPS, ECHO)
    rss, kern, fd = [], [], []
    for _ in CONN_STEPS:
        ok, bad, line = T.read_ready(c)
        if bad:
            S.die(f"{kind}: {line}")
        time.sleep(IDLE_S)
        rss.append((ok, S.rss_kb(pids)))
        kern.append((ok, kernel_kb()))
        fd.append((ok, fds(p.pid)))
        print(f"  {kind}: {ok} connections  RSS {rss[-1][1]} KB  kernel {kern[-1][1]} KB  fds {fd[-1][1]}", flush=True)
        c.stdin.write("\n")
        c.stdin.flush()
    c.stdin.close()
    c.wait(60)
    box.stop(p)
    time.sleep(1)
    return dict(rss_B=T.slope(rss) * 1024, kernel_B=T.slope(kern) * 1024 / 2, fds=T.slope(fd))


# ---------------------------------------------------------------- sessions

def new_sessions(port, seconds):
    return S.wrk(port, seconds, 16, script=os.path.join(S.HERE, "newkey.lua"))


def measure_sessions(box, redis_port=None):
    store = (f'{{ kind: redis, redis: {{ url: "redis://127.0.0.1:{redis_port}/0" }} }}' if redis_port
             else '{ kind: embedded, path: "@DIR@/affinity.db" }')
    p, ports, d = box.tether(store)
    pids = S.tree(p.pid)
    # With Redis, a second instance on the same Redis only hears the first one's changes:
    # its CPU is what every instance pays per session change anywhere in the fleet.
    peer = box.tether(store)[0] if redis_port else None
    peer_pids = S.tree(peer.pid) if peer else []
    new_sessions(ports["dev_p"], 1)  # warm-up: allocator arenas, the store's first pages
    time.sleep(1)
    rss, disk, rmem, cpu, heard = [], [], [], [], []
    for _ in range(SESSION_STEPS):
        p0 = S.cpu_ticks(peer_pids)
        with S.Meter(pids) as m:
            r = new_sessions(ports["dev_p"], 2)
        cpu.append(m.cpu_s * 1e6 / max(1, r["requests"]))
        time.sleep(1.5)  # the journal writer, the Redis write-behind and the events settle
        heard.append((S.cpu_ticks(peer_pids) - p0) / S.CLK_TCK * 1e6 / max(1, r["requests"]))
        n = metric(ports["admin"], "tether_store_sessions")
        rss.append((n, S.rss_kb(pids)))
        if redis_port:
            rmem.append((n, redis_info(redis_port, "used_memory")))
        else:
            disk.append((n, sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))))
        print(f"  {'redis' if redis_port else 'embedded'}: {n:.0f} sessions  RSS {rss[-1][1]} KB"
              + (f"  redis used_memory {rmem[-1][1]} B" if redis_port else f"  files {disk[-1][1]} B"), flush=True)
    box.stop(p)
    out = dict(rss_B=T.slope(rss) * 1024, us_new_session=median(cpu))
    if redis_port:
        box.stop(peer)
        out["redis_B"] = T.slope(rmem)
        out["us_event"] = median(heard)
    else:
        out["disk_B"] = T.slope(disk)
    return out


def redis_cmd(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port)] + list(args), capture_output=True, text=True).stdout


def redis_info(port, field):
    m = re.search(rf"^{field}:(\d+)", redis_cmd(port, "INFO", "memory"), re.M)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------- cpu

def tls_handshakes(port, seconds):
    out = subprocess.run(["taskset", "-c", S.LOAD_CPU, "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
                          "-new", "-time", str(seconds)], capture_output=True, text=True).stdout
    mm = re.search(r"(\d+) connections in ([\d.]+)s", out)
    if not mm:
        S.die(f"openssl s_time failed: {out}")
    return int(mm.group(1))


def cookie_of(port):
    r = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    c = [v for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("TETHER=")]
    if not c:
        S.die("tether set no TETHER cookie")
    return c[0].split(";")[0]


def measure_cpu(box):
    p, ports, _ = box.tether()
    pids = S.tree(p.pid)
    cookie = cookie_of(ports["web_p"])
    S.wrk(ports["web_p"], 1, 64, [f"Cookie: {cookie}"])
    S.wrk(ports["rate_p"], 1, 16, ["Connection: close"])
    req, conn, hs = [], [], []
    for _ in range(S.ROUNDS):
        with S.Meter(pids) as m:
            r = S.wrk(ports["web_p"], S.DURATION, 64, [f"Cookie: {cookie}"])
        req.append(m.cpu_s * 1e6 / max(1, r["requests"]))
        with S.Meter(pids) as m:
            r = S.wrk(ports["rate_p"], S.DURATION, 16, ["Connection: close"])
        conn.append(m.cpu_s * 1e6 / max(1, r["requests"]))
        with S.Meter(pids) as m:
            n = tls_handshakes(ports["tls_p"], S.DURATION)
        hs.append(m.cpu_s * 1e6 / max(1, n))
        print(f"  cpu: {req[-1]:.2f} us/request  {conn[-1]:.1f} us/connection  {hs[-1]:.0f} us/handshake", flush=True)
    base = S.rss_kb(pids)
    box.stop(p)
    return dict(us_req=median(req), us_conn=median(conn), us_hs=median(hs)), base


def measure_reconnect():
    env = dict(os.environ, N=str(RECONNECT_N), KILL="1")  # its own TETHER_LOG: it reads the info lines
    env.pop("TETHER_LOG", None)
    env.pop("STORE", None)
    env.pop("PROXY", None)
    out = subprocess.run(["cargo", "bench", "--bench", "failover"], cwd=S.REPO, env=env,
                         capture_output=True, text=True)
    text = out.stdout + out.stderr
    mm = re.search(r"to last reconnect \(([\d.]+) ms wall\): tether ([\d.]+) \(([\d.]+) us per session\)", text)
    if not mm:
        S.die(f"no reconnect CPU line from the failover bench:\n{text[-3000:]}")
    print("  " + "\n  ".join(ln for ln in text.splitlines() if "CPU ms" in ln or "echo from" in ln), flush=True)
    return float(mm.group(3))


# ---------------------------------------------------------------- the check

def check(box, sl):
    """Mixed point: WebSockets, TCP connections and sessions at once, then requests and new
    connections at once. Returns [(what, predicted, measured)]."""
    p, ports, _ = box.tether()
    pids = S.tree(p.pid)
    time.sleep(1)
    rss0, kern0 = S.rss_kb(pids), kernel_kb()
    new_sessions(ports["dev_p"], 1)
    while metric(ports["admin"], "tether_store_sessions") < CHECK_SESSIONS:
        new_sessions(ports["dev_p"], 1)
    n_sess = metric(ports["admin"], "tether_store_sessions")
    cw = T.run_client("ws", ports["ws_p"], [CHECK_WS], ECHO)
    ct = T.run_client("tcp", ports["tcp_p"], [CHECK_TCP], ECHO)
    (nw, bw, lw), (nt, bt, lt) = T.read_ready(cw), T.read_ready(ct)
    if bw or bt:
        S.die(f"check: {lw} / {lt}")
    time.sleep(IDLE_S)
    rss1, kern1 = S.rss_kb(pids), kernel_kb()
    out = [
        (f"tether RSS growth, {nw} WS + {nt} TCP + {n_sess:.0f} sessions (KB)",
         (nw * sl["ws_rss_B"] + nt * sl["tcp_rss_B"] + n_sess * sl["session_embedded_B"]) / 1024, rss1 - rss0),
        ("kernel memory growth, tether's share (KB)",
         (nw * sl["ws_kernel_B"] + nt * sl["tcp_kernel_B"]) / 1024, (kern1 - kern0) / 2),
    ]
    cookie = cookie_of(ports["web_p"])
    a = subprocess.Popen(["taskset", "-c", S.LOAD_CPU, "wrk", "-t1", "-c32", f"-d{S.DURATION}s", "-s",
                          os.path.join(S.HERE, "report.lua"), "-H", f"Cookie: {cookie}",
                          f"http://127.0.0.1:{ports['web_p']}/"], stdout=subprocess.PIPE, text=True)
    with S.Meter(pids) as m:
        r = S.wrk(ports["rate_p"], S.DURATION, 8, ["Connection: close"])
        ka = a.communicate()[0]
    mm = re.search(r"requests=(\d+)", ka)
    n_req = int(mm.group(1)) if mm else 0
    out.append((f"tether CPU, {n_req} kept-alive requests + {r['requests']} new connections at once (s)",
                (n_req * sl["us_req"] + r["requests"] * sl["us_conn"]) / 1e6, m.cpu_s))
    cw.stdin.close()
    ct.stdin.close()
    cw.wait(60)
    ct.wait(60)
    box.stop(p)
    return out


def main():
    if not os.access(S.TETHER_BIN, os.X_OK):
        S.die(f"no tether binary at {S.TETHER_BIN}: cargo build --release --bin tether")
    for tool in ("wrk", "nginx", "taskset", "openssl", "redis-server", "redis-cli"):
        if not S.shutil.which(tool):
            S.die(f"missing {tool}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    most = max(max(CONN_STEPS), CHECK_WS + CHECK_TCP)
    if hard < 2 * most + 500:
        S.die(f"the open-files limit ({hard}) cannot hold {most} proxied connections: lower CONN_STEPS/CHECK_*")
    S.TMP = tempfile.mkdtemp(prefix="tether-capacity.")
    atexit.register(S.cleanup)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", f"{S.TMP}/site.key", "-out", f"{S.TMP}/site.crt", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"], check=True,
                   capture_output=True)
    box = Box()
    t0 = time.time()
    print("connections", flush=True)
    ws, tcp = measure_conns(box, "ws"), measure_conns(box, "tcp")
    print("sessions", flush=True)
    emb = measure_sessions(box)
    rport = S.free_port()
    rp = S.start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no"], S.LOAD_CPU)
    S.wait_port(rp, rport, 10)
    red = measure_sessions(box, rport)
    print("cpu", flush=True)
    cpu, base = measure_cpu(box)
    if "reconnect" in S.SKIP:
        us_reconnect = float(ENV.get("US_RECONNECT", 450))
        print(f"reconnect: skipped, using US_RECONNECT={us_reconnect}")
    else:
        print(f"reconnect (cargo bench --bench failover, N={RECONNECT_N} KILL=1)", flush=True)
        us_reconnect = measure_reconnect()
    lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    sl = dict(ws_rss_B=ws["rss_B"], ws_kernel_B=ws["kernel_B"], ws_fds=ws["fds"],
              tcp_rss_B=tcp["rss_B"], tcp_kernel_B=tcp["kernel_B"], tcp_fds=tcp["fds"],
              session_embedded_B=emb["rss_B"], session_disk_B=emb["disk_B"], us_new_session=emb["us_new_session"],
              session_redis_B=red["redis_B"], session_redis_cache_B=red["rss_B"],
              us_new_session_redis=red["us_new_session"], us_event=red["us_event"],
              us_req=cpu["us_req"], us_conn=cpu["us_conn"], us_hs=cpu["us_hs"], us_reconnect=us_reconnect,
              base_rss_B=base * 1024, port_range=hi - lo + 1, nofile_here=hard)
    print("check (a mixed point the slopes were not fitted on)", flush=True)
    res = check(box, sl)
    print("\nslopes (this box, this run)")
    for k, v in sl.items():
        print(f"  {k:<22} {v:,.2f}")
    print("\nthe model against a point it was not fitted on")
    missed = 0
    for what, pred, got in res:
        err = (pred - got) / got if got else float("inf")
        ok = abs(err) <= TOLERANCE
        missed += not ok
        print(f"  {what}: predicted {pred:,.1f}, measured {got:,.1f}, error {err:+.1%} {'ok' if ok else 'MISSED'}")
    json.dump(dict(slopes=sl, check=[dict(what=w, predicted=p, measured=g) for w, p, g in res],
                   date=time.strftime("%Y-%m-%d"), seconds=round(time.time() - t0)), open(OUT, "w"), indent=1)
    print(f"\nslopes written to {OUT}; the table (benches/capacity/model.py {OUT}):\n")
    print(model.table(sl, model.fleet())[0])
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
