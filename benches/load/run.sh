#!/usr/bin/env bash
# benches/load/run.sh: whole-proxy load harness. In one go on loopback, runs wrk
# against the backend directly, tether, HAProxy, nginx and pingora alone (a bare
# `ProxyHttp` to one fixed peer, examples/bare_pingora.rs), sticky by the key KEY
# picks, with the method of shared/benchmarking.md: one worker per proxy, the proxy
# alone on PROXY_CPU (0), wrk and the backend on LOAD_CPU (1), interleaved rounds,
# medians. Prints req/s, p50/p99 and proxy CPU microseconds per request for each
# contender, then the ratios of tether to the others. See README.md beside this file.
#
# Environment (all optional):
#   KEY=cookie                     cookie (tether's inserted cookie, HAProxy `cookie insert`,
#                                  nginx hash on it), header (X-Device: a stick table in
#                                  HAProxy), source_ip (stick on src), keys100k (a header
#                                  rotating over 100,000 values: rotate.lua)
#   ROUNDS=3 DURATION=5 CONNS=64   rounds, seconds per run, wrk connections
#   WRK_THREADS=1 WARMUP=1         wrk threads; seconds of unrecorded warm-up per contender
#   PACE_MS=                       each wrk connection waits this long before each request:
#                                  the same offered load for every contender, below what
#                                  saturates CPU1 (e.g. PACE_MS=1 with CONNS=64)
#   PROXY_CPU=0 LOAD_CPU=1         where the proxy / wrk + backend run
#   SKIP_TETHER=1                  leave tether out (e.g. while it doesn't build or start)
#   TETHER_BIN=path                use this binary instead of `cargo build --release`
#   BARE_BIN=path                  pingora alone (default: target/release/examples/bare_pingora,
#                                  built with tether); SKIP_BARE=1 leaves it out
#   TETHER_LOG=warn                RUST_LOG for tether (the peers log nothing either)
#   KEEP_TMP=1                     keep the temp dir (configs, logs, raw wrk output)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
KEY=${KEY:-cookie}
# Long enough for every one of the 100,000 keys to be seen once before measuring.
WARMUP=${WARMUP:-$([[ $KEY == keys100k ]] && echo 4 || echo 1)}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SKIP_TETHER=${SKIP_TETHER:-0}
SKIP_BARE=${SKIP_BARE:-0}
TETHER_LOG=${TETHER_LOG:-warn}
KEEP_TMP=${KEEP_TMP:-0}

die() {
  echo "run.sh: $*" >&2
  exit 1
}

for v in ROUNDS DURATION CONNS WRK_THREADS WARMUP PROXY_CPU LOAD_CPU; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((ROUNDS >= 1 && DURATION >= 1 && CONNS >= 1)) || die "ROUNDS, DURATION and CONNS must be >= 1"
[[ $PROXY_CPU != "$LOAD_CPU" ]] || die "PROXY_CPU and LOAD_CPU must differ"

# --- the key: how each proxy sticks, and what wrk sends ------------------------------
WRK_SCRIPT=report.lua
case $KEY in
  cookie)
    TETHER_KEY='{ cookie: { name: TETHER, insert: true, max_age: 8h } }'
    HAPROXY_STICKY='cookie SRV insert indirect nocache'
    HAPROXY_SERVER='cookie s1'
    NGINX_HASH='$cookie_TETHER'
    ;;
  header | keys100k)
    TETHER_KEY='{ header: X-Device }'
    HAPROXY_STICKY='stick-table type string len 64 size 1m expire 1h\n  stick on req.hdr(X-Device)'
    HAPROXY_SERVER=''
    NGINX_HASH='$http_x_device'
    [[ $KEY == keys100k ]] && WRK_SCRIPT=rotate.lua
    ;;
  source_ip)
    TETHER_KEY='source_ip'
    HAPROXY_STICKY='stick-table type ip size 1m expire 1h\n  stick on src'
    HAPROXY_SERVER=''
    NGINX_HASH='$remote_addr'
    ;;
  *) die "KEY must be cookie, header, source_ip or keys100k, got '$KEY'" ;;
esac

