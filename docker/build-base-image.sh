#!/usr/bin/env bash
# Makes sure the base image the Dockerfiles start from, `debian:bookworm-slim`, exists locally.
#
#   docker/build-base-image.sh            use the local image, else pull it, else build it
#   BASE_IMAGE_FORCE_LOCAL=1 docker/...   build the local one even if a pull could work
#
# On a machine that reaches a container registry this is just `docker pull debian:bookworm-slim`.
# Without one (an air-gapped CI box, or this project's test machine), it builds an equivalent
# image from Debian packages, which only needs the Debian mirror apt already uses:
#
#   debootstrap --variant=minbase --include=ca-certificates,haproxy bookworm ROOTFS MIRROR
#   tar -C ROOTFS -c . | docker import - debian:bookworm-slim
#
# The local image also contains `haproxy` (Debian's 2.6). `docker build` on such a machine may
# have no network either, so docker/lb.Dockerfile's `apt-get install haproxy` could not run
# there; it skips the install when haproxy is already present. With the official image the
# Dockerfile installs it as usual. (ca-certificates is in the image for the same reason.)
#
# Idempotent: does nothing when the image exists. Needs root (or sudo) for debootstrap.
# Environment: DEBIAN_MIRROR (default: the first deb.debian.org-style URI in apt's sources,
# else http://deb.debian.org/debian), BASE_IMAGE (default debian:bookworm-slim).
set -euo pipefail

IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
SUITE=bookworm

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE: present"
    exit 0
fi

if [ -z "${BASE_IMAGE_FORCE_LOCAL:-}" ]; then
    echo "base image $IMAGE: not present, trying to pull it"
    # Bounded: without a reachable registry a pull can hang on DNS or TCP for a long time.
    if timeout 60 docker pull "$IMAGE" >/dev/null 2>&1; then
        echo "base image $IMAGE: pulled"
        exit 0
    fi
    echo "base image $IMAGE: cannot be pulled, building an equivalent one with debootstrap"
fi

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if ! command -v debootstrap >/dev/null; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # Use the mirror the host's apt uses (deb822 or one-line format), so a proxy/mirror set up
    # for apt works here too.
    mirror=$(grep -rhoE '^(URIs:|deb)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | grep -oE 'https?://[^[:space:]]+' |
        grep -E '/debian/?$' | head -n1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

rootfs=$(mktemp -d /tmp/bookworm-rootfs.XXXXXX)
cleanup() { $sudo rm -rf "$rootfs"; }
trap cleanup EXIT

echo "debootstrap $SUITE from $mirror into $rootfs (a few minutes)"
$sudo debootstrap --variant=minbase --include=ca-certificates,haproxy "$SUITE" "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

# What the official slim image does: sources for the main archive and security updates, apt
# that keeps no package cache, no downloaded lists, and no generated noise.
$sudo tee "$rootfs/etc/apt/sources.list" >/dev/null <<SOURCES
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
$sudo tee "$rootfs/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
$sudo tee "$rootfs/etc/apt/apt.conf.d/docker-no-languages" >/dev/null <<'APT'
Acquire::Languages "none";
APT
$sudo rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log \
    "$rootfs"/tmp/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
# The package's own HAProxy service is never used in a container (no init system there).
$sudo rm -f "$rootfs/etc/rc"*.d/*haproxy 2>/dev/null || true

$sudo tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "debootstrap --variant=minbase --include=ca-certificates,haproxy $SUITE (built by docker/build-base-image.sh)" \
    - "$IMAGE" >/dev/null
echo "base image $IMAGE: built locally ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
