#!/usr/bin/env python3
"""Compare Autobahn|Testsuite fuzzing-client results case by case: direct vs tether.

Reads the fuzzing client's report directory (reports/servers: index.json and one
JSON file per agent and case) and compares, for every case id, the outcome the
echo server reached directly (agent `direct`) with the outcome through tether
(agent `tether`). An outcome is

    behavior / behaviorClose / remoteCloseCode / localCloseCode

(autobahn's verdicts on the exchanged messages and on the closing handshake, and
the close codes sent by the server and by the fuzzing client).

With --reference AGENT (say `haproxy`: the same server behind another proxy),
that agent's outcomes are shown beside tether's, and the cases where it differs
from direct are counted: a baseline of what any proxy in the path changes.

Each differing case gets a verdict:

    race      the suite's own expectation for the case accepts both outcomes: OK
              with the echo of the message sent before an invalid frame, and
              NON-STRICT without it (the server fails the connection by dropping
              it, and an echo still queued in the same read is lost; whether it is
              depends on how TCP segments reach the server, which no proxy keeps),
              and the two outcomes differ in nothing else
    timing-dependent  (needs --recheck) the direct server itself ends the case in
              more than one way, and every outcome seen through tether was also
              seen direct
    differs   anything else: tether changed how the case ends
    not rechecked  differs, and no --recheck run was given to tell

--recheck DIR is a second fuzzing run over the differing cases only, with agents
direct_r1..direct_rN and tether_r1..tether_rN (and REFERENCE_rN if a reference
is given), all against the same servers.

Exit status: 0 no case differs (races and timing-dependent ones excepted, unless
--strict), 1 some case differs, 2 the reports are unusable (missing, an agent or
a case absent). Standard library only.
"""

import argparse
import collections
import json
import os
import re
import sys

FIELDS = ("behavior", "behaviorClose", "remoteCloseCode", "localCloseCode")


def case_key(case_id):
    return tuple(int(x) for x in case_id.split("."))


def fmt(outcome):
    """('OK', 'OK', 1000, 1000) -> 'OK/OK close 1000/1000' ('-' for no code)."""
    b, bc, rc, lc = outcome
    return "%s/%s close %s/%s" % (b, bc, "-" if rc is None else rc, "-" if lc is None else lc)


def suite_allows_race(case, ob, op):
    """The case's expectation takes both OK (echo received) and NON-STRICT (echo lost
    as the server fails the connection), and the outcomes differ only that way."""
    e = case.get("expected") or {}
    ok, ns = e.get("OK"), e.get("NON-STRICT")
    if not isinstance(ok, list) or not isinstance(ns, list) or len(ns) >= len(ok) or ok[:len(ns)] != ns:
        return False
    return {ob[0], op[0]} == {"OK", "NON-STRICT"} and ob[1:] == op[1:]


def strip_html(text):
    return " ".join(re.sub(r"<[^>]*>", "", text or "").split())


class Broken(Exception):
    pass


