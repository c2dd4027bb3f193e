#!/usr/bin/env python3
"""benches/capacity/model.py: the capacity table of docs/capacity.md, computed from the
slopes `capacity.py` measures (a JSON file) and a fleet described by the environment.

  python3 benches/capacity/model.py slopes.json          # the table for the defaults
  DEVICES=200000 WS_SHARE=0 REQ_S=20000 python3 benches/capacity/model.py slopes.json

The model is linear on purpose: every resource is a fixed cost per process plus a slope
per connection, session, request, new connection, TLS handshake or reconnect, each slope
measured on its own (capacity.py) and checked on a mixed point it was not fitted on.

Fleet (environment, defaults in brackets):
  DEVICES [1000000]    connected devices, one long-lived connection and one session each
  WS_SHARE [1.0]       share of them on WebSocket (the rest raw TCP / TLS device tunnels)
  REQ_S [100000]       HTTP requests/s on kept-alive connections, sticky by cookie
  TLS [1]              1: device connections are TLS (a full handshake per new connection)
  CHURN_H [24]         a device reconnects every CHURN_H hours on average (no failure)
  BACKENDS [20]        backends of the pool: a dead one sends DEVICES/BACKENDS clients back
  STORM_S [2]          ... which must all be reconnected within STORM_S seconds
  CORES_PER_NODE [8]   cores of one proxy machine
  UTIL [0.6]           steady-state CPU share planned per core (headroom for storms)
  NOFILE [1048576]     open-files limit of a tether process (contrib/tether.service)
  SESSION_TTL_H [24]   store.session_ttl: a busy session's Redis TTL is refreshed every tenth
"""
import json
import math
import os
import sys

E = os.environ


def fleet():
    f = lambda k, d: float(E.get(k, d))  # noqa: E731
    return dict(devices=f("DEVICES", 1_000_000), ws_share=f("WS_SHARE", 1.0), req_s=f("REQ_S", 100_000),
                tls=f("TLS", 1), churn_h=f("CHURN_H", 24), backends=f("BACKENDS", 20), storm_s=f("STORM_S", 2),
                cores_per_node=f("CORES_PER_NODE", 8), util=f("UTIL", 0.6), nofile=f("NOFILE", 1_048_576),
                session_ttl_h=f("SESSION_TTL_H", 24))


def per_conn(m, ws_share):
    """(user, kernel) bytes one proxied connection of the fleet's mix costs the proxy."""
    user = ws_share * m["ws_rss_B"] + (1 - ws_share) * m["tcp_rss_B"]
    kern = ws_share * m["ws_kernel_B"] + (1 - ws_share) * m["tcp_kernel_B"]
    return user, kern


def plan(m, fl):
    """Everything the table shows, as a dict of named figures."""
    d = fl["devices"]
    user, kern = per_conn(m, fl["ws_share"])
    new_conn_s = d / (fl["churn_h"] * 3600)
    # a WebSocket comes back with a GET and an upgrade (the storm's measured cost); a raw
    # TCP device with one new connection; either adds a TLS handshake when it uses TLS
    ws = fl["ws_share"]
    reconnect_us = ws * m["us_reconnect"] + (1 - ws) * m["us_conn"] + fl["tls"] * m["us_hs"]
    # steady CPU of the fleet, in cores: requests and reconnect churn
    steady_cores = (fl["req_s"] * m["us_req"] + new_conn_s * reconnect_us) / 1e6
    # the storm: a backend's share of the fleet reconnects; every instance also hears
    # each moved session's change event from Redis
    storm_clients = d / fl["backends"]
    storm_cpu_s = storm_clients * reconnect_us / 1e6
    conns_per_proc_max = int(fl["nofile"] - 1000) // 2
    by_fd = math.ceil(d / conns_per_proc_max)
    instances = max(by_fd, 1)
    while True:
        events_s = storm_clients * m.get("us_event", 0) / 1e6 if instances > 1 else 0.0
        steady_i = steady_cores / instances
        storm_i = (storm_cpu_s / instances + events_s) / fl["storm_s"]
        need_i = max(steady_i / fl["util"], steady_i + storm_i)
        if need_i <= fl["cores_per_node"] or instances >= 10_000:
            break
        instances += 1
    n_plus_1 = instances + 1  # one node may fail (or be upgraded) without losing capacity
    conns_i = d / instances
    ports_backends = math.ceil(conns_i / m["port_range"])
    ram_i = m["base_rss_B"] + conns_i * (user + kern) + conns_i * m["session_redis_cache_B"]
    ram_embedded = m["base_rss_B"] + d * (user + kern) + d * m["session_embedded_B"]
    redis_mem = d * m["session_redis_B"]
    ttl_s = fl["session_ttl_h"] * 3600
    # a reconnect may miss the instance's cache (one read); a busy session is refreshed
    # once per tenth of its TTL (store/redis/refresh.rs); a cached hit costs nothing
    redis_ops = new_conn_s + d / (ttl_s / 10)
    redis_storm_ops = storm_clients / fl["storm_s"]  # one compare-and-set per moved session
    return dict(
        user_B=user, kernel_B=kern, new_conn_s=new_conn_s, reconnect_us=reconnect_us,
        steady_cores=steady_cores, storm_clients=storm_clients, storm_cpu_s=storm_cpu_s,
        conns_per_proc_max=conns_per_proc_max, by_fd=by_fd, instances=instances, need_i=need_i,
        storm_i=storm_i, events_s=events_s, cores=need_i * instances, n_plus_1=n_plus_1, conns_i=conns_i,
        ports_backends=ports_backends, ram_i=ram_i, ram_embedded=ram_embedded, redis_mem=redis_mem,
        redis_ops=redis_ops, redis_storm_ops=redis_storm_ops)


