#!/usr/bin/env bash
# System packages some tests start or use themselves, installed from Debian's archive when missing:
#   PostgreSQL 15 (behind OpenBao's database engine), nginx (a TLS consumer), strace (the SIGKILL test
#   kills inside a commit), faketime (a bridge whose clock is skewed from Vault's), and for the
#   container tests podman, runc and debootstrap, plus podman's
#   system-wide settings this kind of machine needs (tests/test_container.py).
# A no-op when everything is present. Never fails the caller: a failed install is reported on
# stderr, and the tests that need the package then skip saying why. Needs root for anything to do.
set -uo pipefail

postgres_server() {  # initdb where `pg_config --bindir` says (libpq-dev alone has pg_config too)
    local bindir
    bindir=$(pg_config --bindir 2>/dev/null) && [ -x "$bindir/initdb" ] && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
postgres_server || missing+=(postgresql-15)
has nginx || missing+=(nginx)
has strace || missing+=(strace)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || missing+=(faketime)
has podman || missing+=(podman)
has runc || missing+=(runc)
has debootstrap || missing+=(debootstrap)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "warning: missing ${missing[*]} (needs root and apt-get to install); their tests will skip" >&2
    else
        echo "installing ${missing[*]}" >&2
        log=/tmp/secrets-bridge-ci-apt.log
        # policy-rc.d: install the packages without starting their system services
        restore_policy=false
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && restore_policy=true
        fi
        # podman with its recommended packages (conmon's helpers, slirp4netns, uidmap...), as checked
        # by hand on this kind of machine; the rest without theirs
        containers=() others=()
        for package in "${missing[@]}"; do
            case $package in podman|runc|debootstrap) containers+=("$package") ;; *) others+=("$package") ;; esac
        done
        (apt-get update -q \
            && { [ "${#others[@]}" = 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${others[@]}"; } \
            && { [ "${#containers[@]}" = 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${containers[@]}"; }) \
            >"$log" 2>&1 \
            || echo "warning: could not install ${missing[*]} (see $log); their tests will skip" >&2
        if $restore_policy; then rm -f /usr/sbin/policy-rc.d; fi
    fi
fi

# podman, system-wide: no default rlimits (a sandbox may refuse podman's default setrlimit), and runc
# (crun refuses hybrid cgroups). Written only where no containers.conf exists yet: an administrator's
# own file is left alone, and the tests then run with what it says.
if [ "$(id -u)" = 0 ] && has podman && [ ! -e /etc/containers/containers.conf ]; then
    mkdir -p /etc/containers
    cat > /etc/containers/containers.conf <<'EOF'
# Written by secrets-bridge's scripts/install-system-deps.sh for its container tests.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF
    echo "wrote /etc/containers/containers.conf (default_ulimits = [], runtime runc)" >&2
fi
exit 0
