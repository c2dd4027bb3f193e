#!/usr/bin/env bash
# benches/load/reload.sh: "reload under load". For tether and HAProxy, in interleaved runs
# on loopback: 100 WebSockets opened through the proxy, then keep-alive HTTP/1.1 GETs on
# a few connections for the whole run while the proxy's config is reloaded 50 times
# (every 0.25 s), alternating two variants (a: 3 backends; b: b2/s2 weight 2 and a 4th
# backend). Counts failed requests and dropped WebSockets (target for tether: 0 and 0).
# The client and the reloads are reload_client.py's; see README.md, "Reload under load".
#
# Usage: benches/load/reload.sh [--runs N] [--proxy tether|haproxy|both]
#                               [--trigger api|sighup] [--reloads N] [--interval S]
#   --runs 3           runs per proxy (interleaved: haproxy tether haproxy tether ...)
#   --proxy both       which proxies
#   --trigger api      tether's reload: api = POST http://ADMIN/api/reload (must answer 200),
#                      sighup = kill -HUP (tether_config_reloads_total{result="ok"} must go up)
#   --reloads 50 --interval 0.25
#
# Environment (all optional):
#   PROXY_CPU=0 LOAD_CPU=1    the proxy alone on PROXY_CPU; client + backends on LOAD_CPU
#   TETHER_BIN=path           default target/release/tether (not built here)
#   WHOAMI_BIN=path           default target/release/examples/whoami; when absent, the
#                             stand-in backend of reload_client.py (HTTP + WebSocket echo)
#   TETHER_LOG=warn           RUST_LOG for tether
#   HTTP_CONNS=4 WEBSOCKETS=100 WS_INTERVAL=0.2 SETTLE=2
#   HARD_STOP_AFTER=          e.g. 5s: adds `hard-stop-after 5s` to HAProxy's global section
#   IDLE_CLOSE_ON_RESPONSE=1  adds `option idle-close-on-response` to HAProxy's defaults
#   KEEP_TMP=1                keep the temp dir (configs, logs, JSON lines)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

RUNS=3
PROXIES=both
TRIGGER=api
RELOADS=50
INTERVAL=0.25
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TETHER_LOG=${TETHER_LOG:-warn}
HTTP_CONNS=${HTTP_CONNS:-4}
WEBSOCKETS=${WEBSOCKETS:-100}
WS_INTERVAL=${WS_INTERVAL:-0.2}
SETTLE=${SETTLE:-2}
HARD_STOP_AFTER=${HARD_STOP_AFTER:-}
IDLE_CLOSE_ON_RESPONSE=${IDLE_CLOSE_ON_RESPONSE:-0}
KEEP_TMP=${KEEP_TMP:-0}

die() {
  echo "reload.sh: $*" >&2
  exit 1
}
usage() {
  sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

while (($#)); do
  case $1 in
    --runs) RUNS=${2:?--runs needs a value}; shift 2 ;;
    --proxy) PROXIES=${2:?--proxy needs a value}; shift 2 ;;
    --trigger) TRIGGER=${2:?--trigger needs a value}; shift 2 ;;
    --reloads) RELOADS=${2:?--reloads needs a value}; shift 2 ;;
    --interval) INTERVAL=${2:?--interval needs a value}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "reload.sh: unknown argument '$1'" >&2; usage 1 >&2 ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be >= 1, got '$RUNS'"
[[ $RELOADS =~ ^[1-9][0-9]*$ ]] || die "--reloads must be >= 1, got '$RELOADS'"
[[ $INTERVAL =~ ^[0-9]*\.?[0-9]+$ ]] || die "--interval must be seconds, got '$INTERVAL'"
for v in SETTLE WS_INTERVAL; do
  [[ ${!v} =~ ^[0-9]*\.?[0-9]+$ ]] || die "$v must be seconds, got '${!v}'"
done
case $PROXIES in
  both) PROXY_LIST=(haproxy tether) ;;
  tether | haproxy) PROXY_LIST=("$PROXIES") ;;
  *) die "--proxy must be tether, haproxy or both, got '$PROXIES'" ;;
