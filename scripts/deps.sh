#!/usr/bin/env bash
# Installs what building (and, with `--test`, testing) tether needs on Debian:
# cmake and a C compiler for pingora's zlib-ng; for the tests also redis-server,
# redis-tools and redis-sentinel (shared-store, cluster and Sentinel tests),
# iproute2 (namespace tests), chromium (status page test) and promtool (alerting
# rules test). As root it installs with apt-get; otherwise it prints
# the exact command and fails, so nothing half-works.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v make >/dev/null 2>&1 || need+=(make)
if [[ "${1:-}" == "--test" ]]; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  # redis-cli forms and reshards the test cluster; redis-sentinel runs the sentinels.
  command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
  command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
  # Network/mount namespaces of the root-only tests (named backends, the virtual IP).
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v unshare >/dev/null 2>&1 || need+=(util-linux)
  # The status page's end-to-end test drives headless Chromium.
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  # promtool checks contrib/tether-alerts.yml and /metrics (tests/alerts.rs). Debian
  # ships it in the Prometheus server package, whose service would take :9090
  # (tether's default admin port) where systemd runs: stopped below, no test needs it.
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
fi

if [[ ${#need[@]} -eq 0 ]]; then
  exit 0
fi

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${need[*]}"
if [[ $(id -u) -eq 0 ]]; then
  echo "deps: installing ${need[*]}" >&2
  bash -c "$cmd"
  if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-active --quiet prometheus 2>/dev/null; then
    echo "deps: stopping and disabling the prometheus service the package started (only promtool is needed)" >&2
    systemctl disable --now prometheus || true
  fi
else
  echo "deps: missing ${need[*]}; run as root:" >&2
  echo "  sudo bash -c '$cmd'" >&2
  exit 1
fi
