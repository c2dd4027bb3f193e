"""benches/chaos/invariants.py: the checks of invariants (a) one owner at a time, (b) no
confirmed session lost and (c) no slow answer, and their evidence: the data-path
comparison, both admin APIs sampled side by side, each open connection against the
recorded owner, the end-of-run reading of every confirmed session.

A mixin of soak.Soak: the state it reads and writes is created in Soak.__init__."""
import asyncio
import collections
import json
import os

from common import fmt_wall
from wire import error_kind, http_once


class Invariants:
    # -------------------------------------------------------------- data-path owner check
    def note_history(self, sid, t, **what):
        h = self.hist.setdefault(sid, collections.deque(maxlen=40))
        h.append({"t": round(t, 3), "wall": fmt_wall(self.wall0 + t), **what})

    def history(self, sid, n=20):
        return list(self.hist.get(sid, ()))[-n:]

    def evidence(self, sid, why):
        """Both instances' admin answers for sid, now and 2 s later, into evidence.jsonl."""
        async def go():
            out = {"key": sid[1], "pool": sid[0], "why": why}
            for when in ("now", "after_2s"):
                if when == "after_2s":
                    await asyncio.sleep(2.0)
                ra, rb = await asyncio.gather(self.admin_get("A", *sid, full=True), self.admin_get("B", *sid, full=True))
                out[when] = {"t": round(self.now(), 3), "A": ra, "B": rb}
            out["history"] = self.history(sid, 40)
            with open(os.path.join(self.dir, "evidence.jsonl"), "a") as f:
                f.write(json.dumps(out) + "\n")
        self.bg.append(asyncio.ensure_future(go()))

    def observe(self, sid, inst, backend, t, kind, explained=False, pid=None, via=None):
        """A routing decision seen on the data path: a request (HTTP) or a new connection
        (WebSocket, TCP) of session sid through instance inst went to backend at t."""
        self.note_history(sid, t, via=via or kind, instance=inst, pid=pid, backend=backend,
                          **({"moved_header": True} if explained else {}))
        s = self.dp.setdefault(sid, {"last": None, "views": {}, "ep": None, "moves": 0})
        if s["last"] is not None and s["last"] != backend:
            s["moves"] += 1
            self.kinds[kind]["moves"] += 1
            if explained:
                self.kinds[kind]["moves_with_header"] += 1
        s["last"] = backend
        s["views"][inst] = (backend, t)
        o = s["views"].get("B" if inst == "A" else "A")
        if o is None:
            return
        if o[0] == backend:
            if s["ep"]:
                self.dp_episodes.append((kind, t - s["ep"]["start"]))
            s["ep"] = None
            return
        if s["ep"] is None:
            s["ep"] = {"start": t, "flagged": False, "first": {inst: backend, ("B" if inst == "A" else "A"): o[0]}}
        elif kind == "http" and not s["ep"]["flagged"] and t - s["ep"]["start"] > self.a.settle \
                and o[1] >= s["ep"]["start"]:
            # Only HTTP sessions: each instance routes them about once a second. A
            # WebSocket / TCP session is routed only at each (re)connection, 20-30 s apart,
            # so two legitimate moves in a row (X down -> Y, later Y down -> X) seen through
            # alternating instances would look the same; those sessions are covered by the
            # open-connection check against the recorded owner (live_check).
            s["ep"]["flagged"] = True
            self.violate("a_one_owner", source="data path", kind=kind, pool=sid[0], key=sid[1],
                         since=round(s["ep"]["start"], 3), since_wall=fmt_wall(self.wall0 + s["ep"]["start"]),
                         now={inst: backend, ("B" if inst == "A" else "A"): o[0]},
                         other_seen_at=round(o[1], 3), first=s["ep"]["first"],
                         redis_outage=self.in_redis_outage(s["ep"]["start"]) or self.in_redis_outage(t),
                         context=self.context(s["ep"]["start"]), t=t,
                         history=self.history(sid, 12))
            self.evidence(sid, "a_one_owner data path")

    def slow(self, kind, what, elapsed, bound, **kw):
        self.kinds[kind]["slow"] += 1
        lag = max((l for ts, l in self.loop_lag[-50:] if ts >= self.now() - elapsed - 1), default=0.0)
        self.violate("c_timeouts", kind=kind, what=what, waited=round(elapsed, 3), bound=bound,
                     client_loop_lag_max=round(lag, 3), **kw)

    def register(self, sid, kind, client):
        if sid not in self.sessions:
            self.sessions[sid] = {"kind": kind, "client": client, "since": self.now(), "abandoned": False,
                                  "ep": None}

    # -------------------------------------------------------------- both admin APIs, side by side
    async def admin_get(self, inst, pool, key, full=False):
        try:
            st, _, body = await http_once(self.tethers[inst]["admin"], f"/api/pools/{pool}/sessions/{key}", timeout=3)
        except Exception as e:
            return ("error", error_kind(e))
        if st == 200:
            try:
                sess = json.loads(body)["session"]
                return ("ok", sess if full else sess["backend"])
            except Exception:
                return ("error", "bad_json")
        if st == 404:
            return ("missing", None)
        return ("error", f"status_{st}")

    async def admin_check(self, sid):
        s = self.sessions[sid]
        t = self.now()
        lv = self.live.get(sid)
        ra, rb = await asyncio.gather(self.admin_get("A", *sid), self.admin_get("B", *sid))
        self.admin["samples"] += 1
        if ra[0] == "error" or rb[0] == "error":
            self.admin["errors"] += 1
            self.admin[f"error_{ra[1] if ra[0] == 'error' else rb[1]}"] += 1
            return
        if ra == rb and ra[0] == "ok":
            if s["ep"]:
                ep = s["ep"]
                ep["end"] = t
                self.admin_eps.append(ep)
                s["ep"] = None
            self.live_check(sid, s, t, ra[1], lv)
            return
        what = "missing" if ra == rb else "disagree"
        self.admin[f"seen_{what}"] += 1
        ans = {"A": ra[1] if ra[0] == "ok" else "404", "B": rb[1] if rb[0] == "ok" else "404"}
        self.note_history(sid, t, via="admin", answers=ans)
        if s["ep"] is None or s["ep"]["what"] != what:
            if s["ep"]:
                s["ep"]["end"] = t
                self.admin_eps.append(s["ep"])
            s["ep"] = {"what": what, "start": t, "first": ans, "flagged": False, "sid": list(sid)}
            return
        ep = s["ep"]
        if not ep["flagged"] and t - ep["start"] > self.a.settle:
            ep["flagged"] = True
            inv = "b_no_session_lost" if what == "missing" else "a_one_owner"
            self.violate(inv, source="admin API", pool=sid[0], key=sid[1], kind=s["kind"], client=s["client"],
                         what="record missing on both instances" if what == "missing" else "instances disagree",
                         since=round(ep["start"], 3), since_wall=fmt_wall(self.wall0 + ep["start"]),
                         first=ep["first"], now=ans, redis_outage=self.in_redis_outage(ep["start"]) or self.in_redis_outage(t),
                         context=self.context(ep["start"]), t=t,
                         history=self.history(sid, 12))
            self.evidence(sid, inv + " admin API")

    def live_check(self, sid, s, t, owner, lv):
        """Both instances agree the owner is `owner`: the session's open WebSocket / TCP
        connection (opened before the sample and still open) must be on it too."""
        if not lv or self.live.get(sid) is not lv or lv["since"] >= t:
            s["live_ep"] = None
            return
        self.admin["live_checks"] += 1
        if owner == lv["backend"]:
            if s.get("live_ep"):
                self.live_eps.append(t - s["live_ep"]["start"])
            s["live_ep"] = None
            return
        self.admin["live_mismatch_seen"] += 1
        self.note_history(sid, t, via="admin", live_on=lv["backend"], record=owner)
        ep = s.get("live_ep")
        if ep is None or ep["conn"] != lv["id"]:
            s["live_ep"] = {"conn": lv["id"], "start": t, "flagged": False}
            return
        if not ep["flagged"] and t - ep["start"] > self.a.settle:
            ep["flagged"] = True
            self.violate("a_one_owner", source="admin API vs open connection", pool=sid[0], key=sid[1],
                         kind=s["kind"], client=s["client"],
                         what="the session's open connection is on another backend than the owner both "
                              "instances record",
                         connection={"backend": lv["backend"], "via": lv["instance"], "pid": lv["pid"],
                                     "opened_at": round(lv["since"], 3),
                                     "opened_wall": fmt_wall(self.wall0 + lv["since"])},
                         record=owner, since=round(ep["start"], 3), since_wall=fmt_wall(self.wall0 + ep["start"]),
                         redis_outage=self.in_redis_outage(lv["since"]), context=self.context(lv["since"]), t=t,
                         history=self.history(sid, 12))
            self.evidence(sid, "a_one_owner open connection")

    async def admin_sampler(self):
        idx = 0
        while not self.monitors_stop:
            t_next = self.now() + 1.0
            live = [sid for sid, s in self.sessions.items() if not s["abandoned"]]
            batch = set()
            if live:
                for _ in range(min(len(live), self.a.sample)):
                    batch.add(live[idx % len(live)])
                    idx += 1
            watch = [sid for sid in live if self.sessions[sid]["ep"] or self.sessions[sid].get("live_ep")]
            batch.update(watch)
            await asyncio.gather(*(self.admin_check(sid) for sid in batch))
            # sessions in a disagreement are looked at again every 0.5 s
            await asyncio.sleep(0.5)
            watch = [sid for sid in live if self.sessions[sid]["ep"] or self.sessions[sid].get("live_ep")]
            if watch:
                await asyncio.gather(*(self.admin_check(sid) for sid in watch))
            await asyncio.sleep(max(0.0, t_next - self.now()))

    # -------------------------------------------------------------- end of run
    async def final_session_check(self):
        missing = []
        live = [sid for sid, s in self.sessions.items() if not s["abandoned"]]
        sem = asyncio.Semaphore(20)

        async def one(sid):
            async with sem:
                ra, rb = await asyncio.gather(self.admin_get("A", *sid), self.admin_get("B", *sid))
                return sid, ra, rb
        res = await asyncio.gather(*(one(s) for s in live))
        disagree = []
        for sid, ra, rb in res:
            if ra[0] == "missing" and rb[0] == "missing":
                missing.append(sid)
            elif ra != rb:
                disagree.append((sid, ra, rb))
        if missing or disagree:  # look again after the settle window
            await asyncio.sleep(self.a.settle + 0.5)
            res = await asyncio.gather(*(one(s) for s in set(missing) | {d[0] for d in disagree}))
            missing, disagree = [], []
            for sid, ra, rb in res:
                if ra[0] == "missing" and rb[0] == "missing":
                    missing.append(sid)
                    s = self.sessions[sid]
                    self.violate("b_no_session_lost", source="admin API, end of run", pool=sid[0], key=sid[1],
                                 kind=s["kind"], client=s["client"], what="record missing on both instances")
                elif ra != rb:
                    disagree.append((sid, ra, rb))
                    self.violate("a_one_owner", source="admin API, end of run", pool=sid[0], key=sid[1],
                                 A=list(ra), B=list(rb))
        return len(live), missing, disagree
