#!/usr/bin/env bash
# Build the local base images of the test hosts (no registry is reachable):
# Debian minbase + python3 + systemd, made with debootstrap and docker import.
# An image that exists is kept; GPUFLEET_REBUILD_IMAGES=1 rebuilds them.
set -euo pipefail
CACHE="${GPUFLEET_CACHE:-/var/cache/gpufleet}"
MIRROR="${GPUFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$CACHE"
for suite in bookworm trixie; do
  image="gpufleet-base:$suite"
  if [ "${GPUFLEET_REBUILD_IMAGES:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
    continue
  fi
  rootfs="$CACHE/rootfs-$suite"
  if [ ! -x "$rootfs/lib/systemd/systemd" ]; then
    echo "debootstrap $suite (about a minute)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,systemd,systemd-sysv,iproute2 \
      "$suite" "$rootfs" "$MIRROR" >"$CACHE/debootstrap-$suite.log" 2>&1 ||
      { tail -20 "$CACHE/debootstrap-$suite.log" >&2; exit 1; }
  fi
  tar -C "$rootfs" -c . | docker import -c 'CMD ["/lib/systemd/systemd"]' - "$image" >/dev/null
  echo "built $image"
done