class Report:
    """The fuzzing client's reports/servers directories (one per chunk of cases), merged."""

    def __init__(self, directories):
        self.dirs = directories
        self.index = {}  # agent -> case id -> index entry (+ "_dir": where its files are)
        for directory in directories:
            path = os.path.join(directory, "index.json")
            try:
                with open(path) as f:
                    index = json.load(f)
            except (OSError, ValueError) as e:
                raise Broken("cannot read %s: %s" % (path, e))
            for agent, cases in index.items():
                for cid, entry in cases.items():
                    self.index.setdefault(agent, {})[cid] = dict(entry, _dir=directory)
        self._cases = {}

    def agents(self):
        return sorted(self.index)

    def case(self, agent, case_id):
        """The case's full JSON report (with the wire log), or {} if unreadable."""
        k = (agent, case_id)
        if k not in self._cases:
            entry = self.index[agent][case_id]
            try:
                with open(os.path.join(entry["_dir"], entry["reportfile"])) as f:
                    self._cases[k] = json.load(f)
            except (OSError, ValueError, KeyError):
                self._cases[k] = {}
        return self._cases[k]

    def outcome(self, agent, case_id):
        entry = self.index[agent][case_id]
        local = self.case(agent, case_id).get("localCloseCode")
        return (entry.get("behavior"), entry.get("behaviorClose"), entry.get("remoteCloseCode"), local)

    def details(self, agent, case_id):
        """What the case's report says about how it ended, for a person to read."""
        c = self.case(agent, case_id)
        entry = self.index[agent][case_id]
        received = c.get("received")
        received_s = json.dumps(received)
        if len(received_s) > 300:
            received_s = received_s[:300] + " ..."
        octets = lambda stats: sum(int(size) * n for size, n in (stats or {}).items())  # noqa: E731
        return {
            "outcome": fmt(self.outcome(agent, case_id)),
            "behavior": entry.get("behavior"),
            "behaviorClose": entry.get("behaviorClose"),
            "remoteCloseCode": entry.get("remoteCloseCode"),
            "localCloseCode": c.get("localCloseCode"),
            "remoteCloseReason": c.get("remoteCloseReason"),
            "result": c.get("result"),
            "resultClose": c.get("resultClose"),
            "wasClean": c.get("wasClean"),
            "wasNotCleanReason": c.get("wasNotCleanReason"),
            "droppedByMe": c.get("droppedByMe"),
            "failedByMe": c.get("failedByMe"),
            "received": received_s,
            "octets_sent": octets(c.get("txOctetStats")),
            "octets_received": octets(c.get("rxOctetStats")),
            "duration_ms": entry.get("duration"),
            "report_html": os.path.join(entry["_dir"], re.sub(r"\.json$", ".html", entry.get("reportfile", ""))),
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", required=True, action="append",
                    help="the fuzzing client's reports/servers directory (repeat for several chunks)")
    ap.add_argument("--base", default="direct", help="agent of the direct run (default: direct)")
    ap.add_argument("--proxy", default="tether", help="agent through the proxy (default: tether)")
    ap.add_argument("--reference", help="another proxy's agent, shown beside PROXY (e.g. haproxy)")
    ap.add_argument("--recheck", help="reports/servers directory of the recheck run (agents BASE_rN, PROXY_rN)")
    ap.add_argument("--json", help="write the comparison here")
    ap.add_argument("--ids", help="write the differing case ids here, one per line")
    ap.add_argument("--strict", action="store_true", help="race and timing-dependent cases count as differing too")
    args = ap.parse_args()

    try:
        result, rc = compare(args)
    except Broken as e:
        print("compare.py: %s" % e, file=sys.stderr)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"error": str(e)}, f, indent=1)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
    if args.ids:
        with open(args.ids, "w") as f:
            for d in result["differing"]:
                f.write(d["id"] + "\n")
    return rc


