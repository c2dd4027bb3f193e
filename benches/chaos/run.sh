#!/usr/bin/env bash
# benches/chaos/run.sh: the chaos soak of issue 13 (see README.md). Two tether instances
# on one Redis (appendonly yes), HTTP, WebSocket and TCP-device clients under steady load
# while backends are SIGKILLed and SIGSTOPped, Redis restarts, the configs reload and each
# instance's binary is upgraded; invariants checked throughout. All on 127.0.0.1.
#
# Usage: benches/chaos/run.sh            (DURATION=180 s of load by default)
#        DURATION=60 benches/chaos/run.sh
#
# Environment (all optional):
#   DURATION=180 SEED=1            seconds of load; the chaos schedule's seed
#   HTTP_CLIENTS=40 WS_CLIENTS=30 TCP_CLIENTS=30 HTTP_INTERVAL=0.5
#   SETTLE=2                       seconds a disagreement between A and B may last
#   RSS_LIMIT_MB=128               bound on each tether process's VmRSS
#   THREADS=1                      server.threads of each tether
#   UPGRADES=2                     binary upgrades (0, 1: A by --upgrade, 2: then B by SIGUSR2)
#   TETHER_BIN=path                default target/release/tether (not built here)
#   WHOAMI_BIN=path                default target/release/examples/whoami
#   TETHER_LOG=info                RUST_LOG of the tethers
#   KEEP_TMP=1                     keep the temp dir even when every invariant held (it is
#                                  always kept when one was violated or the run broke)
#
# Exit status: 0 every invariant held, 1 one was violated, 2 the run itself broke.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

DURATION=${DURATION:-180}
SEED=${SEED:-1}
HTTP_CLIENTS=${HTTP_CLIENTS:-40}
WS_CLIENTS=${WS_CLIENTS:-30}
TCP_CLIENTS=${TCP_CLIENTS:-30}
HTTP_INTERVAL=${HTTP_INTERVAL:-0.5}
SETTLE=${SETTLE:-2}
RSS_LIMIT_MB=${RSS_LIMIT_MB:-128}
THREADS=${THREADS:-1}
UPGRADES=${UPGRADES:-2}
TETHER_LOG=${TETHER_LOG:-info}
KEEP_TMP=${KEEP_TMP:-0}

die() {
  echo "chaos/run.sh: $*" >&2
  exit 2
}

if ! [[ $DURATION =~ ^[0-9]+$ ]] || ((DURATION < 20)); then
  die "DURATION must be whole seconds >= 20, got '$DURATION'"
fi
for v in SEED HTTP_CLIENTS WS_CLIENTS TCP_CLIENTS RSS_LIMIT_MB THREADS UPGRADES; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
for v in HTTP_INTERVAL SETTLE; do
  [[ ${!v} =~ ^[0-9]*\.?[0-9]+$ ]] || die "$v must be seconds, got '${!v}'"
done

for tool in python3 redis-server timeout; do
  command -v "$tool" >/dev/null 2>&1 || die "missing $tool (apt-get install -y python3 redis-server coreutils)"
done
TETHER_SRC=${TETHER_BIN:-$REPO/target/release/tether}
WHOAMI_SRC=${WHOAMI_BIN:-$REPO/target/release/examples/whoami}
[[ -x $TETHER_SRC ]] || die "no tether binary at $TETHER_SRC: 'cargo build --release' in $REPO (or set TETHER_BIN)"
[[ -x $WHOAMI_SRC ]] || die "no whoami at $WHOAMI_SRC: 'cargo build --release --example whoami' (or set WHOAMI_BIN)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tether-chaos.XXXXXX")
# Copies: the build tree may be rebuilt under a running soak, and the upgrade
# re-executes the binary by path.
cp "$TETHER_SRC" "$TMP/tether"
cp "$WHOAMI_SRC" "$TMP/whoami"

SOAK_PID=
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  local rc=$? pid name line
  trap - EXIT INT TERM
  set +e
  if [[ -n $SOAK_PID ]] && kill -0 "$SOAK_PID" 2>/dev/null; then
    kill -TERM "$SOAK_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$SOAK_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SOAK_PID" 2>/dev/null
  fi
  # Backstop: every process soak.py started is listed in $TMP/pids; stop the ones still
  # running whose command line still names this run's directory or binaries.
  if [[ -f $TMP/pids ]]; then
    while read -r pid name; do
      [[ -r /proc/$pid/cmdline ]] || continue
      line=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
      if [[ $line == *"$TMP"* || $line == *"$HERE/soak.py"* || ($line == *redis-server* && $name == redis) ]]; then
        kill -CONT "$pid" 2>/dev/null
        kill -KILL "$pid" 2>/dev/null
      fi
    done <"$TMP/pids"
  fi
  if ((KEEP_TMP)) || ((rc != 0)); then
    echo "chaos/run.sh: logs, configs and results kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "chaos soak: tether $("$TMP/tether" --version 2>/dev/null | head -n 1), redis $(redis-server --version | grep -o 'v=[^ ]*'), $(nproc) CPUs, $(date -u +%FT%TZ)"
rc=0
# The soak bounds itself (load DURATION s, set-up and wind-down well under a minute);
# `timeout` is the backstop.
timeout -k 10 $((DURATION + 180)) python3 "$HERE/soak.py" run --dir "$TMP" \
  --tether "$TMP/tether" --whoami "$TMP/whoami" --duration "$DURATION" --seed "$SEED" \
  --http-clients "$HTTP_CLIENTS" --ws-clients "$WS_CLIENTS" --tcp-clients "$TCP_CLIENTS" \
  --http-interval "$HTTP_INTERVAL" --settle "$SETTLE" --rss-limit-mb "$RSS_LIMIT_MB" \
  --threads "$THREADS" --upgrades "$UPGRADES" --log-level "$TETHER_LOG" &
SOAK_PID=$!
wait "$SOAK_PID" || rc=$?
SOAK_PID=
case $rc in
  0 | 1 | 2) ;;
  124 | 137) echo "chaos/run.sh: the soak overran its time bound" >&2; rc=2 ;;
  *) rc=2 ;;
esac
exit "$rc"
