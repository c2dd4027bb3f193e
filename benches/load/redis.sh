#!/usr/bin/env bash
# benches/load/redis.sh: SCENARIO=redis of scenarios.py (see README.md); env knobs as there.
exec env SCENARIO=redis python3 "$(dirname "${BASH_SOURCE[0]}")/scenarios.py" "$@"