esac
[[ $TRIGGER == api || $TRIGGER == sighup ]] || die "--trigger must be api or sighup, got '$TRIGGER'"
[[ $PROXY_CPU != "$LOAD_CPU" ]] || die "PROXY_CPU and LOAD_CPU must differ"
[[ -z $HARD_STOP_AFTER || $HARD_STOP_AFTER =~ ^[0-9]+(us|ms|s|m|h|d)?$ ]] ||
  die "HARD_STOP_AFTER must be an HAProxy time like 5s, got '$HARD_STOP_AFTER'"
IDLE_CLOSE=""
((IDLE_CLOSE_ON_RESPONSE)) && IDLE_CLOSE="option idle-close-on-response"
for v in HTTP_CONNS WEBSOCKETS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be >= 1, got '${!v}'"
done

# --- tools and binaries ------------------------------------------------------------
for tool in python3 taskset curl timeout; do
  command -v "$tool" >/dev/null 2>&1 || die "missing $tool (apt-get install -y python3 util-linux curl coreutils)"
done
HAPROXY_BIN=$(command -v haproxy || true)
if [[ " ${PROXY_LIST[*]} " == *" haproxy "* ]]; then
  [[ -n $HAPROXY_BIN ]] || die "missing haproxy; as root: apt-get update && apt-get install -y haproxy"
fi
if [[ " ${PROXY_LIST[*]} " == *" tether "* ]]; then
  TETHER_BIN=${TETHER_BIN:-$REPO/target/release/tether}
  [[ -x $TETHER_BIN ]] ||
    die "no tether binary at $TETHER_BIN: build it with 'cargo build --release' in $REPO (or set TETHER_BIN); --proxy haproxy runs without it"
fi
WHOAMI_BIN=${WHOAMI_BIN:-$REPO/target/release/examples/whoami}
if [[ ! -x $WHOAMI_BIN ]]; then
  echo "reload.sh: no whoami at $WHOAMI_BIN (cargo build --release --example whoami):" \
    "using reload_client.py's stand-in backend" >&2
  WHOAMI_BIN=""
fi
for cpu in "$PROXY_CPU" "$LOAD_CPU"; do
  taskset -c "$cpu" true 2>/dev/null || die "CPU $cpu is not usable here (set PROXY_CPU / LOAD_CPU)"
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLIENT=$HERE/reload_client.py

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tether-reload.XXXXXX")

# --- process bookkeeping (as run.sh): every process we start is kept by pid ----------
declare -a STARTED=()

# shellcheck source=benches/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

