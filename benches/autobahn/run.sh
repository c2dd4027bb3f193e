#!/usr/bin/env bash
# benches/autobahn/run.sh: WebSocket conformance through tether. Runs the
# Autobahn|Testsuite fuzzing client (Python 2.7) against the suite's own echo server
# twice in one run, as agent `direct` (straight to the server) and as agent `tether`
# (through tether, the server its only backend), then compares every case's outcome
# (behavior, behaviorClose, close codes). Cases that differ are run again many times
# both ways, and a case whose outcome is a race (the suite's own expectation accepts
# both outcomes, or the direct server itself ends it in several ways) is told apart
# from a difference tether makes. See README.md beside this file.
#
# Environment (all optional):
#   CASES='*'              case patterns, comma-separated: CASES='1.*,2.*,3.4'
#   EXCLUDE=''             case patterns left out: EXCLUDE='9.*,12.*,13.*'
#   LIMIT=1800             seconds for the whole run after set-up (every fuzzing run in it)
#   RECHECK=20             differing cases are run again this many times each way (0 = no recheck)
#   STRICT=0               1: race and timing-dependent cases fail the run too
#   REFERENCE=             haproxy: also run every case through HAProxy (installed separately),
#                          shown beside tether as a baseline of what any proxy changes
#   BACKEND=echoserver     or testeeserver: the suite's testee server, which also accepts
#                          permessage-deflate (cases 12.*, 13.* then really run)
#   TETHER_BIN=path        default target/release/tether if built, else target/debug/tether
#                          (copied to the temp dir first, so a rebuild mid-run changes nothing)
#   TETHER_LOG=warn        tether's RUST_LOG
#   AUTOBAHN_VENV=dir      the Python 2.7 virtualenv (default ~/.cache/tether-autobahn/venv)
#   PYTHON2=path           the Python 2.7 to build it with (default: pyenv's 2.7.18, python2.7)
#   KEEP_TMP=1             keep the temp dir (reports, configs, logs); 0 removes it at exit
#
# Exit status: 0 every case ends alike (races apart, unless STRICT=1), 1 some case
# differs or tether died, 2 the run itself broke (set-up, start-up, LIMIT, reports).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

CASES=${CASES:-*}
EXCLUDE=${EXCLUDE:-}
LIMIT=${LIMIT:-1800}
RECHECK=${RECHECK:-20}
REFERENCE=${REFERENCE:-}
STRICT=${STRICT:-0}
BACKEND=${BACKEND:-echoserver}
TETHER_LOG=${TETHER_LOG:-warn}
KEEP_TMP=${KEEP_TMP:-1}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tether-autobahn
VENV=${AUTOBAHN_VENV:-$CACHE/venv}
VIRTUALENV_PIN=virtualenv==16.7.12 # the last virtualenv that runs on Python 2.7 itself

die() { # the run itself broke: exit 2
  echo "run.sh: $*" >&2
  exit 2
}

if ! [[ $LIMIT =~ ^[0-9]+$ ]] || ((LIMIT < 10)); then
  die "LIMIT must be a whole number of seconds >= 10, got '$LIMIT'"
fi
[[ $RECHECK =~ ^[0-9]+$ ]] || die "RECHECK must be a whole number, got '$RECHECK'"
[[ $BACKEND == echoserver || $BACKEND == testeeserver ]] || die "BACKEND must be echoserver or testeeserver, got '$BACKEND'"
[[ -z $REFERENCE || $REFERENCE == haproxy ]] || die "REFERENCE must be empty or haproxy, got '$REFERENCE'"
[[ $REFERENCE != haproxy ]] || command -v haproxy >/dev/null ||
  die "REFERENCE=haproxy needs haproxy (as root: apt-get install haproxy)"
IFS=', ' read -r -a pats <<<"$CASES $EXCLUDE" # read -a: no globbing of '*'
for pat in "${pats[@]}"; do
  [[ $pat =~ ^[0-9.*]+$ ]] || die "case patterns are like 1.*, 9.1.* or 3.4; got '$pat'"
