#!/usr/bin/env python3
"""benches/chaos/soak.py: the chaos soak of issue 13 ("Beyond the defects").

Python 3 standard library only. Usually started by run.sh (see README.md); by hand:

  soak.py run --dir DIR --tether BIN --whoami BIN [--duration 180] [--seed 1] ...
      Starts, on 127.0.0.1 only, every process below (kept by pid, stopped by pid on
      exit, Ctrl-C and SIGTERM included; their pids are appended to DIR/pids so run.sh
      can clean up after a SIGKILLed soak):
        redis-server (--appendonly yes, in DIR/redis),
        whoami w1..w4 (HTTP + WebSocket; w4 is only in the config after a reload adds it),
        TCP echo backends d1..d3 (`soak.py tcp-backend`, backends.py),
        tether A and tether B on that one Redis, identical pools `app` (w*) and `dev`
        (d*), each with an `http` listener (inserted cookie TETHER), a `tcp` listener
        keyed by `{ prefix: '^HELLO device=([a-z0-9]+)\\n' }` and its admin listener.
      Then, for DURATION seconds, steady load from HTTP, WebSocket and TCP-device
      clients while a seeded chaos schedule SIGKILLs and restarts backends, freezes
      them (SIGSTOP / SIGCONT), restarts Redis, reloads both configs and upgrades each
      instance's binary once (`--upgrade`, then SIGUSR2). Invariants are checked
      throughout; see README.md for their exact thresholds.
      Writes DIR/summary.txt, DIR/summary.json, DIR/violations.jsonl, DIR/events.jsonl.
      Exit 0: every invariant held; 1: at least one was violated; 2: the run itself
      broke (a process of the harness could not start, a Python error...).

  soak.py tcp-backend --id ID --listen HOST:PORT
      A TCP echo backend: answers each line with `ID: line`. A connection whose first
      line starts with `GET ` or `HEAD ` gets `HTTP/1.1 200 OK` and is closed, so tether's
      `kind: http` health check on `/healthz` works (a TCP check would pass against a
      SIGSTOPped process: the kernel still accepts its connections).

This file is the driver: the Soak's state, its bookkeeping, the run from set-up to
summary, and main. The rest of the Soak lives in mixins, one concern each:
  cluster.py     the configs; starting Redis, the backends and the tethers
  chaos.py       the chaos schedule and its actions
  clients.py     the HTTP, WebSocket and TCP-device client loops
  invariants.py  the checks of (a), (b), (c) and their evidence
  monitors.py    RSS, processes, client loop lag, metrics, logs: (d), (e), (f), (g)
  report.py      the summary and the exit status
and plain helpers: common.py (settings and bounds), wire.py (WebSocket framing, HTTP/1.1),
procs.py (processes by pid), backends.py (the TCP echo backend).
"""
import argparse
import asyncio
import collections
import json
import os
import random
import signal
import sys
import time

# The modules below sit next to this file (sys.path[0]); leave no __pycache__ in the source tree.
sys.dont_write_bytecode = True

from backends import tcp_backend
from chaos import Chaos
from clients import Clients
from cluster import Cluster
from common import CONNS_ZERO_WITHIN, ECHO_HARD, BrokenRun, fmt_wall
from invariants import Invariants
from monitors import Monitors
from procs import Procs, alive, free_ports
from report import Report


