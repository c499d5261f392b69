#!/bin/bash
# web-entrypoint: runs the demo web server (8080 and 9090) and the announcer side by side.
# SIGTERM/SIGINT go to the announcer first, so both instances drain and leave the registry
# before the web server stops. If either process exits on its own, the other is stopped and
# the container exits with that status (so `restart:` policies and `docker ps` see it).
#
# Environment: REGISTRY_ADDR (required), WEB_NAME (default: host name), ANNOUNCE_IP (default:
# this container's address), ANNOUNCER_ARGS (extra announcer flags), RUST_LOG.
set -uo pipefail

: "${REGISTRY_ADDR:?set REGISTRY_ADDR to the registry nodes, e.g. http://registry1:7401,...}"
name=${WEB_NAME:-$(hostname)}
ip=${ANNOUNCE_IP:-$(getent hosts "$(hostname)" | awk '{ print $1; exit }')}
if [ -z "$ip" ]; then
    echo "web-entrypoint: cannot find this container's address; set ANNOUNCE_IP" >&2
    exit 1
fi

config=/run/announcer.toml
sed -e "s|@REGISTRY@|$REGISTRY_ADDR|g" -e "s|@NAME@|$name|g" -e "s|@IP@|$ip|g" \
    /etc/announcer/announcer.toml.in >"$config"
echo "web-entrypoint: $name announces $ip:8080 (web-servers) and $ip:9090 (api-servers)" >&2

demo_web --name "$name" --listen 0.0.0.0:8080 --listen 0.0.0.0:9090 --fail-file /tmp/fail &
web=$!
# shellcheck disable=SC2086
announcer --config "$config" ${ANNOUNCER_ARGS:-} &
announcer=$!

stop() {
    echo "web-entrypoint: $1: stopping the announcer (it drains first), then the web server" >&2
    kill -TERM "$announcer" 2>/dev/null
    wait "$announcer"
    local status=$?
    kill -TERM "$web" 2>/dev/null
    wait "$web"
    exit "$status"
}
trap 'stop SIGTERM' TERM
trap 'stop SIGINT' INT

# Returns when a child exits, or early when a trapped signal arrives (the trap then exits).
wait -n "$web" "$announcer"
status=$?
echo "web-entrypoint: a process exited with status $status; stopping the other" >&2
kill -TERM "$announcer" "$web" 2>/dev/null
wait
exit "$status"
