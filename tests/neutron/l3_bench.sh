#!/bin/sh
# Runs l3_bench.py (Neutron's own L3 agent building routers, timed) with
# the benchmark-only venv /opt/xrouter-neutron-venv, creating it first if
# it is missing. As root. Arguments go to l3_bench.py, e.g.
#   tests/neutron/l3_bench.sh --routers 10 --fips 10
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${XROUTER_NEUTRON_VENV:-/opt/xrouter-neutron-venv}
if [ ! -x "$venv/bin/python" ] || \
   ! "$venv/bin/python" -c 'import neutron.agent.l3.agent' 2>/dev/null; then
    python=${PYTHON:-python3.11}
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --no-cache-dir \
        -r "$here/l3_bench-requirements.txt"
fi
exec "$venv/bin/python" "$here/l3_bench.py" "$@"
