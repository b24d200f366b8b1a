#!/usr/bin/env bash
# Builds the repository's Dockerfile into localhost/secrets-bridge:<version> and prints the image
# name as its last line (the build's own output goes to stderr).
#   - podman where it works, else docker (CONTAINER_ENGINE=docker|podman to choose);
#   - the Dockerfile's BASE (python:3.11-slim-bookworm) when it is present or can be pulled, else a
#     stand-in made from Debian's packages (scripts/build-base.sh python, cached); BRIDGE_BASE=IMAGE
#     names another base;
#   - podman builds on the host's network (--network host) with the host's CA bundle mounted over the
#     image's own, so pip inside the build reaches the package index as the host's pip does, and in
#     Docker's format (--format docker), which keeps the HEALTHCHECK (the OCI format drops it).
# BRIDGE_IMAGE=NAME names the result instead. (Not SECRETS_BRIDGE_*: the bridge reads those itself.)
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
image=${BRIDGE_IMAGE:-localhost/secrets-bridge:$version}

engine=${CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
    if command -v podman >/dev/null && podman info >/dev/null 2>&1; then engine=podman
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
    else echo "neither podman nor docker can run here (install podman, or start Docker's daemon)" >&2; exit 1
    fi
fi

# The base: the Dockerfile's own when it can be had, else the local stand-in.
base=${BRIDGE_BASE:-}
if [ -z "$base" ]; then
    default=$(sed -n 's/^ARG BASE=//p' Dockerfile)
    case "$default" in */*) qualified=$default ;; *) qualified=docker.io/library/$default ;; esac
    if "$engine" image inspect "$qualified" >/dev/null 2>&1 || "$engine" pull -q "$qualified" >/dev/null 2>&1; then
        base=$qualified
    else
        echo "cannot pull $qualified; making a stand-in from Debian's packages" >&2
        base=$(CONTAINER_ENGINE=$engine bash scripts/build-base.sh python | tail -n 1)
    fi
fi

# The CA bundle the host's pip trusts: pip's own setting, then certifi's, then Debian's.
ca_bundle() {
    local from_pip
    [ -n "${PIP_CERT:-}" ] && [ -s "$PIP_CERT" ] && { echo "$PIP_CERT"; return; }
    for pip in pip3 pip; do
        from_pip=$("$pip" config list 2>/dev/null | sed -n "s/^[a-z:.]*cert='\(.*\)'$/\1/p" | head -n 1) || true
        [ -n "$from_pip" ] && [ -s "$from_pip" ] && { echo "$from_pip"; return; }
    done
    from_pip=$(python3 -c 'import certifi; print(certifi.where())' 2>/dev/null) || true
    [ -n "$from_pip" ] && [ -s "$from_pip" ] && { echo "$from_pip"; return; }
    [ -s /etc/ssl/certs/ca-certificates.crt ] && echo /etc/ssl/certs/ca-certificates.crt
    return 0
}

args=(build --tag "$image" --build-arg "BASE=$base" --file Dockerfile)
if [ "$engine" = podman ]; then
    args+=(--network host --format docker)
    bundle=$(ca_bundle)
    if [ -n "$bundle" ]; then
        bundle=$(readlink -f "$bundle")
        args+=(--volume "$bundle:/etc/ssl/certs/ca-certificates.crt:ro"
               --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
    fi
fi
echo "$engine ${args[*]} ." >&2
"$engine" "${args[@]}" . >&2
echo "$image"
