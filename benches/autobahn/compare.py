#!/usr/bin/env python3
"""Compare Autobahn|Testsuite fuzzing-client results case by case: direct vs tether.

Reads the fuzzing client's report directory (reports/servers: index.json and one
JSON file per agent and case) and compares, for every case id, the outcome the
echo server reached directly (agent `direct`) with the outcome through tether
(agent `tether`). An outcome is

    behavior / behaviorClose / remoteCloseCode / localCloseCode

(autobahn's verdicts on the exchanged messages and on the closing handshake, and
the close codes sent by the server and by the fuzzing client).

With --recheck DIR (a second fuzzing run over the differing cases only, with
agents direct_r1..direct_rN and tether_r1..tether_rN, all against the same two
servers), each differing case gets a verdict:

    timing-dependent  the direct server itself ends the case in more than one
                      way, and every outcome seen through tether was also seen
                      direct: the difference is a race, not something tether did
    differs           tether produced an outcome never seen direct
    not rechecked     no recheck run

Exit status: 0 no case differs (timing-dependent ones excepted, unless --strict),
1 some case differs, 2 the reports are unusable (missing, an agent or a case
absent). Standard library only.
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


def strip_html(text):
    return " ".join(re.sub(r"<[^>]*>", "", text or "").split())


class Broken(Exception):
    pass


class Report:
    """One reports/servers directory of the fuzzing client."""

    def __init__(self, directory):
        self.dir = directory
        path = os.path.join(directory, "index.json")
        try:
            with open(path) as f:
                self.index = json.load(f)
        except (OSError, ValueError) as e:
            raise Broken("cannot read %s: %s" % (path, e))
        self._cases = {}

    def agents(self):
        return sorted(self.index)

    def case(self, agent, case_id):
        """The case's full JSON report (with the wire log), or {} if unreadable."""
        k = (agent, case_id)
        if k not in self._cases:
            entry = self.index[agent][case_id]
            try:
                with open(os.path.join(self.dir, entry["reportfile"])) as f:
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
            "report_html": os.path.join(self.dir, re.sub(r"\.json$", ".html", entry.get("reportfile", ""))),
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", required=True, help="the fuzzing client's reports/servers directory")
    ap.add_argument("--base", default="direct", help="agent of the direct run (default: direct)")
    ap.add_argument("--proxy", default="tether", help="agent through the proxy (default: tether)")
    ap.add_argument("--recheck", help="reports/servers directory of the recheck run (agents BASE_rN, PROXY_rN)")
    ap.add_argument("--json", help="write the comparison here")
    ap.add_argument("--ids", help="write the differing case ids here, one per line")
    ap.add_argument("--strict", action="store_true", help="timing-dependent cases count as differing too")
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
    base, proxy = args.base, args.proxy
    for agent in (base, proxy):
        if agent not in rep.index:
            raise Broken("agent %r not in %s/index.json (agents: %s)" % (agent, args.report, ", ".join(rep.agents())))
    ids_base, ids_proxy = set(rep.index[base]), set(rep.index[proxy])
    missing = {base: sorted(ids_proxy - ids_base, key=case_key), proxy: sorted(ids_base - ids_proxy, key=case_key)}
    ids = sorted(ids_base & ids_proxy, key=case_key)
    if not ids:
        raise Broken("no case has results for both %s and %s" % (base, proxy))

    recheck = Report(args.recheck) if args.recheck else None
    rb = rp = []
    if recheck:
        rb = [a for a in recheck.agents() if re.fullmatch(re.escape(base) + r"_r\d+", a)]
        rp = [a for a in recheck.agents() if re.fullmatch(re.escape(proxy) + r"_r\d+", a)]
        if not rb or not rp:
            raise Broken("recheck %s has no %s_rN or %s_rN agents (agents: %s)"
                         % (args.recheck, base, proxy, ", ".join(recheck.agents())))

    tally = {base: collections.Counter(), proxy: collections.Counter()}
    differing = []
    for cid in ids:
        ob, op = rep.outcome(base, cid), rep.outcome(proxy, cid)
        tally[base]["%s/%s" % ob[:2]] += 1
        tally[proxy]["%s/%s" % op[:2]] += 1
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
        if recheck:
            seen_b = collections.Counter([fmt(ob)])
            seen_p = collections.Counter([fmt(op)])
            absent = 0
            for agents, seen in ((rb, seen_b), (rp, seen_p)):
                for a in agents:
                    if cid in recheck.index.get(a, {}):
                        seen[fmt(recheck.outcome(a, cid))] += 1
                    else:
                        absent += 1
            if absent:
                raise Broken("case %s missing from %d agent(s) of the recheck" % (cid, absent))
            d["recheck"] = {base: dict(seen_b), proxy: dict(seen_p)}
            if len(seen_b) > 1 and set(seen_p) <= set(seen_b):
                d["verdict"] = "timing-dependent"
            else:
                d["verdict"] = "differs"
        differing.append(d)

    timing = [d for d in differing if d["verdict"] == "timing-dependent"]
    real = [d for d in differing if d["verdict"] != "timing-dependent"]
    counted = differing if args.strict else real

    # --- the report a person reads ----------------------------------------------------
    print("%d cases, %d differ (%s vs %s: behavior/behaviorClose close remote/local)"
          % (len(ids), len(differing), base, proxy))
    for agent in (base, proxy):
        print("  %-8s %s" % (agent, ", ".join("%s %d" % kv for kv in sorted(tally[agent].items()))))
    if recheck:
        print("recheck: each differing case run again %d times direct and %d times through %s"
              % (len(rb), len(rp), proxy))
        print("  %d timing-dependent (the direct server ends them in several ways, %s added none),"
              " %d differ" % (len(timing), proxy, len(real)))
    for d in differing:
        b, p = d[base], d[proxy]
        print("")
        print("%s  [%s]  %s" % (d["id"], d["verdict"], d["description"]))
        for agent, x in ((base, b), (proxy, p)):
            print("  %-7s %s; %s; %s; clean=%s%s; received %s"
                  % (agent, x["outcome"], x["result"], x["resultClose"], x["wasClean"],
                     " (%s)" % x["wasNotCleanReason"] if x["wasNotCleanReason"] else "", x["received"]))
        if "recheck" in d:
            for agent in (base, proxy):
                print("  %-7s all runs: %s" % (agent, ", ".join(
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
        "timing_dependent": len(timing),
        "differ_for_real": len(real) if recheck else None,
        "strict": args.strict,
        "tally": {a: dict(t) for a, t in tally.items()},
        "missing": missing,
        "differing": differing,
        "report": os.path.abspath(args.report),
        "recheck": os.path.abspath(args.recheck) if recheck else None,
    }
    if any(missing.values()):
        return result, 2
    return result, (1 if counted else 0)


if __name__ == "__main__":
    sys.exit(main())
