# shellcheck shell=bash
# Shared by the load scripts (sourced): process-tree helpers.

descendants() { # PID -> PID and every descendant, space-separated
  local root=$1 f line pid changed=1
  local -A parent=()
  for f in /proc/[0-9]*/stat; do
    # `read`, not `$(<"$f")`: under set -e, bash exits outright when `$(<file)` cannot
    # open a file (a process that just ended), `|| continue` notwithstanding.
    { read -r line <"$f"; } 2>/dev/null || continue
    pid=${line%% *}
    # comm (field 2) may hold spaces and parentheses: cut at the last ") ".
    line=${line##*) }
    read -r _ ppid _ <<<"$line"
    parent[$pid]=$ppid
  done
  local out=" $root "
  while ((changed)); do
    changed=0
    for pid in "${!parent[@]}"; do
      if [[ $out != *" $pid "* && $out == *" ${parent[$pid]} "* ]]; then
        out+="$pid "
        changed=1
      fi
    done
  done
  out=${out# }
  echo "${out% }"
}

# --- ports: below the ephemeral range, so no outgoing connection of a client or a
# proxy holds one; never handed out twice in one run. `die` comes from the caller.
read -r EPH_LOW _ </proc/sys/net/ipv4/ip_local_port_range
PORT_LOW=10000
PORT_HIGH=$((EPH_LOW > PORT_LOW + 1000 ? EPH_LOW - 1 : 29999))
USED_PORTS=" "
port_free() { # nothing accepts connections on 127.0.0.1:$1
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
pick_port() { # VAR: set VAR to a free port not handed out before
  local p i
  for ((i = 0; i < 500; i++)); do
    p=$((PORT_LOW + (RANDOM * 32768 + RANDOM) % (PORT_HIGH - PORT_LOW + 1)))
    if [[ $USED_PORTS != *" $p "* ]] && port_free "$p"; then
      USED_PORTS+="$p "
      printf -v "$1" %s "$p"
      return 0
    fi
  done
  die "no free port found in $PORT_LOW-$PORT_HIGH"
}
