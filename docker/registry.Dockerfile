# A registry node. Build context: docker/ (scripts/lib/docker.sh puts the binaries in docker/bin/).
#   docker build -f docker/registry.Dockerfile -t sd-registry:local docker
FROM debian:bookworm-slim

COPY bin/registry /usr/local/bin/registry
COPY http-ok /usr/local/bin/http-ok

# The Raft log, vote and snapshots.
VOLUME /data
EXPOSE 7401
# /readyz: a member that knows a leader.
# Over TLS too (`registry health` uses REGISTRY_CA_FILE): set REGISTRY_HEALTH_ADDR to the name the
# node's certificate is for, e.g. https://registry1:7401.
HEALTHCHECK --interval=2s --timeout=3s --start-period=5s --retries=30 \
    CMD registry health --registry "${REGISTRY_HEALTH_ADDR:-http://127.0.0.1:7401}" >/dev/null
ENTRYPOINT ["registry"]
CMD ["serve", "--listen", "0.0.0.0:7401", "--data-dir", "/data"]
