#!/bin/sh
# Runs l3_bench.py (Neutron's own L3 agent building routers, timed) with
# the test venv scripts/setup.sh makes (Neutron and its dependencies, as
# tests/neutron/requirements.txt pins them). As root. Arguments go to
# l3_bench.py, e.g.
#   tests/neutron/l3_bench.sh --routers 10 --fips 10
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${XROUTER_VENV:-/opt/xrouter-venv}
if ! "$venv/bin/python" -c 'import neutron.agent.l3.agent' 2>/dev/null; then
    echo "l3_bench.sh: $venv lacks Neutron: run scripts/setup.sh first" >&2
    exit 1
fi
exec "$venv/bin/python" "$here/l3_bench.py" "$@"
