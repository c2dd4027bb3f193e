"""benches/chaos/monitors.py: what is watched besides the sessions: each tether process's
RSS (e), whether it is still running (f), the upgraded-away predecessors (g), the client
loop's lag, the metrics (connections_active (d), session moves) and the logs (panics,
counts).

A mixin of soak.Soak: the state it reads and writes is created in Soak.__init__."""
import asyncio
import collections
import os
import re
import time

from common import CONNS_ZERO_WITHIN, PANIC_RE, UPGRADE_GRACE
from procs import alive, rss_kib
from wire import error_kind, http_once


class Monitors:
    # -------------------------------------------------------------- during the run
    async def metrics(self, inst):
        st, _, body = await http_once(self.tethers[inst]["admin"], "/metrics", timeout=3)
        if st != 200:
            raise ValueError(st)
        return body.decode(errors="replace")

    async def proc_monitor(self):
        while not self.monitors_stop:
            t = self.now()
            for inst, tt in self.tethers.items():
                for pid in tt["pids"]:
                    kib = rss_kib(pid)
                    if kib is None:
                        continue
                    self.rss_first.setdefault(inst, (kib, pid))
                    prev = self.rss_max.get(pid, (0, inst))[0]
                    if kib > prev:
                        self.rss_max[pid] = (kib, inst)
                    if kib > self.a.rss_limit_mb * 1024 and pid not in self.rss_flagged:
                        self.rss_flagged.add(pid)
                        self.violate("e_rss", instance=inst, pid=pid, rss_mib=round(kib / 1024, 1),
                                     limit_mib=self.a.rss_limit_mb)
                cur = tt["pid"]
                if not alive(cur) and not tt.get("dead_flagged"):
                    tt["dead_flagged"] = True
                    self.violate("f_no_panic_or_crash", instance=inst, pid=cur,
                                 what="the serving tether process exited", log=tt["logs"][-1])
            for p in self.predecessors:
                if p["exited"] is None and not alive(p["pid"]):
                    p["exited"] = t
                elif p["exited"] is None and t - p["since"] > UPGRADE_GRACE + 10 and not p.get("flagged"):
                    p["flagged"] = True
                    self.violate("g_chaos_ops", what="an upgraded-away process outlived upgrade_grace + 10 s",
                                 instance=p["instance"], pid=p["pid"])
            for name, b in self.backends.items():
                if name not in self.expected_down and b.get("pid") and not alive(b["pid"]) \
                        and b.get("flagged") != b["pid"]:
                    b["flagged"] = b["pid"]
                    self.notes[f"backend {name} exited unexpectedly"] += 1
            if "redis" not in self.expected_down and not alive(self.redis_pid) \
                    and getattr(self, "redis_flagged", None) != self.redis_pid:
                self.redis_flagged = self.redis_pid
                self.notes["redis exited unexpectedly"] += 1
            # metrics, every 5 s, kept per process
            if int(t) % 5 == 0:
                for inst, tt in self.tethers.items():
                    try:
                        self.metrics_last[tt["pid"]] = (inst, await self.metrics(inst))
                    except Exception:
                        pass
            await asyncio.sleep(max(0.0, 1.0 - (self.now() - t)))

    async def lag_monitor(self):
        while not self.monitors_stop:
            t = time.monotonic()
            await asyncio.sleep(0.1)
            lag = time.monotonic() - t - 0.1
            self.loop_lag.append((self.now(), lag))

    # -------------------------------------------------------------- end of run
    def conns_active(self, text):
        total = 0.0
        for line in text.splitlines():
            if line.startswith("tether_connections_active{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def wait_conns_zero(self):
        t0 = self.now()
        res = {}
        pending = {"A", "B"}
        last = {}
        while pending and self.now() - t0 < CONNS_ZERO_WITHIN + 5:
            for inst in list(pending):
                try:
                    v = self.conns_active(await self.metrics(inst))
                except Exception as e:
                    last[inst] = error_kind(e)
                    continue
                last[inst] = v
                if v == 0:
                    res[inst] = round(self.now() - t0, 2)
                    pending.discard(inst)
            await asyncio.sleep(0.1)
        return res, last

    def scan_logs(self):
        hits = []
        for inst, tt in self.tethers.items():
            for log in tt["logs"]:
                try:
                    with open(log, errors="replace") as f:
                        for i, line in enumerate(f, 1):
                            if PANIC_RE.search(line):
                                hits.append({"log": os.path.basename(log), "line": i, "text": line.strip()[:400]})
                except OSError:
                    pass
        for h in hits:
            self.violate("f_no_panic_or_crash", what="panic in a tether log", **h)
        return hits

    def log_counts(self):
        c = collections.Counter()
        pats = {"backend_down": "tether::pool: backend down", "redis_reconnected": "redis store: reconnected",
                "reloads": "configuration reloaded", "warn": " WARN ", "error": " ERROR "}
        for tt in self.tethers.values():
            for log in tt["logs"]:
                try:
                    text = open(log, errors="replace").read()
                except OSError:
                    continue
                for k, p in pats.items():
                    c[k] += text.count(p)
        return dict(c)

    def moves_from_metrics(self):
        c = collections.Counter()
        for pid, (inst, text) in self.metrics_last.items():
            for line in text.splitlines():
                if line.startswith("tether_session_moves_total{"):
                    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                    c[f"{labels.get('pool')}/{labels.get('reason')}"] += float(line.rsplit(" ", 1)[1])
        return {k: int(v) for k, v in c.items()}
