"""benches/chaos/chaos.py: the seeded chaos schedule and its actions: kill, stop, redis,
reload, upgrade (README.md, "Chaos schedule").

A mixin of soak.Soak: the state it reads and writes is created in Soak.__init__."""
import asyncio
import json
import os
import random
import signal
import time

from common import FREEZE, KILLED_FOR, BrokenRun
from procs import alive, proc_cmdline, proc_ppid
from wire import error_kind, http_once


class Chaos:
    # -------------------------------------------------------------- chaos events
    async def ev_kill(self, name):
        b = self.backends[name]
        self.expected_down.add(name)
        self.procs.signal(b["pid"], signal.SIGKILL)
        await self.procs.wait_exit(b["pid"], 5)
        await asyncio.sleep(KILLED_FOR)
        await self.start_backend(name)
        self.expected_down.discard(name)
        return f"killed, restarted after {KILLED_FOR:g} s"

    async def ev_stop(self, name):
        b = self.backends[name]
        self.expected_down.add(name)
        self.procs.signal(b["pid"], signal.SIGSTOP)
        await asyncio.sleep(FREEZE)
        self.procs.signal(b["pid"], signal.SIGCONT)
        self.expected_down.discard(name)
        return f"stopped {FREEZE:g} s, continued"

    async def ev_redis(self, how):
        self.expected_down.add("redis")
        out = [self.now(), None]
        self.redis_outages.append(out)
        self.procs.signal(self.redis_pid, signal.SIGKILL if how == "kill" else signal.SIGTERM)
        if not await self.procs.wait_exit(self.redis_pid, 10):
            raise BrokenRun("redis did not exit within 10 s")
        await asyncio.sleep(1.0)
        await self.start_redis()
        out[1] = self.now()
        self.expected_down.discard("redis")
        return f"SIG{how.upper()}, 1 s away, started again (outage {out[1] - out[0]:.1f}s)"

    async def ev_reload(self):
        self.variant += 1
        v = self.variant % 3
        desc = {1: "w2 weight 2", 2: "w2 weight 2, w4 added", 0: "w2 weight 1, w4 removed"}[v]
        errors = []
        for inst in ("A", "B"):
            self.write_config(inst)
            try:
                st, _, body = await http_once(self.tethers[inst]["admin"], "/api/reload", "POST", timeout=10)
            except Exception as e:
                errors.append(f"{inst}: POST /api/reload: {error_kind(e)}")
                continue
            if st != 200:
                errors.append(f"{inst}: POST /api/reload answered {st}: {body[:300]!r}")
                continue
            try:
                st, _, body = await http_once(self.tethers[inst]["admin"], "/api/pools", timeout=5)
                pools = {p["name"]: p for p in json.loads(body)["pools"]}
                bk = {x["id"]: x for x in pools["app"]["backends"]}
                w2 = bk["w2"]["weight"]
                want_w2 = 2 if v in (1, 2) else 1
                w4_state = bk.get("w4", {}).get("state")
                if w2 != want_w2 or (v == 2 and w4_state in (None, "removed")) \
                        or (v != 2 and w4_state not in (None, "removed")):
                    errors.append(f"{inst}: /api/pools shows w2 weight {w2}, w4 {bk.get('w4', {}).get('state')}"
                                  f" after reload to variant {v}")
            except Exception as e:
                errors.append(f"{inst}: GET /api/pools: {error_kind(e)}")
        if errors:
            self.violate("g_chaos_ops", what="reload", variant=v, errors=errors)
            return f"variant {v} ({desc}): FAILED {errors}"
        return f"variant {v} ({desc}) on A and B: 200"

    def find_successor(self, old_pid):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            pid = int(d)
            if pid == old_pid or pid in self.procs.pids:
                continue
            if proc_ppid(pid) in (old_pid, os.getpid()):
                cmd = proc_cmdline(pid)
                if b"--upgrade" in cmd and any(os.path.basename(self.a.tether).encode() in c for c in cmd):
                    return pid
        return None

    async def ev_upgrade(self, inst, how):
        t = self.tethers[inst]
        old = t["pid"]
        t0 = self.now()
        if how == "exec":
            t["gen"] += 1
            log = os.path.join(self.dir, f"tether-{inst}-{t['gen']}.log")
            env = dict(os.environ, RUST_LOG=self.a.log_level)
            new = self.procs.start(f"tether-{inst}-{t['gen']}", [self.a.tether, "--upgrade", "-c", t["cfg"]], log, env)
            t["logs"].append(log)

            async def ready():
                return self.log_count(log, "tether ready") >= 1
            ok = await self.wait_until(f"tether {inst} successor", ready, 30, new, log) if alive(new) else False
        else:
            log = t["log"]  # the successor inherits the old process's stdout/stderr
            before = self.log_count(log, "tether ready")
            self.procs.signal(old, signal.SIGUSR2)
            new = None
            deadline = time.monotonic() + 10
            while new is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                new = self.find_successor(old)
            if new is None:
                self.violate("g_chaos_ops", what="upgrade", instance=inst, how=how,
                             error="no successor process appeared within 10 s of SIGUSR2")
                return "FAILED: no successor"
            self.procs.adopt(new, f"tether-{inst}-usr2")

            async def ready():
                return self.log_count(log, "tether ready") > before
            try:
                ok = await self.wait_until(f"tether {inst} successor", ready, 30, new, log)
            except BrokenRun as e:
                ok = False
                self.violate("g_chaos_ops", what="upgrade", instance=inst, how=how, error=str(e)[:1500])
        if not ok:
            self.violate("g_chaos_ops", what="upgrade", instance=inst, how=how,
                         error="successor not ready within 30 s")
            return "FAILED: successor not ready"
        t["pid"] = new
        t["pids"].append(new)
        self.predecessors.append({"instance": inst, "pid": old, "since": t0, "exited": None})
        return f"{how}: pid {old} -> {new}, ready in {self.now() - t0:.1f}s"

    async def chaos(self):
        rng = random.Random(self.a.seed * 7919 + 1)
        first = self.t_load0 + 8.0
        last = self.t_load0 + max(10.0, self.a.duration - 12.0)
        plan = [first + (last - first) * f for f in (0.3, 0.65)][: self.a.upgrades]
        ups = [("A", "exec"), ("B", "sigusr2")]
        bag = []
        await asyncio.sleep(max(0.0, first - self.now()))
        while not self.stopping and self.now() < last:
            if plan and self.now() >= plan[0]:
                plan.pop(0)
                kind, arg = "upgrade", ups.pop(0)
            else:
                if not bag:
                    bag = ["kill", "stop", "redis", "reload"]
                    rng.shuffle(bag)
                kind = bag.pop()
                arg = None
                if kind in ("kill", "stop"):
                    arg = rng.choice(["w1", "w2", "w3", "d1", "d2", "d3"])
                elif kind == "redis":
                    arg = rng.choice(["kill", "term"])
            t0 = self.now()
            ev = {"kind": kind, **self.stamp(t0)}
            self.current_event = ev
            try:
                ev["target"] = {"kill": arg, "stop": arg, "redis": f"redis ({arg})", "reload": "A+B"}.get(
                    kind, f"{arg[0]} ({arg[1]})" if kind == "upgrade" else "")
                if kind == "kill":
                    res = await self.ev_kill(arg)
                elif kind == "stop":
                    res = await self.ev_stop(arg)
                elif kind == "redis":
                    res = await self.ev_redis(arg)
                elif kind == "reload":
                    res = await self.ev_reload()
                else:
                    res = await self.ev_upgrade(*arg)
            except BrokenRun as e:
                self.broken = f"chaos {kind}: {e}"
                ev.update(result="BROKEN", took=self.now() - t0)
                self.log_event(ev)
                self.stopping = True
                return
            ev.update(result=res, took=round(self.now() - t0, 2))
            self.current_event = None
            self.log_event(ev)
            await asyncio.sleep(rng.uniform(3.0, 6.0))

    async def chaos_wrapper(self):
        try:
            await self.chaos()
        except BrokenRun as e:
            self.broken = str(e)
            self.stopping = True
