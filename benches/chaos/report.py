"""benches/chaos/report.py: the summary, printed and written to DIR/summary.txt and
DIR/summary.json, and the exit status it implies.

A mixin of soak.Soak: the state it reads and writes is created in Soak.__init__."""
import collections
import json
import os

from common import CONNS_ZERO_WITHIN, ECHO_BOUND, REQUEST_BOUND, fmt_wall


class Report:
    # -------------------------------------------------------------- summary
    def summary(self, zero, last, n_sessions, missing, disagree, panics):
        a = self.a

        def pct(xs, p):
            if not xs:
                return None
            xs = sorted(xs)
            return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000, 1)

        def lat(name):
            xs = self.lat[name]
            return {"n": len(xs), "p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99),
                    "max_ms": round(max(xs) * 1000, 1) if xs else None}

        inv_names = {
            "a_one_owner": f"(a) one owner at a time: A and B agree, and open connections are on the recorded "
                           f"owner (disagreement > {a.settle:g} s)",
            "b_no_session_lost": "(b) no confirmed session lost (new cookie, other key, 404 on both > settle, wrong echo)",
            "c_timeouts": f"(c) no client waits longer than its bound (requests/opens {REQUEST_BOUND:g} s, echoes {ECHO_BOUND:g} s)",
            "d_connections_return_to_0": f"(d) tether_connections_active back to 0 within {CONNS_ZERO_WITHIN:g} s; predecessors gone",
            "e_rss": f"(e) RSS of every tether process <= {a.rss_limit_mb} MiB",
            "f_no_panic_or_crash": "(f) no panic in any tether log, no tether process died",
            "g_chaos_ops": "(g) every reload answered 200 and took effect, every upgrade's successor became ready",
        }
        by_inv = collections.defaultdict(list)
        for v in self.violations:
            by_inv[v["invariant"]].append(v)
        rss = {}
        for pid, (kib, inst) in self.rss_max.items():
            if kib > rss.get(inst, (0, 0))[0]:
                rss[inst] = (kib, pid)
        evk = collections.Counter(e["kind"] for e in self.events)
        lags = [l for _, l in self.loop_lag]
        res = {
            "duration_s": a.duration, "seed": a.seed, "wall_start": fmt_wall(self.wall0),
            "box": {"cpus": os.cpu_count(), "loadavg_start": self.load0,
                    "loadavg_end": open("/proc/loadavg").read().split()[:3]},
            "clients": {"http": a.http_clients, "ws": a.ws_clients, "tcp": a.tcp_clients},
            "bounds": {"request_s": REQUEST_BOUND, "echo_s": ECHO_BOUND, "settle_s": a.settle,
                       "rss_limit_mib": a.rss_limit_mb, "conns_zero_within_s": CONNS_ZERO_WITHIN},
            "events": dict(evk), "event_list": [f"{e['t']:.0f}s {e['kind']} {e.get('target', '')}" for e in self.events],
            "counts": {k: dict(v) for k, v in self.kinds.items()},
            "latency": {k: lat(k) for k in self.lat},
            "sessions_confirmed": {k: sum(1 for s in self.sessions.values() if s["kind"] == k) for k in ("http", "ws", "tcp")},
            "admin_checks": dict(self.admin),
            "admin_disagreement_longest_s": round(max([e["end"] - e["start"] for e in self.admin_eps] or [0]), 2),
            "admin_disagreement_episodes": len(self.admin_eps),
            "live_connection_mismatch": {"episodes": len(self.live_eps),
                                         "longest_s": round(max(self.live_eps or [0]), 2),
                                         "checks": self.admin["live_checks"]},
            "data_path_disagreements": {k: {"episodes": len([d for kk, d in self.dp_episodes if kk == k]),
                                            "longest_s": round(max([d for kk, d in self.dp_episodes if kk == k] or [0]), 2)}
                                        for k in ("http", "ws", "tcp")},
            "connections_zero_after_s": zero, "connections_last": last,
            "predecessors": [{"instance": p["instance"], "pid": p["pid"],
                              "exited_after_s": None if p["exited"] is None else round(p["exited"] - p["since"], 1)}
                             for p in self.predecessors],
            "rss_max_mib": {inst: {"mib": round(kib / 1024, 1), "pid": pid} for inst, (kib, pid) in rss.items()},
            "rss_first_mib": {inst: {"mib": round(kib / 1024, 1), "pid": pid}
                              for inst, (kib, pid) in self.rss_first.items()},
            "session_moves_metrics": self.moves_from_metrics(),
            "log_counts": self.log_counts(),
            "panics": panics,
            "notes": dict(self.notes),
            "client_loop_lag_ms": {"p99": pct(lags, 99), "max": round(max(lags or [0]) * 1000, 1)},
            "redis_outages_s": [round(e - s, 2) for s, e in self.redis_outages if e is not None],
            "invariants": {},
        }
        for inv, name in inv_names.items():
            vs = by_inv.get(inv, [])
            keys = {(v.get("pool"), v.get("key")) for v in vs if v.get("key")}
            ctx = collections.Counter((v.get("context") or "no chaos event").split(" (+")[0].split(" ")[0] for v in vs)
            res["invariants"][inv] = {"name": name, "met": not vs, "violations": len(vs), "sessions": len(keys),
                                      "by_source": dict(collections.Counter(v.get("source", v.get("what", "?")) for v in vs)),
                                      "by_chaos_event": dict(ctx), "examples": vs[:5]}
        ok = all(v["met"] for v in res["invariants"].values())
        res["result"] = "all invariants held" if ok else "VIOLATED"
        with open(os.path.join(self.dir, "summary.json"), "w") as f:
            json.dump(res, f, indent=1)
        lines = []
        P = lines.append
        P("")
        P(f"chaos soak summary: {a.duration}s of load, seed {a.seed}, started {res['wall_start']}, "
          f"{os.cpu_count()} CPUs, load avg {' '.join(self.load0)} -> {' '.join(res['box']['loadavg_end'])}")
        P(f"clients: {a.http_clients} HTTP (keep-alive, alternating A/B, every ~{a.http_interval:g}s), "
          f"{a.ws_clients} WebSocket (1 msg/s), {a.tcp_clients} TCP devices (1 line/s)")
        P(f"chaos: {len(self.events)} events: " + ", ".join(f"{k} {v}" for k, v in sorted(evk.items())))
        for e in self.events:
            P(f"  {e['t']:6.1f}s {e['wall']} {e['kind']:<7} {e.get('target', ''):<14} {e.get('result', '')}")
        for kind in ("http", "ws", "tcp"):
            c = self.kinds[kind]
            main = c["requests"] if kind == "http" else c["echoes"]
            fails = {x: v for x, v in sorted(c.items()) if x.startswith(("failed_", "open_failed_", "closed_", "setup_failed"))}
            if kind == "http":
                extra = (f"connections opened {c['connections']} (keep-alive retries {c['keepalive_retries']}), "
                         f"moves {c['moves']} ({c['moves_with_header']} seen with X-Tether-Moved-From)")
            else:
                extra = f"lost echoes {c['lost_echo']}, reconnects {c['reconnects']}, moves {c['moves']}"
            P(f"{kind:<4}: {'requests' if kind == 'http' else 'echoes'} {main}, failed {c['failed']}, "
              f"{extra}, slow {c['slow']}")
            if fails:
                P(f"      {json.dumps(fails)}")
        for name in self.lat:
            P(f"latency {name:<9} {json.dumps(res['latency'][name])}")
        P(f"sessions confirmed: {json.dumps(res['sessions_confirmed'])}; admin samples {self.admin['samples']} "
          f"(errors {self.admin['errors']}), admin disagreements {len(self.admin_eps)} "
          f"(longest {res['admin_disagreement_longest_s']}s)")
        P(f"open connection vs recorded owner: {self.admin['live_checks']} checks, "
          f"{self.admin['live_mismatch_seen']} mismatching samples, {len(self.live_eps)} resolved episodes "
          f"(longest {res['live_connection_mismatch']['longest_s']}s)")
        P(f"data-path disagreements (first differing answer to the next agreeing one; a violation for HTTP "
          f"only; WebSocket/TCP ones are informational, those sessions are routed only at each "
          f"(re)connection): {json.dumps(res['data_path_disagreements'])}")
        P(f"session moves (tether metrics, last scrape of each process): {json.dumps(res['session_moves_metrics'])}")
        P(f"tether logs: {json.dumps(res['log_counts'])}; predecessors: {json.dumps(res['predecessors'])}")
        P("RSS after set-up: " + ", ".join(f"{i} {v['mib']} MiB" for i, v in sorted(res['rss_first_mib'].items()))
          + "; max RSS: " + ", ".join(f"{i} {v['mib']} MiB (pid {v['pid']})" for i, v in sorted(res['rss_max_mib'].items()))
          + f" (limit {a.rss_limit_mb} MiB); connections_active 0 after {json.dumps(zero)}")
        P(f"client loop lag: {json.dumps(res['client_loop_lag_ms'])}; redis outages {res['redis_outages_s']}")
        if self.notes:
            P(f"notes: {json.dumps(dict(self.notes))}")
        P("invariants:")
        for inv, r in res["invariants"].items():
            P(f"  {'met     ' if r['met'] else 'VIOLATED'} {r['name']}" + ("" if r["met"] else
              f": {r['violations']} violations, {r['sessions']} sessions; by source {json.dumps(r['by_source'])};"
              f" by chaos event {json.dumps(r['by_chaos_event'])}"))
            for ex in r["examples"][:3]:
                P(f"           {json.dumps(ex)[:600]}")
        P(f"result: {res['result']}   (details: {self.dir}/summary.json, violations.jsonl, evidence.jsonl, events.jsonl, tether-*.log, redis/)")
        text = "\n".join(lines)
        with open(os.path.join(self.dir, "summary.txt"), "w") as f:
            f.write(text + "\n")
        print(text, flush=True)
        return 0 if ok else 1