alive() { # PID is running (not a zombie)
  local line
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  line=${line##*) }
  [[ ${line:0:1} != Z ]]
}

stop_tree() { # PID: TERM the process and its descendants, KILL after 5 s, reap; forget it
  local root=$1 pid deadline any tree
  tree=$(descendants "$root")
  # shellcheck disable=SC2086 # a space-separated pid list
  kill -TERM $tree 2>/dev/null || true
  deadline=$((SECONDS + 5))
  while ((SECONDS < deadline)); do
    any=0
    for pid in $tree; do alive "$pid" && any=1; done
    ((any)) || break
    sleep 0.1
  done
  for pid in $tree; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
  wait "$root" 2>/dev/null || true
  local keep=()
  for pid in "${STARTED[@]}"; do [[ $pid != "$root" ]] && keep+=("$pid"); done
  STARTED=("${keep[@]}")
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  for pid in "${STARTED[@]}"; do
    stop_tree "$pid"
  done
  if ((KEEP_TMP)); then
    echo "configs, logs and results kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- ports: pick_port (lib.sh) ---------------------------------------------------

wait_http() { # NAME PID URL TIMEOUT_S: until URL answers 200
  local name=$1 pid=$2 url=$3 deadline=$((SECONDS + $4)) code
  while ((SECONDS < deadline)); do
    alive "$pid" || {
      echo "$name exited during start-up; its log:" >&2
      tail -n 20 "$TMP/$name.log" >&2 || true
      return 1
    }
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  echo "$name did not answer 200 on $url within $4 s; its log:" >&2
  tail -n 20 "$TMP/$name.log" >&2 || true
  return 1
}

# --- backends: b1..b4 (b4 is only in variant b), on the load CPU, for the whole script --
declare -a BPORT=()
for i in 1 2 3 4; do
  pick_port "BPORT[$i]"
  if [[ -n $WHOAMI_BIN ]]; then
    taskset -c "$LOAD_CPU" "$WHOAMI_BIN" --id "b$i" --listen "127.0.0.1:${BPORT[$i]}" \
      >"$TMP/backend-b$i.log" 2>&1 &
  else
    taskset -c "$LOAD_CPU" python3 "$CLIENT" backend --id "b$i" --listen "127.0.0.1:${BPORT[$i]}" \
      >"$TMP/backend-b$i.log" 2>&1 &
  fi
  STARTED+=("$!")
  wait_http "backend-b$i" "$!" "http://127.0.0.1:${BPORT[$i]}/healthz" 10 || die "backend b$i did not start"
done

render() { # TEMPLATE OUT PORT ADMIN_PORT [W2 S4_LINE]
  sed -e "s|@S4@|${6:-}|g" -e "s|@W2@|${5:-1}|g" -e "s|@HARD_STOP@|${HARD_STOP_AFTER:+hard-stop-after $HARD_STOP_AFTER}|g" \
    -e "s|@IDLE_CLOSE@|$IDLE_CLOSE|g" \
    -e "s|@DIR@|$TMP|g" -e "s|@PORT@|$3|g" -e "s|@ADMIN_PORT@|$4|g" \
    -e "s|@B1_PORT@|${BPORT[1]}|g" -e "s|@B2_PORT@|${BPORT[2]}|g" \
    -e "s|@B3_PORT@|${BPORT[3]}|g" -e "s|@B4_PORT@|${BPORT[4]}|g" "$HERE/$1" >"$2"
}

# The client's own bound: the planned run (warm-up 1 s, reloads, settle) plus 60 s for
# opening the WebSockets, slow reloads and the wind-down; `timeout` is the backstop.
MAX_SECONDS=$(awk -v n="$RELOADS" -v i="$INTERVAL" -v s="$SETTLE" 'BEGIN { printf "%d", 1 + n * i + s + 60 }')
COMMON_ARGS=(--reloads "$RELOADS" --interval "$INTERVAL" --http-conns "$HTTP_CONNS"
  --websockets "$WEBSOCKETS" --ws-interval "$WS_INTERVAL" --settle "$SETTLE" --max-seconds "$MAX_SECONDS")
RESULTS=$TMP/results.jsonl
: >"$RESULTS"

# Each run: a fresh proxy on variant a, the client (which does the reloads), the proxy
# stopped. Prints the client's JSON line; dies with the reason when a reload failed.
run_one() { # PROXY RUN
  local who=$1 run=$2 dir=$TMP/$1-$2 port admin pid rc json
  mkdir -p "$dir"
  pick_port port
  local -a args
  if [[ $who == haproxy ]]; then
    render haproxy-reload.cfg.tmpl "$dir/haproxy-a.cfg" "$port" 0 1 ""
    render haproxy-reload.cfg.tmpl "$dir/haproxy-b.cfg" "$port" 0 2 \
      "server s4 127.0.0.1:@B4_PORT@ cookie s4 check inter 1s"
    for v in a b; do
      "$HAPROXY_BIN" -c -q -f "$dir/haproxy-$v.cfg" >"$dir/check-$v.log" 2>&1 ||
        die "haproxy -c rejects variant $v: $(cat "$dir/check-$v.log")"
    done
    cp "$dir/haproxy-a.cfg" "$dir/haproxy.cfg"
    # Master-worker mode in the foreground; the master CLI is used to watch the reloads.
    taskset -c "$PROXY_CPU" "$HAPROXY_BIN" -W -db -S "$dir/master.sock" -f "$dir/haproxy.cfg" \
      >"$TMP/$who.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    wait_http "$who" "$pid" "http://127.0.0.1:$port/" 10 || die "HAProxy did not start"
    args=(--trigger haproxy --master-sock "$dir/master.sock" --master-pid "$pid" --haproxy-bin "$HAPROXY_BIN"
      --live "$dir/haproxy.cfg" --variant-a "$dir/haproxy-a.cfg" --variant-b "$dir/haproxy-b.cfg")
  else
    pick_port admin
    render tether-reload-a.yaml.tmpl "$dir/tether-a.yaml" "$port" "$admin"
    render tether-reload-b.yaml.tmpl "$dir/tether-b.yaml" "$port" "$admin"
    for v in a b; do
      "$TETHER_BIN" check -c "$dir/tether-$v.yaml" >"$dir/check-$v.log" 2>&1 ||
        die "tether check rejects variant $v: $(cat "$dir/check-$v.log")"
    done
    cp "$dir/tether-a.yaml" "$dir/proxy.yaml"
    RUST_LOG=$TETHER_LOG taskset -c "$PROXY_CPU" "$TETHER_BIN" -c "$dir/proxy.yaml" >"$TMP/$who.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    # Longer: tether finishes a round of health checks before it accepts connections.
    wait_http "$who" "$pid" "http://127.0.0.1:$port/" 30 || die "tether did not start (config: $dir/proxy.yaml)"
    args=(--trigger "$TRIGGER" --admin "127.0.0.1:$admin" --pid "$pid"
      --live "$dir/proxy.yaml" --variant-a "$dir/tether-a.yaml" --variant-b "$dir/tether-b.yaml")
  fi
  rc=0
  timeout -k 5 $((MAX_SECONDS + 20)) taskset -c "$LOAD_CPU" python3 "$CLIENT" run --proxy "$who" --port "$port" \
    "${args[@]}" "${COMMON_ARGS[@]}" >"$dir/client.json" 2>"$dir/client.log" || rc=$?
  alive "$pid" || echo "reload.sh: $who exited during the run; see its log" >&2
  stop_tree "$pid"
  cp "$TMP/$who.log" "$dir/$who.log" 2>/dev/null || true
  json=$(grep '^{' "$dir/client.json" | tail -n 1 || true)
  if ((rc != 0)); then
    echo "reload.sh: run $run against $who failed (client exit $rc):" >&2
    tail -n 5 "$dir/client.log" >&2 || true
    [[ -n $json ]] && echo "$json" >&2
    echo "--- last lines of $who's log:" >&2
    tail -n 15 "$dir/$who.log" >&2 || true
    if [[ $who == tether && $rc == 3 ]]; then
      die "tether's reload failed (see above). tether's live reload is still being implemented:" \
        "until it lands, POST /api/reload answers 404 and SIGHUP only validates the file." \
        "'--proxy haproxy' measures the peer meanwhile."
    fi
    die "stopping (KEEP_TMP=1 keeps $TMP)"
  fi
  [[ -n $json ]] || die "no JSON line from the client against $who (see $dir/client.log)"
  echo "$json" >>"$RESULTS"
  python3 - "$json" "$run" "$RUNS" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
print(f"run {sys.argv[2]}/{sys.argv[3]}  {r['proxy']:<8} reloads {r['reloads']}  requests {r['requests']}"
      f"  failed {r['failed_requests']}  websockets {r['websockets']}  dropped {r['dropped_websockets']}"
      f"  reload p50 {r['reload_ms_p50']} ms  {r['seconds']} s"
      + (f"  errors {r['errors']}" if r['errors'] else "")
      + (f"  {r['proxy_info']}" if r.get('proxy_info') else ""), flush=True)
EOF
}

echo "reload under load: ${PROXY_LIST[*]}; $RUNS run(s) each; $RELOADS reloads every ${INTERVAL}s;" \
  "$WEBSOCKETS WebSockets (a message every ${WS_INTERVAL}s), $HTTP_CONNS keep-alive HTTP connections;" \
  "tether trigger: $TRIGGER; backends: $([[ -n $WHOAMI_BIN ]] && echo whoami || echo 'python stand-in');" \
  "proxy on CPU$PROXY_CPU, client + backends on CPU$LOAD_CPU${HARD_STOP_AFTER:+; HAProxy hard-stop-after $HARD_STOP_AFTER}${IDLE_CLOSE:+; HAProxy $IDLE_CLOSE}"
for ((run = 1; run <= RUNS; run++)); do
  for who in "${PROXY_LIST[@]}"; do
    run_one "$who" "$run"
  done
done

echo
python3 "$CLIENT" summary "$RESULTS"
echo
echo "JSON lines:"
cat "$RESULTS"
