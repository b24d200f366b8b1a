#!/usr/bin/env bash
# A Debian bookworm base image made locally from Debian's packages, for machines that reach Debian's
# archive but no registry of images:  debootstrap --variant=minbase, then `tar | podman import`.
#   scripts/build-base.sh python     minbase + python3, python3-venv (the Dockerfile's BASE stand-in)
#   scripts/build-base.sh minimal    minbase alone, no Python (where the standalone executable runs)
# Prints the image name (localhost/secrets-bridge-base:bookworm-<kind>-<hash>) as its last line.
# The name carries a hash of the recipe, so a present image is reused as it is, and the root
# filesystem is cached as a tarball (BRIDGE_CACHE, default /var/cache/secrets-bridge as root,
# else ~/.cache/secrets-bridge) so that a wiped image store costs an import, not a debootstrap.
# Needs root (debootstrap) and podman or docker. Never touches an image it did not name.
set -euo pipefail
kind=${1:-python}
case "$kind" in
    python) include=python3,python3-venv ;;
    minimal) include= ;;
    *) echo "usage: $0 [python|minimal]" >&2; exit 2 ;;
esac
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
engine=${CONTAINER_ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
recipe="debootstrap --variant=minbase --include=$include $suite (recipe 1)"
hash=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
image="localhost/secrets-bridge-base:$suite-$kind-$hash"

if [ "$(id -u)" = 0 ]; then cache=${BRIDGE_CACHE:-/var/cache/secrets-bridge}
else cache=${BRIDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/secrets-bridge}; fi
mkdir -p "$cache"
exec 9>"$cache/base.lock"
flock 9  # one build of a base at a time, also across checkouts sharing the cache and image store

if ! "$engine" image inspect "$image" >/dev/null 2>&1; then
    tarball="$cache/base-$suite-$kind-$hash.tar"
    if [ ! -s "$tarball" ]; then
        command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
        root=$(mktemp -d "$cache/root.XXXXXX")
        trap 'rm -rf "$root" "$tarball.part"' EXIT
        echo "debootstrap $suite ($kind) from $mirror, about a minute or two" >&2
        debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$root" "$mirror" \
            >"$cache/debootstrap-$kind.log" 2>&1 \
            || { echo "debootstrap failed; see $cache/debootstrap-$kind.log" >&2; exit 1; }
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar --numeric-owner -C "$root" -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$root"
        trap - EXIT
    fi
    "$engine" import --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
fi
echo "$image"
