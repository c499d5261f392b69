# HAProxy 2.6 from Debian (`haproxy`), for scripts/test, scripts/demo and scripts/bench.
# Source it after scripts/lib/common.sh (ensure_haproxy needs apt_install); do not run it.
#
# The package's own service (systemd unit / init script, /etc/haproxy/haproxy.cfg) is not used:
# the e2e harness (tests/src/haproxy.rs) starts its own `haproxy -W -db -f cfg` processes with
# generated configs, temp-dir sockets and free loopback ports. If the package starts a system
# haproxy (in a container without systemd it usually does not), that is harmless: nothing of
# ours talks to it or to its fixed ports.

ensure_haproxy() {
    apt_install haproxy
    if ! command -v haproxy >/dev/null; then
        echo "haproxy is not on PATH after installing the haproxy package" >&2
        return 1
    fi
}
