#!/bin/bash
# lb-entrypoint: runs HAProxy in master-worker mode (-W, foreground) and the syncer beside it.
# SIGTERM/SIGINT stop the syncer, then HAProxy (the master stops its workers). If either
# process exits on its own, the other is stopped and the container exits with that status.
#
# Environment: REGISTRY_ADDR (required), SYNCER_ID (default: host name), SYNCER_ARGS (extra
# syncer flags), RUST_LOG.
set -uo pipefail

: "${REGISTRY_ADDR:?set REGISTRY_ADDR to the registry nodes, e.g. http://registry1:7401,...}"
socket=/run/haproxy/admin.sock
mkdir -p /run/haproxy /var/lib/syncer
rm -f "$socket"

haproxy -W -db -f /etc/haproxy/haproxy.cfg &
haproxy=$!
for _ in $(seq 100); do
    [ -S "$socket" ] && break
    kill -0 "$haproxy" 2>/dev/null || { wait "$haproxy"; exit $?; }
    sleep 0.1
done

# shellcheck disable=SC2086
syncer --haproxy-socket "$socket" --backend web-servers --backend api-servers \
    --state-dir /var/lib/syncer --admin 127.0.0.1:9480 --id "${SYNCER_ID:-$(hostname)}" ${SYNCER_ARGS:-} &
syncer=$!

stop() {
    echo "lb-entrypoint: $1: stopping the syncer, then HAProxy" >&2
    kill -TERM "$syncer" 2>/dev/null
    wait "$syncer"
    kill -TERM "$haproxy" 2>/dev/null
    wait "$haproxy"
    exit 0
}
trap 'stop SIGTERM' TERM
trap 'stop SIGINT' INT

wait -n "$haproxy" "$syncer"
status=$?
echo "lb-entrypoint: a process exited with status $status; stopping the other" >&2
kill -TERM "$syncer" "$haproxy" 2>/dev/null
wait
exit "$status"