def compare(args):
    rep = Report(args.report)
    where = " ".join(args.report)
    base, proxy, ref = args.base, args.proxy, args.reference
    for agent in (base, proxy) + ((ref,) if ref else ()):
        if agent not in rep.index:
            raise Broken("agent %r not in %s (agents: %s)" % (agent, where, ", ".join(rep.agents())))
    ids_base, ids_proxy = set(rep.index[base]), set(rep.index[proxy])
    missing = {base: sorted(ids_proxy - ids_base, key=case_key), proxy: sorted(ids_base - ids_proxy, key=case_key)}
    ids = sorted(ids_base & ids_proxy, key=case_key)
    if not ids:
        raise Broken("no case has results for both %s and %s" % (base, proxy))

    recheck = Report([args.recheck]) if args.recheck else None
    shown = (base, proxy) + ((ref,) if ref else ())
    rechecked = {}  # agent -> its recheck agents
    if recheck:
        for agent in shown:
            rechecked[agent] = [a for a in recheck.agents() if re.fullmatch(re.escape(agent) + r"_r\d+", a)]
            if not rechecked[agent]:
                raise Broken("recheck %s has no %s_rN agents (agents: %s)"
                             % (args.recheck, agent, ", ".join(recheck.agents())))

    tally = {a: collections.Counter() for a in shown}
    differing = []
    ref_differ = []
    for cid in ids:
        ob, op = rep.outcome(base, cid), rep.outcome(proxy, cid)
        for agent in shown:
            if cid in rep.index[agent]:
                tally[agent]["%s/%s" % rep.outcome(agent, cid)[:2]] += 1
        if ref and cid in rep.index[ref] and rep.outcome(ref, cid) != ob:
            ref_differ.append(cid)
        if ob == op:
            continue
        d = {
            "id": cid,
            "description": strip_html(rep.case(base, cid).get("description")),
            "expectation": strip_html(rep.case(base, cid).get("expectation")),
            base: rep.details(base, cid),
            proxy: rep.details(proxy, cid),
            "verdict": "not rechecked",
        }
        if ref and cid in rep.index[ref]:
            d[ref] = rep.details(ref, cid)
        if recheck:
            seen = {}
            for agent in shown:
                seen[agent] = collections.Counter()
                if cid in rep.index[agent]:
                    seen[agent][fmt(rep.outcome(agent, cid))] += 1
                for a in rechecked[agent]:
                    if cid not in recheck.index[a]:
                        raise Broken("case %s missing from agent %s of the recheck" % (cid, a))
                    seen[agent][fmt(recheck.outcome(a, cid))] += 1
            d["recheck"] = {a: dict(c) for a, c in seen.items()}
            seen_b, seen_p = seen[base], seen[proxy]
            if len(seen_b) > 1 and set(seen_p) <= set(seen_b):
                d["verdict"] = "timing-dependent"
            else:
                d["verdict"] = "differs"
        if suite_allows_race(rep.case(base, cid), ob, op):
            d["verdict"] = "race"
        differing.append(d)

    verdicts = collections.Counter(d["verdict"] for d in differing)
    excused = ("race", "timing-dependent")
    real = [d for d in differing if d["verdict"] not in excused]
    counted = differing if args.strict else real

    # --- the report a person reads ----------------------------------------------------
    print("%d cases, %d differ (%s vs %s: behavior/behaviorClose close remote/local)"
          % (len(ids), len(differing), base, proxy))
    for agent in shown:
        print("  %-8s %s" % (agent, ", ".join("%s %d" % kv for kv in sorted(tally[agent].items()))))
    if ref:
        print("reference: %d cases end differently through %s than %s%s"
              % (len(ref_differ), ref, base, (": " + " ".join(ref_differ)) if ref_differ else ""))
    if recheck:
        print("recheck: each differing case run again %d times each way (%s)"
              % (len(rechecked[base]), ", ".join(shown)))
    if differing:
        print("verdicts: %s; %d count as differing%s" % (
            ", ".join("%s %d" % kv for kv in sorted(verdicts.items())), len(counted),
            " (--strict: all)" if args.strict else " (race and timing-dependent ones do not; STRICT=1 counts them)"))
    for d in differing:
        b, p = d[base], d[proxy]
        print("")
        print("%s  [%s]  %s" % (d["id"], d["verdict"], d["description"]))
        for agent, x in [(a, d[a]) for a in shown if a in d]:
            print("  %-8s %s; %s; %s; clean=%s%s; received %s"
                  % (agent, x["outcome"], x["result"], x["resultClose"], x["wasClean"],
                     " (%s)" % x["wasNotCleanReason"] if x["wasNotCleanReason"] else "", x["received"]))
        if "recheck" in d:
            for agent in shown:
                print("  %-8s all runs: %s" % (agent, ", ".join(
                    "%dx %s" % (n, o) for o, n in sorted(d["recheck"][agent].items(), key=lambda kv: -kv[1]))))
        print("  reports: %s" % p["report_html"])
    for agent, ms in missing.items():
        if ms:
            print("missing for %s: %s" % (agent, " ".join(ms)))

    result = {
        "base": base,
        "proxy": proxy,
        "fields": list(FIELDS),
        "cases": len(ids),
        "differ": len(differing),
        "verdicts": dict(verdicts),
        "counted": [d["id"] for d in counted],
        "reference": {"agent": ref, "differ": ref_differ} if ref else None,
        "strict": args.strict,
        "tally": {a: dict(t) for a, t in tally.items()},
        "missing": missing,
        "differing": differing,
        "report": [os.path.abspath(d) for d in args.report],
        "recheck": os.path.abspath(args.recheck) if recheck else None,
    }
    if any(missing.values()):
        return result, 2
    return result, (1 if counted else 0)


if __name__ == "__main__":
    sys.exit(main())