done
command -v python3 >/dev/null || die "python3 is needed (compare.py)"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"

# --- the Python 2.7 virtualenv: created once, re-synced when requirements.txt changes --
find_python2() {
  local p
  for p in "${PYTHON2:-}" "$(pyenv root 2>/dev/null)/versions/2.7.18/bin/python" \
    "$HOME/.pyenv/versions/2.7.18/bin/python" "$(command -v python2.7 || true)"; do
    [[ -n $p && -x $p ]] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null &&
      { echo "$p"; return 0; }
  done
  return 1
}

setup_venv() {
  local want stamp=$VENV/.tether-requirements py2
  want=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
  if [[ -x $VENV/bin/python && -f $stamp && $(<"$stamp") == "$want" ]] &&
    "$VENV/bin/python" -c 'import autobahntestsuite, autobahn' 2>/dev/null; then
    return 0
  fi
  py2=$(find_python2) || die "no Python 2.7 found (set PYTHON2=/path/to/python2.7)"
  echo "run.sh: setting up $VENV with $py2 (once; about a minute)" >&2
  if [[ ! -x $VENV/bin/python ]]; then
    [[ ! -e $VENV ]] || [[ -z $(ls -A "$VENV") ]] ||
      die "$VENV exists but is not a virtualenv: move it away or set AUTOBAHN_VENV"
    if ! "$py2" -m virtualenv --version >/dev/null 2>&1 &&
      ! PYTHONPATH=$CACHE/bootstrap "$py2" -m virtualenv --version >/dev/null 2>&1; then
      timeout 600 "$py2" -m pip install -q --disable-pip-version-check --no-warn-script-location \
        --target "$CACHE/bootstrap" "$VIRTUALENV_PIN" >&2 ||
        die "could not install $VIRTUALENV_PIN into $CACHE/bootstrap"
    fi
    PYTHONPATH=$CACHE/bootstrap timeout 300 "$py2" -m virtualenv --no-download "$VENV" >&2 ||
      die "could not create the virtualenv $VENV"
  fi
  timeout 1200 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    -r "$HERE/requirements.txt" >&2 || die "pip install -r requirements.txt into $VENV failed"
  "$VENV/bin/python" -m pip check --disable-pip-version-check >&2 ||
    die "the packages in $VENV do not fit together (pip check)"
  "$VENV/bin/python" -c 'import autobahntestsuite, autobahn' ||
    die "autobahntestsuite does not import in $VENV"
  echo "$want" >"$stamp"
}
setup_venv

# --- tether binary -------------------------------------------------------------------
if [[ -z ${TETHER_BIN:-} ]]; then
  TETHER_BIN=$REPO/target/release/tether
  [[ -x $TETHER_BIN ]] || TETHER_BIN=$REPO/target/debug/tether
fi
[[ -x $TETHER_BIN ]] || die "no tether binary at $TETHER_BIN (cargo build, or set TETHER_BIN)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tether-autobahn.XXXXXX")

# --- process bookkeeping: every process started here is kept by pid and stopped by pid --
declare -a STARTED=()
declare -A PID=()

# shellcheck source=benches/load/lib.sh
source "$REPO/benches/load/lib.sh" # descendants, pick_port

