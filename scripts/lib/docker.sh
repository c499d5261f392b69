# Docker images of the suite, for docker-compose.yml and tests/tests/compose_smoke.rs. Source it
# after scripts/lib/common.sh (for ensure_rust), or on its own; do not run it.
#
#   ensure_docker_images    build the release binaries, make sure the base image
#                           debian:bookworm-slim exists (pulled, or built locally by
#                           docker/build-base-image.sh), then build sd-registry:local,
#                           sd-web:local and sd-lb:local (docker's layer cache makes a rebuild
#                           with unchanged binaries take seconds)
#   docker_usable           true when a Docker engine answers
#   compose_cmd             prints the compose command to use: `docker-compose` (v1) or
#                           `docker compose` (v2)
#
# The binaries are built on the host (the images are Debian bookworm, like the machines this
# project builds on, so glibc matches) and copied, without debug info, into docker/bin/ (the
# build context is docker/, so target/ is never sent to the daemon).

SD_IMAGES=(registry web lb)

docker_usable() {
    command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1
}

compose_cmd() {
    if command -v docker-compose >/dev/null; then
        echo docker-compose
    elif docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    else
        echo "neither docker-compose nor the docker compose plugin is installed" >&2
        return 1
    fi
}

ensure_docker_images() (
    set -euo pipefail
    cd "$(dirname "${BASH_SOURCE[0]}")/../.."
    if declare -F ensure_rust >/dev/null; then ensure_rust; else [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; fi
    # Called from a test (tests/tests/compose_smoke.rs), this inherits the variables cargo sets
    # for the crate under test (CARGO_MANIFEST_DIR=.../tests, CARGO_PKG_NAME=e2e, ...). Build
    # scripts such as ring's watch some of them (rerun-if-env-changed), so they would force a
    # rebuild of half the release tree here, and again in the next build from a shell.
    local v
    for v in $(compgen -e); do
        case $v in
            CARGO_MANIFEST_* | CARGO_PKG_* | CARGO_CRATE_NAME | CARGO_BIN_NAME | CARGO_BIN_EXE_* | \
                CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR | CARGO_RUSTC_CURRENT_DIR | OUT_DIR) unset "$v" ;;
        esac
    done
    cargo build --release --locked -p registry -p announcer -p syncer -p e2e \
        --bin registry --bin announcer --bin syncer --bin demo_web
    mkdir -p docker/bin
    for b in registry announcer syncer demo_web; do
        # Stripped of debug info: the images stay small; strip is deterministic, so unchanged
        # binaries keep docker's layer cache valid.
        strip --strip-debug -o "docker/bin/$b.tmp" "${CARGO_TARGET_DIR:-target}/release/$b"
        mv -f "docker/bin/$b.tmp" "docker/bin/$b"
    done
    docker/build-base-image.sh
    for img in "${SD_IMAGES[@]}"; do
        echo "building sd-$img:local"
        # Quiet unless it fails (the legacy builder also warns about itself on every build).
        if ! out=$(docker build -f "docker/$img.Dockerfile" -t "sd-$img:local" docker 2>&1); then
            echo "$out" >&2
            echo "docker build of sd-$img:local failed" >&2
            return 1
        fi
    done
    docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(sd-(registry|web|lb):local|debian:bookworm-slim) ' >&2
)
