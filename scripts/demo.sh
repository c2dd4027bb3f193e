#!/usr/bin/env bash
# `make demo`: the README's quick start in one command. One release build
# makes tether and the whoami demo backend together (a separate
# `cargo run --example whoami` would start a second, debug build of the whole
# tree); then two backends start on the ports proxy.yaml names (app-1 on
# 127.0.0.1:9001, app-2 on 127.0.0.1:9002) and tether on proxy.yaml (proxy
# 127.0.0.1:8080, admin 127.0.0.1:9090). Ctrl-C, or any of the three exiting,
# stops every process this script started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."

config=proxy.yaml
proxy=127.0.0.1:8080
admin=127.0.0.1:9090
backends=("app-1 127.0.0.1:9001" "app-2 127.0.0.1:9002")
bin=${CARGO_TARGET_DIR:-target}/release

# Something already listening would answer in place of the demo: say so instead.
listening() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for addr in "$proxy" "$admin" "${backends[@]##* }"; do
  if listening "$addr"; then
    echo "demo: $addr is already in use (another tether or demo running?): stop it first" >&2
    exit 1
  fi
done

cargo build --release --bin tether --example whoami

pids=()
# shellcheck disable=SC2317  # called through the traps
stop() {
  trap - EXIT INT TERM
  if ((${#pids[@]})); then
    echo "demo: stopping tether and the backends (pids ${pids[*]})" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop EXIT
# Children of a script ignore SIGINT (no job control): Ctrl-C reaches them
# through stop(), as SIGTERM (tether then flushes its store and exits).
trap 'exit 130' INT
trap 'exit 143' TERM

for b in "${backends[@]}"; do
  "$bin/examples/whoami" --id "${b%% *}" --listen "${b##* }" &
  pids+=($!)
done
"$bin/tether" --config "$config" &
pids+=($!)

# tether listens once its first health round is done.
for _ in $(seq 100); do
  listening "$proxy" && break
  sleep 0.1
done
if ! listening "$proxy"; then
  echo "demo: tether is not listening on $proxy after 10 s" >&2
  exit 1
fi

cat <<EOF

demo: tether on http://$proxy in front of app-1 and app-2; status page on http://$admin/
Try, in another terminal:
  curl -si -c jar http://$proxy/ | grep -i set-cookie
  for i in 1 2 3 4 5; do curl -s -b jar http://$proxy/ | grep -o '"id":"[^"]*"'; done
  curl -s http://$proxy/ | grep -o '"id":"[^"]*"'
  curl -s http://$admin/api/pools
  curl -s http://$admin/metrics | grep tether_affinity
Ctrl-C stops all three.

EOF

# Until Ctrl-C, or until one of them exits (then the others are stopped too).
set +e
wait -n -p gone "${pids[@]}"
status=$?
set -e
echo "demo: process $gone exited (status $status); stopping the others" >&2
exit 1