alive() { # PID is running (a zombie is not)
  local line
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  line=${line##*) }
  [[ ${line:0:1} != Z ]]
}

# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  local rc=$? pid deadline any all=""
  trap - EXIT INT TERM
  set +e
  # Each started process with its descendants (timeout -> wstest), found before any ends.
  for pid in "${STARTED[@]}"; do
    all+=" $(descendants "$pid")"
  done
  for pid in $all; do
    kill -TERM "$pid" 2>/dev/null
  done
  deadline=$((SECONDS + 5))
  while ((SECONDS < deadline)); do
    any=0
    for pid in $all; do
      alive "$pid" && any=1
    done
    ((any)) || break
    sleep 0.1
  done
  for pid in $all; do
    kill -KILL "$pid" 2>/dev/null
  done
  for pid in "${STARTED[@]}"; do
    wait "$pid" 2>/dev/null
  done
  rm -f "$TMP/tether" # the binary copy (hundreds of MB for a debug build)
  if ((KEEP_TMP)); then
    echo "reports, configs and logs: $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

START=$SECONDS
DEADLINE=$((SECONDS + LIMIT))
remaining() { echo $((DEADLINE - SECONDS)); }

cp "$TETHER_BIN" "$TMP/tether"
TETHER_VERSION=$("$TMP/tether" --version 2>&1) || die "the copy of $TETHER_BIN does not run (mid-rebuild?): $TETHER_VERSION"
PY2_VERSIONS=$("$VENV/bin/wstest" --autobahnversion 2>&1 | tr -s ' \n' ' ') || true

# --- ports and configs -----------------------------------------------------------------
pick_port SERVER_PORT
pick_port TETHER_PORT
pick_port ADMIN_PORT
[[ -z $REFERENCE ]] || pick_port REFERENCE_PORT

cat >"$TMP/tether.yaml" <<EOF
# Generated by benches/autobahn/run.sh: the Autobahn server is the only backend.
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
server: { shutdown_grace: 1s }
store: { kind: embedded }
pools:
  autobahn:
    health: { kind: none }
    backends:
      - { id: $BACKEND, addr: "127.0.0.1:$SERVER_PORT" }
listeners:
  - name: ws
    bind: "127.0.0.1:$TETHER_PORT"
    protocol: http
    pool: autobahn
    timeouts: { idle: 1h }
    affinity:
      key: source_ip
EOF
"$TMP/tether" check -c "$TMP/tether.yaml" >"$TMP/tether-check.log" 2>&1 ||
  die "tether check -c tether.yaml failed: $(cat "$TMP/tether-check.log")"

start_bg() { # NAME CMD...: run CMD in the background, its output in $TMP/NAME.log
  local name=$1
  shift
  "$@" >"$TMP/$name.log" 2>&1 &
  PID[$name]=$!
  STARTED+=("$!")
}

wait_port() { # NAME PORT TIMEOUT_S: until 127.0.0.1:PORT accepts connections
  local name=$1 port=$2 deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    alive "${PID[$name]}" || {
      echo "$name exited during start-up; its log:" >&2
      tail -n 20 "$TMP/$name.log" >&2
      die "$name did not start"
    }
    port_free "$port" || return 0
    sleep 0.1
  done
  tail -n 20 "$TMP/$name.log" >&2
  die "$name did not listen on 127.0.0.1:$port within $3 s"
}

start_bg server "$VENV/bin/python" "$HERE/server.py" "$BACKEND" "ws://127.0.0.1:$SERVER_PORT"
wait_port server "$SERVER_PORT" 30
start_bg tether env RUST_LOG="$TETHER_LOG" "$TMP/tether" -c "$TMP/tether.yaml"
wait_port tether "$TETHER_PORT" 30
AGENTS=("direct=$SERVER_PORT" "tether=$TETHER_PORT")
if [[ $REFERENCE == haproxy ]]; then
  # HAProxy as the issue's peer: one thread, http mode, WebSockets tunnelled for an hour.
  cat >"$TMP/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:$REFERENCE_PORT
  default_backend be
backend be
  server s1 127.0.0.1:$SERVER_PORT
EOF
  start_bg haproxy haproxy -db -f "$TMP/haproxy.cfg"
  wait_port haproxy "$REFERENCE_PORT" 30
  AGENTS+=("haproxy=$REFERENCE_PORT")
fi

# --- the fuzzing client ----------------------------------------------------------------
spec() { # DIR CASES EXCLUDE SERVERS...: write DIR/spec.json; SERVERS are agent=port
  python3 - "$@" <<'EOF'
import json, sys
d, cases, exclude, servers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
split = lambda s: [p for p in s.replace(",", " ").split() if p]
spec = {
    "outdir": d + "/reports/servers",
    "servers": [{"agent": a, "url": "ws://127.0.0.1:%s" % p} for a, p in (s.split("=") for s in servers)],
    "cases": split(cases),
    "exclude-cases": split(exclude),
    "exclude-agent-cases": {},
}
with open(d + "/spec.json", "w") as f:
    json.dump(spec, f, indent=1)
EOF
}

fuzz() { # DIR LABEL: run the fuzzing client on DIR/spec.json within the time left.
  # 0: done; 1: LIMIT reached (the caller decides); anything else: die.
  local dir=$1 label=$2 left rc=0 t0=$SECONDS pid
  left=$(remaining)
  if ((left <= 0)); then
    echo "run.sh: LIMIT=$LIMIT s reached before $label" >&2
    return 1
  fi
  (cd "$dir" && exec timeout --kill-after=10 "$left" "$VENV/bin/wstest" -m fuzzingclient -s spec.json) \
    >"$dir/wstest.log" 2>&1 &
  pid=$!
  STARTED+=("$pid")
  wait "$pid" || rc=$?
  if ((rc == 124 || rc == 137)); then
    tail -n 3 "$dir/wstest.log" >&2
    echo "run.sh: $label did not finish within LIMIT=$LIMIT s (raise LIMIT, or narrow CASES/EXCLUDE)" >&2
    return 1
  elif ((rc != 0)); then
    tail -n 20 "$dir/wstest.log" >&2
    die "wstest -m fuzzingclient ($label) exited with $rc"
  fi
  [[ -s $dir/reports/servers/index.json ]] || die "$label wrote no reports/servers/index.json"
  echo "run.sh: $label: $(grep -c '^Running test case' "$dir/wstest.log") case runs in $((SECONDS - t0)) s" >&2
}

check_alive() { # the server and the proxies must have lasted the run
  local name
  for name in server tether ${REFERENCE:+"$REFERENCE"}; do
    alive "${PID[$name]}" || {
      echo "run.sh: $name exited during the run; its log:" >&2
      tail -n 20 "$TMP/$name.log" >&2
      [[ $name != server ]] || die "the Autobahn server died"
      [[ $name != tether ]] || TETHER_DIED=1
    }
  done
}
TETHER_DIED=0

# --- the cases, resolved by the suite itself, run in chunks -------------------------
# wstest writes its reports only when all its cases are done, so the cases are run in
# chunks (whole groups such as 6.4.*, up to 60 cases each, every agent in each): a run
# cut short by LIMIT still compares the chunks it finished, and direct and tether run
# each group minutes apart at most, under the same load.
"$VENV/bin/python" - "$CASES" "$EXCLUDE" >"$TMP/chunks.txt" <<'EOF' || die "bad CASES/EXCLUDE"
import sys
from autobahntestsuite.case import Cases, CaseSetname, CaseBasename, CaseCategories, CaseSubCategories
from autobahntestsuite.caseset import CaseSet
cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
split = lambda s: [p for p in s.replace(",", " ").split() if p]
ids = cs.parseSpecCases({"cases": split(sys.argv[1]), "exclude-cases": split(sys.argv[2])})
unknown = [i for i in ids if i not in cs.CasesById]
if unknown:
    sys.stderr.write("run.sh: no such case: %s\n" % " ".join(unknown))
    sys.exit(1)
if not ids:
    sys.stderr.write("run.sh: CASES/EXCLUDE select no case\n")
    sys.exit(1)
groups = []
for i in ids:
    g = i.split(".")[:2]
    if groups and groups[-1][0] == g:
        groups[-1][1].append(i)
    else:
        groups.append((g, [i]))
chunk = []
for g, members in groups:
    if chunk and len(chunk) + len(members) > 60:
        print(" ".join(chunk))
        chunk = []
    chunk += members
print(" ".join(chunk))
EOF
mapfile -t CHUNKS <"$TMP/chunks.txt"
NCASES=$(wc -w <"$TMP/chunks.txt")

echo "run.sh: $BACKEND on 127.0.0.1:$SERVER_PORT, tether ($TETHER_BIN, $TETHER_VERSION) on 127.0.0.1:$TETHER_PORT" >&2
echo "run.sh: $NCASES cases ($CASES${EXCLUDE:+ except $EXCLUDE}) in ${#CHUNKS[@]} chunks, agents: ${AGENTS[*]%%=*}, LIMIT=$LIMIT s" >&2
REPORTS=()
INCOMPLETE=0
for ((k = 0; k < ${#CHUNKS[@]}; k++)); do
  dir=$TMP/main/$(printf %02d "$k")
  mkdir -p "$dir"
  read -r -a ids <<<"${CHUNKS[$k]}"
  spec "$dir" "${CHUNKS[$k]}" "" "${AGENTS[@]}"
  if ! fuzz "$dir" "chunk $((k + 1))/${#CHUNKS[@]} (${ids[0]} .. ${ids[-1]}, ${#ids[@]} cases)"; then
    INCOMPLETE=1
    break
  fi
  check_alive
  REPORTS+=(--report "$dir/reports/servers")
done
((${#REPORTS[@]})) || die "no chunk finished: no result"

META=$(python3 -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
  date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" tether_bin "$TETHER_BIN" tether_version "$TETHER_VERSION" \
  autobahn "$PY2_VERSIONS" backend "$BACKEND" cases "$CASES" exclude "$EXCLUDE" \
  reference "$REFERENCE" host "$(uname -n) $(nproc) cores")
compare_args=("${REPORTS[@]}" --json "$TMP/compare.json" --ids "$TMP/differ.txt")
((STRICT)) && compare_args+=(--strict)
[[ -z $REFERENCE ]] || compare_args+=(--reference "$REFERENCE")

rc=0
python3 "$HERE/compare.py" "${compare_args[@]}" >"$TMP/compare.txt" || rc=$?
if ((rc < 2 && RECHECK > 0)) && [[ -s $TMP/differ.txt ]]; then
  # Each differing case again, RECHECK times direct and RECHECK times through tether
  # (and the reference): does the direct server itself end it in more than one way?
  mkdir -p "$TMP/recheck"
  servers=()
  for ((i = 1; i <= RECHECK; i++)); do
    for agent in "${AGENTS[@]}"; do
      servers+=("${agent%%=*}_r$i=${agent#*=}")
    done
  done
  spec "$TMP/recheck" "$(paste -sd, "$TMP/differ.txt")" "" "${servers[@]}"
  if fuzz "$TMP/recheck" "recheck ($(wc -l <"$TMP/differ.txt") cases x $RECHECK x ${#AGENTS[@]} agents)"; then
    check_alive
    rc=0
    python3 "$HERE/compare.py" "${compare_args[@]}" --recheck "$TMP/recheck/reports/servers" \
      >"$TMP/compare.txt" || rc=$?
  else
    echo "run.sh: no recheck: the differing cases below are not told apart from races" >&2
  fi
fi
cat "$TMP/compare.txt"
((rc != 2)) || die "the comparison could not be made (see above)"
python3 - "$TMP/compare.json" "$META" "$((SECONDS - START))" "$INCOMPLETE" <<'EOF'
import json, sys
path, meta, secs, incomplete = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
r = json.load(open(path))
meta["seconds"] = secs
meta["incomplete"] = incomplete
r["run"] = meta
json.dump(r, open(path, "w"), indent=1, sort_keys=True)
EOF
if ((KEEP_TMP)); then
  echo ""
  echo "comparison (JSON): $TMP/compare.json; the suite's HTML reports: $TMP/main/*/reports/servers/index.html"
fi
echo "run.sh: $((SECONDS - START)) s after set-up" >&2
if ((TETHER_DIED)); then
  echo "run.sh: tether exited during the run: see $TMP/tether.log" >&2
  rc=1
fi
((!INCOMPLETE)) || die "incomplete: LIMIT=$LIMIT s ran out after $((${#REPORTS[@]} / 2)) of ${#CHUNKS[@]} chunks (compared above)"
exit "$rc"