# ------------------------------------------------------------------ the soak
class Soak(Cluster, Chaos, Clients, Invariants, Monitors, Report):
    def __init__(self, a):
        self.a = a
        self.dir = os.path.abspath(a.dir)
        self.script = os.path.abspath(__file__)   # `soak.py tcp-backend` starts the TCP backends
        self.rng = random.Random(a.seed)
        self.procs = Procs(self.dir)
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.stopping = False          # clients stop
        self.monitors_stop = False
        self.violations = []
        self.events = []
        self.notes = collections.Counter()
        self.kinds = {k: collections.Counter() for k in ("http", "ws", "tcp")}
        self.lat = {k: [] for k in ("http", "ws_echo", "ws_open", "tcp_echo", "tcp_open")}
        self.sessions = {}             # (pool, key) -> info dict (confirmed sessions)
        self.dp = {}                   # (pool, key) -> data-path state
        self.hist = {}                 # (pool, key) -> recent observations (evidence)
        self.live = {}                 # (pool, key) -> the open WebSocket / TCP connection's backend
        self.conn_ids = 0
        self.bg = []                   # background evidence tasks
        self.dp_episodes = []          # closed data-path disagreement durations
        self.admin_eps = []            # closed admin disagreement episodes
        self.live_eps = []             # closed open-connection-vs-record mismatches (durations)
        self.admin = collections.Counter()
        self.rss_max = {}              # pid -> (kib, instance)
        self.rss_flagged = set()
        self.rss_first = {}            # instance -> (kib, pid) of the first sample (after set-up)
        self.redis_outages = []        # [start, end or None]
        self.loop_lag = []
        self.backends = {}
        self.current_event = None
        self.expected_down = set()
        self.variant = 0
        self.metrics_last = {}         # pid -> metrics text (last scrape)
        self.tethers = {}
        self.predecessors = []         # dicts: instance, pid, since, exited
        self.broken = None
        self.load0 = open("/proc/loadavg").read().split()[:3]

    # -------------------------------------------------------------- bookkeeping
    def now(self):
        return time.monotonic() - self.t0

    def stamp(self, t=None):
        t = self.now() if t is None else t
        return {"t": round(t, 3), "wall": fmt_wall(self.wall0 + t)}

    def violate(self, inv, **detail):
        v = {"invariant": inv, **self.stamp(detail.pop("t", None)), **detail}
        self.violations.append(v)
        with open(os.path.join(self.dir, "violations.jsonl"), "a") as f:
            f.write(json.dumps(v) + "\n")
        if len([x for x in self.violations if x["invariant"] == inv]) <= 3:
            print(f"  VIOLATION {inv} at {v['t']:.1f}s: {json.dumps(detail)[:300]}", flush=True)

    def log_event(self, ev):
        self.events.append(ev)
        with open(os.path.join(self.dir, "events.jsonl"), "a") as f:
            f.write(json.dumps(ev) + "\n")
        what = f"{ev['kind']} {ev.get('target', '')}".strip()
        print(f"  [{ev['t']:6.1f}s] {what}: {ev.get('result', '')} ({ev.get('took', 0):.1f}s)"
              + (f" {ev['info']}" if ev.get("info") else ""), flush=True)

    def context(self, t):
        """The chaos event in progress at t, or the last one that ended within 6 s before it."""
        best = None
        for e in self.events + ([self.current_event] if self.current_event else []):
            if e["t"] <= t + 0.01:
                best = e
        if best is None:
            return None
        end = best["t"] + best.get("took", self.now() - best["t"])
        if t > end + 6.0:
            return None
        return f"{best['kind']} {best.get('target', '')} (+{t - best['t']:.1f}s after its start)"

    def in_redis_outage(self, t0, t1=None):
        t1 = t0 if t1 is None else t1
        for s, e in self.redis_outages:
            e = self.now() if e is None else e
            if t0 <= e + 1.0 and t1 >= s:
                return True
        return False

    # -------------------------------------------------------------- the run
    async def run(self):
        a = self.a
        ports = free_ports(14, self.rng)
        self.redis_port = ports[0]
        for i, name in enumerate(["w1", "w2", "w3", "w4"]):
            self.backends[name] = {"kind": "whoami", "port": ports[1 + i]}
        for i, name in enumerate(["d1", "d2", "d3"]):
            self.backends[name] = {"kind": "tcp", "port": ports[5 + i]}
        self.tethers = {
            "A": {"web": ports[8], "dev": ports[9], "admin": ports[10], "cfg": os.path.join(self.dir, "tether-a.yaml")},
            "B": {"web": ports[11], "dev": ports[12], "admin": ports[13], "cfg": os.path.join(self.dir, "tether-b.yaml")},
        }
        print(f"chaos soak: {a.duration}s, seed {a.seed}, {a.http_clients} HTTP + {a.ws_clients} WebSocket + "
              f"{a.tcp_clients} TCP clients; dir {self.dir}", flush=True)
        await self.start_redis()
        await asyncio.gather(*(self.start_backend(n) for n in self.backends))
        await self.start_tether("A")
        await self.start_tether("B")
        print(f"  set-up done in {self.now():.1f}s: redis :{self.redis_port}, "
              f"A web :{self.tethers['A']['web']} dev :{self.tethers['A']['dev']} admin :{self.tethers['A']['admin']}, "
              f"B web :{self.tethers['B']['web']} dev :{self.tethers['B']['dev']} admin :{self.tethers['B']['admin']}",
              flush=True)
        self.t_load0 = self.now()
        monitors = [asyncio.create_task(m()) for m in (self.admin_sampler, self.proc_monitor, self.lag_monitor)]
        clients = ([asyncio.create_task(self.http_client(i)) for i in range(a.http_clients)]
                   + [asyncio.create_task(self.ws_client(i)) for i in range(a.ws_clients)]
                   + [asyncio.create_task(self.tcp_client(i)) for i in range(a.tcp_clients)])
        self.t_end = self.t_load0 + a.duration
        chaos = asyncio.create_task(self.chaos_wrapper())
        while self.now() < self.t_end and not self.stopping:
            await asyncio.sleep(0.2)
            for c in clients:
                if c.done() and c.exception():
                    raise c.exception()
        # wind-down: the chaos schedule finishes its event; then every client closes
        self.stopping = True
        try:
            await asyncio.wait_for(chaos, 30)
        except asyncio.TimeoutError:
            chaos.cancel()
        for name, b in self.backends.items():
            if b.get("pid"):
                self.procs.signal(b["pid"], signal.SIGCONT)
        done, pending = await asyncio.wait(clients, timeout=ECHO_HARD + 2)
        for c in pending:
            c.cancel()
        for c in done:
            if c.exception():
                raise c.exception()
        self.t_clients_gone = self.now()
        if self.broken:
            raise BrokenRun(self.broken)
        zero, last = await self.wait_conns_zero()
        for inst in ("A", "B"):
            if inst not in zero or zero[inst] > CONNS_ZERO_WITHIN:
                self.violate("d_connections_return_to_0", instance=inst, last_value=last.get(inst),
                             within=CONNS_ZERO_WITHIN, reached_after=zero.get(inst))
        # predecessors of upgrades must be gone now that their clients left
        await asyncio.sleep(0.5)
        for p in self.predecessors:
            if p["exited"] is None and not alive(p["pid"]):
                p["exited"] = self.now()
            if p["exited"] is None:
                self.violate("d_connections_return_to_0", instance=p["instance"], pid=p["pid"],
                             what="an upgraded-away process is still running after its clients left")
        n_sessions, missing, disagree = await self.final_session_check()
        if self.bg:
            await asyncio.wait(self.bg, timeout=10)
        for inst, tt in self.tethers.items():
            try:
                self.metrics_last[tt["pid"]] = (inst, await self.metrics(inst))
            except Exception:
                pass
        self.monitors_stop = True
        await asyncio.gather(*monitors, return_exceptions=True)
        # stop the tethers (SIGTERM), then read their logs
        for tt in self.tethers.values():
            for pid in tt["pids"]:
                if alive(pid):
                    self.procs.signal(pid, signal.SIGTERM)
        for tt in self.tethers.values():
            for pid in tt["pids"]:
                if not await self.procs.wait_exit(pid, 10):
                    self.notes[f"tether pid {pid} needed SIGKILL at the end"] += 1
                    self.procs.signal(pid, signal.SIGKILL)
        panics = self.scan_logs()
        return self.summary(zero, last, n_sessions, missing, disagree, panics)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dir", required=True)
    r.add_argument("--tether", required=True)
    r.add_argument("--whoami", required=True)
    r.add_argument("--redis", default="redis-server")
    r.add_argument("--duration", type=float, default=180)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--http-clients", type=int, default=40)
    r.add_argument("--ws-clients", type=int, default=30)
    r.add_argument("--tcp-clients", type=int, default=30)
    r.add_argument("--http-interval", type=float, default=0.5)
    r.add_argument("--settle", type=float, default=2.0)
    r.add_argument("--sample", type=int, default=30, help="sessions sampled on the admin APIs per second")
    r.add_argument("--rss-limit-mb", type=int, default=128)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--upgrades", type=int, default=2, choices=(0, 1, 2))
    r.add_argument("--log-level", default="info")
    b = sub.add_parser("tcp-backend")
    b.add_argument("--id", required=True)
    b.add_argument("--listen", required=True)
    a = ap.parse_args()
    if a.cmd == "tcp-backend":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            asyncio.run(tcp_backend(a.id, a.listen))
        except KeyboardInterrupt:
            pass
        return 0
    os.makedirs(a.dir, exist_ok=True)
    soak = Soak(a)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signum)
    signal.signal(signal.SIGTERM, on_signal)
    rc = 2
    try:
        rc = asyncio.run(soak.run())
    except BrokenRun as e:
        print(f"soak.py: the run broke: {e}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt as e:
        print("soak.py: interrupted", file=sys.stderr)
        rc = 143 if e.args and e.args[0] == signal.SIGTERM else 130
    except Exception:
        import traceback
        traceback.print_exc()
        rc = 2
    finally:
        soak.procs.stop_all_sync()
    return rc


if __name__ == "__main__":
    sys.exit(main())
