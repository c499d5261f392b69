# A web "VM": the demo web server on two ports (8080 for web-servers, 9090 for api-servers) and
# the announcer registering both. Build context: docker/.
#   docker build -f docker/web.Dockerfile -t sd-web:local docker
FROM debian:bookworm-slim

COPY bin/demo_web bin/announcer /usr/local/bin/
COPY http-ok /usr/local/bin/http-ok
COPY web/announcer.toml.in /etc/announcer/announcer.toml.in
COPY web/entrypoint.sh /usr/local/bin/web-entrypoint

EXPOSE 8080 9090
HEALTHCHECK --interval=2s --timeout=3s --retries=5 CMD ["http-ok", "8080", "/health"]
# The entrypoint forwards SIGTERM to the announcer, which drains (state `drain`, then
# deregisters) before the web server stops; `docker stop` waits 10 s by default, enough for it.
ENTRYPOINT ["web-entrypoint"]
