#!/bin/sh
# Builds local stand-ins for the three official base images that compose.yaml and the Dockerfile
# name, for machines that reach Debian's package mirror but no container registry (Docker Hub is
# not reachable where this was written). Each is Debian bookworm made here with debootstrap:
#
#   localhost/pscsync-standin/debian:bookworm             minbase rootfs (+ ca-certificates)
#   localhost/pscsync-standin/python:3.11-slim-bookworm   for python:3.11-slim-bookworm (Python 3.11.2)
#   localhost/pscsync-standin/postgres:15-bookworm        for postgres:16 (Debian ships PostgreSQL 15)
#   localhost/pscsync-standin/redis:7-bookworm            for redis:7 (Redis 7.0)
#
# They carry their own names, never the official ones, so nothing later mistakes them for the real
# images; check.sh hands them to compose.yaml through PSCSYNC_*_IMAGE. Needs root, podman and
# debootstrap (check.sh installs them). Re-running reuses what exists; REBUILD=1 starts afresh.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${PSCSYNC_STANDIN_DIR:-/var/tmp/pscsync-standin}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/containers.conf}
BASE=localhost/pscsync-standin/debian:bookworm

# The Debian mirror apt already uses on this machine (deb822 "URIs:" or one-line "deb" entries).
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | sed -n -e 's/^URIs: *\(http[^ ]*\/debian\)\/\{0,1\} *$/\1/p' -e 's/^deb  *\(http[^ ]*\/debian\)\/\{0,1\}  *bookworm .*/\1/p' \
    | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}

have() { podman image exists "$1" && [ "${REBUILD:-0}" != 1 ]; }

if ! have "$BASE"; then
    rm -rf "$WORK/rootfs"
    mkdir -p "$WORK"
    echo "debootstrap bookworm (minbase) from $mirror"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$WORK/rootfs" "$mirror" > "$WORK/debootstrap.log"
    # Trust what this machine trusts: where outbound HTTPS passes a TLS-inspecting gateway, its CA
    # is in /usr/local/share/ca-certificates, and pip inside a build needs it (the official images
    # would need the same on such a network). Public certificates only.
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
        cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
        chroot "$WORK/rootfs" update-ca-certificates >/dev/null
    fi
    echo "deb $mirror bookworm main" > "$WORK/rootfs/etc/apt/sources.list"
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | podman import --change 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
fi

build() {  # image name, Containerfile
    if ! have "$1"; then
        echo "building $1"
        podman build --pull=never -q -t "$1" -f "$HERE/standin/$2" "$HERE/standin" >/dev/null
    fi
}
build localhost/pscsync-standin/python:3.11-slim-bookworm python.Containerfile
build localhost/pscsync-standin/postgres:15-bookworm postgres.Containerfile
build localhost/pscsync-standin/redis:7-bookworm redis.Containerfile
podman images --filter reference='localhost/pscsync-standin/*' --format '{{.Repository}}:{{.Tag}}  {{.Size}}'
