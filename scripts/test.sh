#!/usr/bin/env bash
# The whole test suite, from a fresh clone: system packages, virtualenv, install, lint, type-check,
# security lint, tests. The tests start their own servers (OpenBao dev server, moto, the Azure Key Vault
# fake) on loopback, and the container tests build and run the image with podman.
set -euo pipefail
bash "$(dirname "$0")/install-system-deps.sh"  # never fails: what cannot be installed makes its tests skip
source "$(dirname "$0")/venv.sh" test
.venv/bin/ruff check bridge providers tests bench
.venv/bin/mypy
.venv/bin/bandit -q -r bridge providers -c pyproject.toml
# Three workers on two cores: most tests wait on a server, a child process or a clock, so a third
# worker fills the idle time (each worker starts its own servers); worksteal keeps the long tests
# from ending the run on one worker. BRIDGE_TEST_WORKERS=0
# (or -n 0) runs it serially.
exec .venv/bin/pytest -n "${BRIDGE_TEST_WORKERS:-3}" --dist worksteal "$@"
