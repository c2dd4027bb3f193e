#!/usr/bin/env bash
# benches/load/l4.sh: SCENARIO=l4 of scenarios.py (see README.md); env knobs as there.
exec env SCENARIO=l4 python3 "$(dirname "${BASH_SOURCE[0]}")/scenarios.py" "$@"