# --- tools --------------------------------------------------------------------
# Debian package names of the tools the harness runs.
declare -A PKG=([wrk]=wrk [haproxy]=haproxy [nginx]=nginx [curl]=curl [taskset]=util-linux)
missing=()
for tool in "${!PKG[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PKG[$tool]}")
done
if ((${#missing[@]})); then
  cmd="apt-get update && apt-get install -y ${missing[*]}"
  if ((EUID == 0)); then
    echo "run.sh: installing ${missing[*]}" >&2
    # Installing nginx/haproxy on Debian starts their system services: leave them be,
    # the harness runs its own instances on its own ports.
    DEBIAN_FRONTEND=noninteractive bash -c "$cmd" >&2 || die "install failed: $cmd"
  else
    die "missing tools; as root run: $cmd"
  fi
fi
for cpu in "$PROXY_CPU" "$LOAD_CPU"; do
  taskset -c "$cpu" true 2>/dev/null || die "CPU $cpu is not usable here (set PROXY_CPU / LOAD_CPU)"
done
# Room for every connection wrk and the proxies hold (the hard limit is the ceiling).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tether-load.XXXXXX")

# --- process bookkeeping ---------------------------------------------------------
# Every server we start: its pid (from $!) and, once it is up, its whole process tree
# (nginx = master + worker), so CPU is counted for all of it and nothing outlives us.
declare -a STARTED=()
declare -A TREE=()

# shellcheck source=benches/load/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

alive() { # PID is running (a zombie, exited but not yet reaped by `wait`, is not)
  local line
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  line=${line##*) }
  [[ ${line:0:1} != Z ]]
}

cleanup() {
  local rc=$? pid deadline any
  trap - EXIT INT TERM
  # Whatever fails in here, every server must still be stopped.
  set +e
  for pid in "${STARTED[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Give graceful shutdowns a moment, then make sure every process we started is gone.
  deadline=$((SECONDS + 5))
  while ((SECONDS < deadline)); do
    any=0
    # shellcheck disable=SC2048 # TREE values are space-separated pid lists: split them
    for pid in "${STARTED[@]}" ${TREE[*]-}; do
      alive "$pid" && any=1
    done
    ((any)) || break
    sleep 0.1
  done
  # shellcheck disable=SC2048
  for pid in "${STARTED[@]}" ${TREE[*]-}; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if ((KEEP_TMP)); then
    echo "configs and logs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- ports: pick_port (lib.sh) ---------------------------------------------------
pick_port BACKEND_PORT
pick_port HAPROXY_PORT
pick_port NGINX_PORT
pick_port TETHER_PORT
pick_port TETHER_ADMIN_PORT
pick_port BARE_PORT

render() { # TEMPLATE OUT PORT: fill in the @NAME@ placeholders
  sed -e "s|@DIR@|$TMP|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" -e "s|@PORT@|$3|g" \
    -e "s|@ADMIN_PORT@|$TETHER_ADMIN_PORT|g" -e "s|@TETHER_KEY@|$TETHER_KEY|g" \
    -e "s|@HAPROXY_STICKY@|$HAPROXY_STICKY|g" -e "s|@HAPROXY_SERVER@|$HAPROXY_SERVER|g" \
    -e "s|@NGINX_HASH@|$NGINX_HASH|g" "$HERE/$1" >"$2"
}

wait_ready() { # NAME PID PORT TIMEOUT_S: until GET / answers 200 "ok" through PORT
  local name=$1 pid=$2 port=$3 deadline=$((SECONDS + $4)) body
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || {
      echo "$name exited during start-up; its log:" >&2
      tail -n 20 "$TMP/$name.log" >&2 || true
      return 1
    }
    if body=$(curl -s -m 2 -H "Cookie: ${COOKIE[$name]:-}" "http://127.0.0.1:$port/" 2>/dev/null) &&
      [[ $body == ok ]]; then
      TREE[$name]=$(descendants "$pid")
      return 0
    fi
    sleep 0.1
  done
  echo "$name did not answer 200 ok on 127.0.0.1:$port within $4 s; its log:" >&2
  tail -n 20 "$TMP/$name.log" >&2 || true
  return 1
}

declare -A COOKIE=([direct]="" [haproxy]="" [nginx]="" [bare]="")
if [[ $KEY == cookie ]]; then
  COOKIE[haproxy]="SRV=s1"
  COOKIE[nginx]="TETHER=abc"
fi
declare -A PORT=([direct]=$BACKEND_PORT [haproxy]=$HAPROXY_PORT [nginx]=$NGINX_PORT [tether]=$TETHER_PORT [bare]=$BARE_PORT)
declare -A PID=()
CONTENDERS=(direct)

# --- tether binary (built first: a release build takes minutes on 2 cores) --------
if ((!SKIP_TETHER)); then
  if [[ -n ${TETHER_BIN:-} ]]; then
    [[ -x $TETHER_BIN ]] || die "TETHER_BIN=$TETHER_BIN is not an executable"
  else
    echo "building tether (cargo build --release)..." >&2
    (cd "$REPO" && cargo build --release --bin tether --example bare_pingora) >&2 ||
      die "cargo build --release failed; SKIP_TETHER=1 benchmarks the others without tether"
    TETHER_BIN=$REPO/target/release/tether
  fi
fi
if ((!SKIP_BARE)); then
  BARE_BIN=${BARE_BIN:-$REPO/target/release/examples/bare_pingora}
  [[ -x $BARE_BIN ]] || die "no $BARE_BIN: cargo build --release --example bare_pingora (or SKIP_BARE=1)"
fi

# --- servers ----------------------------------------------------------------------
mkdir -p "$TMP"/{backend,nginx-proxy}-tmp
render nginx-backend.conf.tmpl "$TMP/backend.conf" "$BACKEND_PORT"
taskset -c "$LOAD_CPU" nginx -e "$TMP/backend-error.log" -p "$TMP" -c "$TMP/backend.conf" \
  >"$TMP/backend.log" 2>&1 &
PID[direct]=$!
STARTED+=("${PID[direct]}")
wait_ready direct "${PID[direct]}" "$BACKEND_PORT" 10 || die "the nginx backend did not start"
# The backend's CPU is not the proxy's: the direct row reports no CPU/request.
TREE[direct]=""

render haproxy.cfg.tmpl "$TMP/haproxy.cfg" "$HAPROXY_PORT"
taskset -c "$PROXY_CPU" haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
PID[haproxy]=$!
STARTED+=("${PID[haproxy]}")
wait_ready haproxy "${PID[haproxy]}" "$HAPROXY_PORT" 10 || die "HAProxy did not start"

render nginx-proxy.conf.tmpl "$TMP/nginx-proxy.conf" "$NGINX_PORT"
taskset -c "$PROXY_CPU" nginx -e "$TMP/nginx-proxy-error.log" -p "$TMP" -c "$TMP/nginx-proxy.conf" \
  >"$TMP/nginx.log" 2>&1 &
PID[nginx]=$!
STARTED+=("${PID[nginx]}")
wait_ready nginx "${PID[nginx]}" "$NGINX_PORT" 10 || die "the nginx proxy did not start"

if ((!SKIP_TETHER)); then
  render tether.yaml.tmpl "$TMP/tether.yaml" "$TETHER_PORT"
  RUST_LOG=$TETHER_LOG taskset -c "$PROXY_CPU" "$TETHER_BIN" -c "$TMP/tether.yaml" \
    >"$TMP/tether.log" 2>&1 &
  PID[tether]=$!
  STARTED+=("${PID[tether]}")
  # Longer: tether finishes a round of health checks before it accepts connections.
  wait_ready tether "${PID[tether]}" "$TETHER_PORT" 30 ||
    die "tether did not start (config: $TMP/tether.yaml, KEEP_TMP=1 keeps it); SKIP_TETHER=1 benchmarks the others"
  # wrk replays one session's cookie, as a browser would after its first response.
  if [[ $KEY == cookie ]]; then
    COOKIE[tether]=$(curl -s -m 5 -D - -o /dev/null "http://127.0.0.1:$TETHER_PORT/" |
      tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: *\(TETHER=[^;]*\).*/\1/p' | head -n 1)
    [[ -n ${COOKIE[tether]} ]] || die "tether answered without a 'Set-Cookie: TETHER=...' header"
  else
    COOKIE[tether]=""
  fi
  # Re-read the tree: worker threads are counted through /proc/PID/stat anyway, but a
  # helper process (if tether ever forks one) should be billed too.
  TREE[tether]=$(descendants "${PID[tether]}")
  CONTENDERS+=(tether)
fi
CONTENDERS+=(haproxy nginx)
if ((!SKIP_BARE)); then
  taskset -c "$PROXY_CPU" "$BARE_BIN" --listen "127.0.0.1:$BARE_PORT" --peer "127.0.0.1:$BACKEND_PORT" \
    >"$TMP/bare.log" 2>&1 &
  PID[bare]=$!
  STARTED+=("${PID[bare]}")
  wait_ready bare "${PID[bare]}" "$BARE_PORT" 20 || die "bare pingora did not start (SKIP_BARE=1 leaves it out)"
  CONTENDERS+=(bare)
fi

# --- measurement ------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

cpu_ticks() { # PIDS...: utime+stime, in clock ticks, summed over the processes
  # /proc/PID/stat of a process counts all its threads, exited ones included (summing
  # /proc/PID/task/*/stat would lose the CPU of threads that ended during the run).
  local total=0 pid line
  local -a f
  for pid in "$@"; do
    { read -r line <"/proc/$pid/stat"; } 2>/dev/null || continue
    line=${line##*) }
    read -r -a f <<<"$line"
    # After "pid (comm) ": f[0] is field 3 (state), so utime (14) is f[11], stime (15) f[12].
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

cpu_stat() { # "busy0 total0 steal0 busy1 total1 steal1" for PROXY_CPU and LOAD_CPU, in ticks
  local out="" name user nice system idle iowait irq softirq steal cpu
  for cpu in "$PROXY_CPU" "$LOAD_CPU"; do
    while read -r name user nice system idle iowait irq softirq steal _; do
      if [[ $name == "cpu$cpu" ]]; then
        out+="$((user + nice + system + irq + softirq + steal)) "
        out+="$((user + nice + system + idle + iowait + irq + softirq + steal)) $steal "
      fi
    done </proc/stat
  done
  echo "$out"
}

# One line per run: contender round rps p50_ms p99_ms us_per_req cpuP% cpuL% steal% errors other%
# (other%: busy time of PROXY_CPU that was not the proxy's, i.e. someone else's load).
RESULTS=$TMP/results.tsv

run_wrk() { # CONTENDER SECONDS -> wrk's output on stdout
  local name=$1
  local -a hdr=()
  [[ -n ${COOKIE[$name]} ]] && hdr=(-H "Cookie: ${COOKIE[$name]}")
  [[ $KEY == header ]] && hdr+=(-H "X-Device: dev-1")
  taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNS" -d"$2"s --latency \
    -s "$HERE/$WRK_SCRIPT" "${hdr[@]}" "http://127.0.0.1:${PORT[$name]}/"
}

measure() { # CONTENDER ROUND: one recorded run, appended to $RESULTS and printed
  local name=$1 round=$2 t0 t1 s0 s1 out line
  # shellcheck disable=SC2086 # TREE holds a space-separated pid list
  t0=$(cpu_ticks ${TREE[$name]})
  s0=$(cpu_stat)
  out=$(run_wrk "$name" "$DURATION") || die "wrk failed against $name: $out"
  s1=$(cpu_stat)
  # shellcheck disable=SC2086
  t1=$(cpu_ticks ${TREE[$name]})
  echo "$out" >>"$TMP/wrk-$name.txt"
  line=$(grep '^WRKRESULT' <<<"$out") || die "no WRKRESULT line from wrk against $name: $out"
  # Whether the proxy died mid-run (its CPU could no longer be read).
  if [[ $name != direct ]] && ! kill -0 "${PID[$name]}" 2>/dev/null; then
    die "$name exited during the run; log: $TMP/$name.log (KEEP_TMP=1 keeps it)"
  fi
  awk -v name="$name" -v round="$round" -v t0="$t0" -v t1="$t1" -v tck="$CLK_TCK" \
    -v s0="$s0" -v s1="$s1" -v line="$line" -v direct="$([[ $name == direct ]] && echo 1 || echo 0)" '
    BEGIN {
      n = split(line, kv, /[ =]/)
      for (i = 2; i < n; i += 2) r[kv[i]] = kv[i + 1]
      split(s0, a, " "); split(s1, b, " ")
      d0 = b[2] - a[2]; if (d0 <= 0) d0 = 1
      d1 = b[5] - a[5]; if (d1 <= 0) d1 = 1
      busy0 = 100 * (b[1] - a[1]) / d0
      busy1 = 100 * (b[4] - a[4]) / d1
      steal = 100 * ((b[3] - a[3]) + (b[6] - a[6])) / (d0 + d1)
      rps = r["requests"] / (r["duration_us"] / 1e6)
      us = (direct || r["requests"] == 0) ? "-" : sprintf("%.2f", (t1 - t0) * 1e6 / tck / r["requests"])
      # /proc/stat and /proc/PID/stat both count in USER_HZ ticks.
      other = busy0 - 100 * (t1 - t0) / d0
      if (other < 0) other = 0
      printf "%s\t%d\t%.0f\t%.3f\t%.3f\t%s\t%.0f\t%.0f\t%.1f\t%d\t%.0f\n", name, round, rps,
        r["p50_us"] / 1000, r["p99_us"] / 1000, us, busy0, busy1, steal, r["errors"] + r["bad_status"], other
    }' | tee -a "$RESULTS" | awk -F'\t' -v rounds="$ROUNDS" '{
      printf "round %d/%d  %-8s %8s req/s  p50 %7.3f ms  p99 %7.3f ms  %7s us/req  cpu%s %3d%%  cpu%s %3d%%%s%s%s\n",
        $2, rounds, $1, $3, $4, $5, $6, ENVIRON["PROXY_CPU"], $7, ENVIRON["LOAD_CPU"], $8,
        ($11 > 10 ? sprintf("  BUSY BOX: %d%% of cpu%s was not the proxy", $11, ENVIRON["PROXY_CPU"]) : ""),
        ($9 > 1 ? sprintf("  steal %.1f%%", $9) : ""), ($10 > 0 ? sprintf("  ERRORS %d", $10) : "")
    }'
}
export PROXY_CPU LOAD_CPU

echo "contenders: ${CONTENDERS[*]}; key $KEY; $ROUNDS round(s) x ${DURATION}s, wrk -t$WRK_THREADS -c$CONNS;" \
  "proxy on CPU$PROXY_CPU, wrk + backend on CPU$LOAD_CPU"
if ((WARMUP > 0)); then
  for name in "${CONTENDERS[@]}"; do
    run_wrk "$name" "$WARMUP" >/dev/null || die "warm-up wrk failed against $name"
  done
fi
: >"$RESULTS"
for ((round = 1; round <= ROUNDS; round++)); do
  # Interleaved (A B C A B C ...), so a slow minute of the box hits every contender alike.
  for name in "${CONTENDERS[@]}"; do
    measure "$name" "$round"
  done
done

# --- summary ----------------------------------------------------------------------
echo
awk -F'\t' -v order="${CONTENDERS[*]}" -v rounds="$ROUNDS" -v pcpu="$PROXY_CPU" -v lcpu="$LOAD_CPU" '
  function median(list,   v, n, i, j, t) {
    n = split(list, v, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    lo = v[1]; hi = v[n]
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function stat(name, col, fmt,   m) {
    if (vals[name, col] == "") return "-"
    m = median(vals[name, col])
    med[name, col] = m
    return rounds > 1 ? sprintf(fmt " (" fmt "-" fmt ")", m, lo, hi) : sprintf(fmt, m)
  }
  function ratio(a, b, col) {
    return (med[a, col] == "" || med[b, col] == "" || med[b, col] == 0) ? "-" : sprintf("%.2f", med[a, col] / med[b, col])
  }
  {
    for (c = 3; c <= 9; c++) if ($c != "-") vals[$1, c] = vals[$1, c] " " $c
    errs[$1] += $10
    if ($11 > 10) busy[$1]++
  }
  END {
    n = split(order, names, " ")
    printf "medians of %d round(s) (min-max)\n", rounds
    printf "%-8s %-24s %-24s %-24s %-20s %-14s %-14s %s\n", "", "req/s", "p50 ms", "p99 ms", "proxy CPU us/req", "cpu" pcpu " busy %", "cpu" lcpu " busy %", "errors"
    for (i = 1; i <= n; i++) {
      k = names[i]
      printf "%-8s %-24s %-24s %-24s %-20s %-14s %-14s %d\n", k, stat(k, 3, "%.0f"), stat(k, 4, "%.3f"),
        stat(k, 5, "%.3f"), stat(k, 6, "%.2f"), stat(k, 7, "%.0f"), stat(k, 8, "%.0f"), errs[k]
    }
    if (index(" " order " ", " tether ")) {
      print ""
      printf "%-16s %7s %7s %7s %11s\n", "ratio (medians)", "req/s", "p50", "p99", "CPU/req"
      split("haproxy nginx bare", peers, " ")
      for (i = 1; i <= 3; i++)
        printf "%-16s %7s %7s %7s %11s\n", "tether/" peers[i], ratio("tether", peers[i], 3),
          ratio("tether", peers[i], 4), ratio("tether", peers[i], 5), ratio("tether", peers[i], 6)
      print "(req/s: higher is better for tether; p50, p99, CPU/req: lower is better)"
    }
    for (i = 1; i <= n; i++) {
      k = names[i]
      if (k != "direct" && med[k, 7] != "" && med[k, 7] < 90)
        printf "note: %s kept CPU%s only %.0f%% busy: the load side may be the limit, not the proxy\n", k, pcpu, med[k, 7]
      if (k != "direct" && med[k, 8] != "" && med[k, 8] > 97)
        printf "note: CPU%s (wrk + backend) was saturated during %s: the ratio may measure the client\n", lcpu, k
      if (busy[k] > 0)
        printf "note: %d of %s\x27s runs shared CPU%s with other load (BUSY BOX): rerun on a quiet box\n", busy[k], k, pcpu
      if (errs[k] > 0) printf "note: %s had %d socket errors or responses >= 400\n", k, errs[k]
    }
  }' "$RESULTS"
