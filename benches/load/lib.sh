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
