#!/usr/bin/env bash
# A standalone executable of the CLI, with every built-in provider and its SDK, made with PyInstaller:
# it runs on a Debian-bookworm-like system (glibc 2.36 or newer) with no Python installed.
#   dist/secrets-bridge/secrets-bridge     the executable; dist/secrets-bridge/_internal beside it
# One directory, not one file: a one-file build unpacks itself into $TMPDIR on every start (2-3 s of
# CPU each time, measured in docs/exec.md, and a writable /tmp, which a read-only container root
# lacks); the directory starts as fast as the installed package and is copied whole.
# Prints the executable's path as its last line. Uses ./.venv with the SDKs and PyInstaller (made with
# the `all` and `standalone` extras when missing); what only the test extra brings (mypy, hypothesis:
# pydantic names them as optional plugins) is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pyinstaller ] || bash scripts/venv.sh all,standalone >&2
work=build/standalone
mkdir -p "$work"
# The entry point: what the installed `secrets-bridge` console script runs.
printf 'import sys\n\nfrom bridge.cli import main\n\nsys.exit(main())\n' > "$work/secrets_bridge_main.py"
# Providers are imported by name when a config names them (bridge/provider.py BUILT_IN, entry points),
# so PyInstaller's analysis cannot see them: collect both packages whole. The package metadata holds
# the version (--version) and the entry points; --recursive-copy-metadata brings its dependencies' too,
# which some of them read at import time.
.venv/bin/pyinstaller --noconfirm --clean --log-level WARN \
    --onedir --name secrets-bridge \
    --distpath dist --workpath "$work" --specpath "$work" \
    --paths . \
    --collect-submodules bridge --collect-submodules providers \
    --collect-submodules watchdog.observers \
    --recursive-copy-metadata secrets-bridge \
    --exclude-module tkinter --exclude-module pytest --exclude-module mypy --exclude-module hypothesis \
    "$work/secrets_bridge_main.py" >&2
echo "$(pwd)/dist/secrets-bridge/secrets-bridge"
