#!/usr/bin/env bash
# The two set-up commands of README, each self-sufficient on a fresh machine:
#   bash ops/run.sh demo   -> installs what the demo needs, runs `ecgscreen demo`
#   bash ops/run.sh test   -> installs the test tools, runs lint, types and the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-}"; shift || true
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: this pin is a CPU build served locally; an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
case "$what" in
  demo)
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[embedded,wfdb,intake]"
    exec .venv/bin/ecgscreen demo "$@"
    ;;
  test)
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[embedded,wfdb,intake,dev]"
    .venv/bin/ruff check .
    .venv/bin/mypy schemas models workers ops
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash ops/run.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
