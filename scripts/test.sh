#!/usr/bin/env bash
# The whole test suite on a fresh Debian/Ubuntu machine, as root: installs what the tests
# drive for real (bpftool, tmux, Prometheus, iproute2, jq, curl, the rotel collector), then runs tox:
# lint (ruff, mypy --strict), the docs build (mkdocs --strict), the whole suite on the default
# Python, the units and the kernel tests on Python 3.10 and 3.13 (tox.ini's env_list).
# Extra arguments go to tox, e.g. `bash scripts/test.sh -e py311 -- -k stats`; the release
# run, every tier on every interpreter: `bash scripts/test.sh -e lint,docs,py310,py311,py312,py313`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root: the tests load BPF programs (CAP_BPF, CAP_SYS_ADMIN)" >&2
    exit 2
fi

need_apt=()
command -v bpftool >/dev/null || need_apt+=(bpftool)
command -v tmux >/dev/null || need_apt+=(tmux)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v strace >/dev/null || need_apt+=(strace)
command -v jq >/dev/null || need_apt+=(jq)
command -v curl >/dev/null || need_apt+=(curl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Test tools live in their own venv (PEP 668: nothing goes into the system Python).
TOOLS=.venv-tools
if [ ! -x "$TOOLS/bin/tox" ] || ! "$TOOLS/bin/python" -c 'import rotel' 2>/dev/null; then
    echo "== creating $TOOLS (tox, rotel collector)"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q --upgrade pip
    "$TOOLS/bin/pip" install -q tox rotel
fi
# rotel ships its collector binary inside the wheel; the tests find it through ROTEL_AGENT.
ROTEL_AGENT="$("$TOOLS/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
export ROTEL_AGENT

# Python 3.10-3.13 under pyenv are not on PATH by default; expose whichever exist.
for v in "${HOME:-/root}"/.pyenv/versions/3.1[0-3].*/bin; do
    [ -d "$v" ] && PATH="$PATH:$v"
done
export PATH

echo "== tox $*"
exec "$TOOLS/bin/tox" "$@"
