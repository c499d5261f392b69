# A load balancer: HAProxy 2.6 (Debian's package) in master-worker mode with empty backends,
# and the syncer filling them through the Runtime API. Build context: docker/.
#   docker build -f docker/lb.Dockerfile -t sd-lb:local docker
FROM debian:bookworm-slim

# With the official debian:bookworm-slim this installs HAProxy from Debian as usual. The local
# base image docker/build-base-image.sh makes when no container registry is reachable already
# contains haproxy (debootstrap --include=haproxy), so a machine whose `docker build` has no
# network gets a working image too: the install is skipped when haproxy is present.
RUN if command -v haproxy >/dev/null; then \
        echo "haproxy already in the base image: $(haproxy -v | head -n1)"; \
    else \
        apt-get update && apt-get install -y --no-install-recommends haproxy && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mkdir -p /run/haproxy /var/lib/syncer

COPY bin/syncer /usr/local/bin/syncer
COPY http-ok /usr/local/bin/http-ok
COPY lb/haproxy.cfg /etc/haproxy/haproxy.cfg
COPY lb/entrypoint.sh /usr/local/bin/lb-entrypoint

# 80: web-servers, 81: api-servers (8404: HAProxy's stats page, not published).
EXPOSE 80 81 8404
# The syncer's /healthz (its admin endpoint stays inside the container).
HEALTHCHECK --interval=2s --timeout=3s --retries=5 CMD ["http-ok", "9480", "/healthz"]
ENTRYPOINT ["lb-entrypoint"]
