# Images of the three nixcache services, one target each: signer, index,
# gateway. They are built FROM scratch out of the static binaries that
# `make build` writes to bin/, so building pulls nothing and works with the
# classic builder as well as BuildKit:
#
#   make build && docker compose build     (or docker-compose build)
#   docker build --target gateway -t nixcache-gateway .
#
# Each image holds its binary, /etc/passwd and /etc/group (user nixcache,
# 65532) and, for the signer and the index, the directory that their volume
# is mounted on, owned by that user (a new named volume takes its owner from
# it); the signer's and the index's gRPC sockets live in /run/nixcache/,
# each in a volume of its own, which the service's callers mount. No CA
# certificates: the one TLS connection a service makes of its own is the
# index's to an https:// upstream cache (docker/upstream.yml), checked
# against the roots compiled into nixcache-index
# (golang.org/x/crypto/x509roots/fallback) or those SSL_CERT_FILE names.
# The binaries are the entrypoints; `<binary> healthcheck` is each one's
# health check (there is no shell).

FROM scratch AS base
COPY docker/passwd docker/group /etc/
ENV NIXCACHE_LOG_FORMAT=json
USER 65532:65532

FROM base AS signer
COPY --chown=65532:65532 docker/volumes/signer/ /var/lib/nixcache/signer/
COPY --chown=65532:65532 docker/volumes/socket/ /run/nixcache/signer/
COPY bin/nixcache-signer /nixcache-signer
ENV NIXCACHE_LISTEN=unix:/run/nixcache/signer/signer.sock \
    NIXCACHE_KEY_FILES=/var/lib/nixcache/signer/secret.key
VOLUME /var/lib/nixcache/signer
ENTRYPOINT ["/nixcache-signer"]

FROM base AS index
COPY --chown=65532:65532 docker/volumes/index/ /var/lib/nixcache/index/
COPY --chown=65532:65532 docker/volumes/socket/ /run/nixcache/signer/
COPY --chown=65532:65532 docker/volumes/socket/ /run/nixcache/index/
COPY bin/nixcache-index /nixcache-index
ENV NIXCACHE_LISTEN=unix:/run/nixcache/index/index.sock \
    NIXCACHE_SIGNER_ADDR=unix:/run/nixcache/signer/signer.sock \
    NIXCACHE_DATA_DIR=/var/lib/nixcache/index
VOLUME /var/lib/nixcache/index
ENTRYPOINT ["/nixcache-index"]

FROM base AS gateway
COPY --chown=65532:65532 docker/volumes/socket/ /run/nixcache/index/
COPY bin/nixcache-gateway /nixcache-gateway
ENV NIXCACHE_LISTEN=0.0.0.0:5000 \
    NIXCACHE_INDEX_ADDR=unix:/run/nixcache/index/index.sock
EXPOSE 5000
ENTRYPOINT ["/nixcache-gateway"]

# docker/s3.yml: Versity Gateway, the S3 server of the bucket backend, built
# static by `make bin/versitygw` at the version pinned in scripts/tools.sh.
FROM base AS s3
COPY --chown=65532:65532 docker/volumes/s3/ /var/lib/versitygw/
COPY bin/versitygw /versitygw
EXPOSE 7070
VOLUME /var/lib/versitygw
ENTRYPOINT ["/versitygw"]
CMD ["--port", ":7070", "posix", "/var/lib/versitygw"]
