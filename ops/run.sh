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
# Debian tools some tests drive: Chromium for the browser tests (Playwright's own browser download is
# not reachable) and docker-compose for `config` on the compose files (no engine runs here).
# Installed only when missing, and only where we may (root with apt-get); otherwise those tests skip, saying why.
ensure_deb() {  # ensure_deb EXECUTABLE PACKAGE
  [ -x "$1" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $2 for the tests (apt-get)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null) \
      || echo "$2 could not be installed; the tests that need it will skip" >&2
  else
    echo "$2 is missing and this is not root with apt-get; the tests that need it will skip" >&2
  fi
}

case "$what" in
  demo)
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[embedded,wfdb,intake,web]"
    exec .venv/bin/ecgscreen demo "$@"
    ;;
  test)
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[embedded,wfdb,intake,web,dev]"
    ensure_deb /usr/bin/chromium chromium
    ensure_deb /usr/bin/docker-compose docker-compose
    .venv/bin/ruff check .
    .venv/bin/mypy schemas models workers ops
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash ops/run.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
