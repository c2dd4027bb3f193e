"""benches/chaos/common.py: the soak's fixed settings, the client bounds derived from
them (README.md, "Invariants and their thresholds"), and what every module shares."""
import re
import time

# tether's pool settings in the generated configs; the client bounds derive from them.
CONNECT = 1.0            # pools.*.timeouts.connect
RESPONSE_HEADER = 4.0    # pools.*.timeouts.response_header
HC_INTERVAL = 1.0        # health.interval (probes jitter +-10%)
HC_TIMEOUT = 0.5         # health.timeout
HC_FALL = 2              # health.fall
HC_RISE = 2
UPGRADE_GRACE = 20.0     # server.upgrade_grace
DRAIN_TIMEOUT = 10.0     # pools.*.drain_timeout (a removed backend's sessions move after it)
SESSION_TTL = "1h"       # far longer than a run: no session may expire during it
# chaos: how long a SIGKILLed backend stays away, how long a SIGSTOPped one stays frozen
# (longer than response_header, so requests stuck on it get their 504)
KILLED_FOR = 3.0
FREEZE = 6.0

# (c) every HTTP request, WebSocket handshake and TCP open (HELLO echoed) is answered
# within REQUEST_BOUND: a connect timeout, a retry's connect timeout, response_header,
# plus 1 s. A timeout is not retried by tether, so this is the longest legitimate wait.
REQUEST_BOUND = RESPONSE_HEADER + 2 * CONNECT + 1.0                      # 7.0 s
# Every echo over an open WebSocket / TCP session arrives, or the proxy closes the
# connection, within ECHO_BOUND of the message: a frozen backend is marked down after
# `fall` probes (interval + 10 % jitter each, the last one timing out) and its
# connections are closed then (on_backend_down: migrate), plus 2.3 s of slack.
ECHO_BOUND = round(HC_FALL * HC_INTERVAL * 1.1 + HC_TIMEOUT + 2.3, 1)    # 5.0 s
# The clients give up (close and reconnect) after twice their bound, so a slow answer
# is measured, not only flagged.
REQUEST_HARD = 2 * REQUEST_BOUND
ECHO_HARD = 2 * ECHO_BOUND
CONNS_ZERO_WITHIN = 5.0   # (d) tether_connections_active back to 0 this soon after the clients left
PANIC_RE = re.compile(r"panic", re.I)


def fmt_wall(ts):
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class BrokenRun(Exception):
    """The harness itself failed (exit 2)."""