def gib(b):
    return b / (1 << 30)


def table(m, fl):
    p = plan(m, fl)
    ws = fl["ws_share"]
    mix = f"{ws:.0%} WebSocket, {1 - ws:.0%} TCP" + (", TLS" if fl["tls"] else "")
    rows = [
        ("fleet", f"{fl['devices']:,.0f} devices ({mix}), {fl['req_s']:,.0f} requests/s, "
                  f"a reconnect every {fl['churn_h']:g} h ({p['new_conn_s']:,.0f}/s)"),
        ("memory per device (proxy)", f"{p['user_B'] / 1024:.2f} KB user + {p['kernel_B'] / 1024:.2f} KB kernel"
                                      f" + {m['session_embedded_B']:.0f} B session (embedded store)"),
        ("steady CPU", f"{p['steady_cores']:.2f} cores ({fl['req_s']:,.0f} x {m['us_req']:.1f} us per request"
                       f" + {p['new_conn_s']:,.0f} x {p['reconnect_us']:.0f} us per reconnect)"),
        ("storm: one backend of " + f"{fl['backends']:g} dies",
         f"{p['storm_clients']:,.0f} clients reconnect within {fl['storm_s']:g} s: {p['storm_cpu_s']:.1f}"
         f" core-seconds over the fleet, plus {p['events_s']:.2f} core-seconds per instance for the Redis change events"),
        ("instances", f"{p['instances']} active, {p['need_i']:.1f} cores each (steady at {fl['util']:.0%}, or steady"
                      f" + storm; file descriptors allow {p['conns_per_proc_max']:,} connections per process);"
                      f" {p['n_plus_1']} with one spare"),
        ("cores", f"{p['cores']:.1f} in all"),
        ("RAM per instance (Redis store)", f"{gib(p['ram_i']):.1f} GiB for {p['conns_i']:,.0f} connections"),
        ("RAM, one instance with the embedded store", f"{gib(p['ram_embedded']):.1f} GiB"
         + (" (beyond one process's file descriptors: needs the Redis store)" if p["by_fd"] > 1 else "")),
        ("Redis memory", f"{gib(p['redis_mem']):.2f} GiB for {fl['devices']:,.0f} sessions"
                         f" ({m['session_redis_B']:.0f} B each; x2 with a replica)"),
        ("Redis operations/s", f"{p['redis_ops']:,.0f} steady (new connections + TTL refreshes; cached hits"
                               f" cost none), {p['redis_storm_ops']:,.0f} during a storm"),
        ("backend addresses", f">= {p['ports_backends']} per instance ({p['conns_i']:,.0f} connections over"
                              f" {m['port_range']:,} ephemeral ports per backend address)"),
    ]
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows), p


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: model.py slopes.json (written by capacity.py)")
    m = json.load(open(sys.argv[1]))["slopes"]
    print(table(m, fleet())[0])


if __name__ == "__main__":
    main()
