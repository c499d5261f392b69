# Shared by scripts/test, scripts/demo and scripts/bench. Source it; do not run it.

# Runs apt-get install for the packages that are not installed yet (idempotent, quiet).
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Makes sure cargo is on PATH and the build tools crates with C parts need are there.
ensure_rust() {
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    if ! command -v cargo >/dev/null; then
        echo "cargo is not installed: install the Rust toolchain (https://rustup.rs) and run this again" >&2
        exit 1
    fi
    command -v cc >/dev/null || apt_install build-essential
    command -v pkg-config >/dev/null || apt_install pkg-config
}

ensure_nextest() {
    cargo nextest --version >/dev/null 2>&1 || cargo install --locked cargo-nextest
}
