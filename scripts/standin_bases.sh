#!/usr/bin/env bash
# Stand-in base images for machines that cannot reach Docker Hub (see ../shared/compose-offline.md):
#   local/debian:bookworm     debootstrap --variant=minbase of this host's Debian mirror
#   local/python:3.11-slim    Debian's python3 (3.11) in a venv first on PATH, with this host's pip set-up
#                             (extra CA certificates, constraints, the local CPU torch wheel)
#   local/redis:7             Debian's redis-server (7.0), run as `redis` in /data like the official image
# Usage: scripts/standin_bases.sh [--force]     (needs a running engine: DOCKER_HOST or the default socket)
# Images that already exist are kept unless --force. Prints the names on the last line as
#   BASE_IMAGE=... REDIS_IMAGE=...
set -euo pipefail

DOCKER=${DOCKER:-/usr/bin/docker}
DEBIAN_IMAGE=${DEBIAN_IMAGE:-local/debian:bookworm}
PY_IMAGE=${PY_IMAGE:-local/python:3.11-slim}
REDIS_STANDIN=${REDIS_STANDIN:-local/redis:7}
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

log() { printf '[standin %s] %s\n' "$(date +%T)" "$*" >&2; }
have() { [[ $FORCE == 0 ]] && "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

mirror() {
    # The first Debian mirror of this host's apt sources (deb822 or one-line format).
    local m
    m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
    [[ -n $m ]] || m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
    echo "${m:-http://deb.debian.org/debian}"
}

WORK=$(mktemp -d /tmp/videotag-standin.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if ! have "$DEBIAN_IMAGE"; then
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 3; }
    MIRROR=$(mirror)
    log "debootstrap bookworm from $MIRROR"
    t0=$SECONDS
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    # apt sources: only the Debian ones (others need keys the minimal system lacks)
    rm -f "$WORK/rootfs/etc/apt/sources.list"
    if ls /etc/apt/sources.list.d/debian.sources >/dev/null 2>&1; then
        cp /etc/apt/sources.list.d/debian.sources "$WORK/rootfs/etc/apt/sources.list.d/"
    else
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR" \
            >"$WORK/rootfs/etc/apt/sources.list"
    fi
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | "$DOCKER" import - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
    log "$DEBIAN_IMAGE imported in $((SECONDS - t0)) s"
fi

if ! have "$PY_IMAGE"; then
    t0=$SECONDS
    ctx="$WORK/python"
    mkdir -p "$ctx/certs" "$ctx/wheels"
    # The extra CA certificates of this host (a TLS proxy stands between it and the registries)
    cp /usr/local/share/ca-certificates/*.crt "$ctx/certs/" 2>/dev/null || true
    # The host's constraints (torch capped to the local CPU wheel) and that wheel, if any
    if [[ -f /etc/xdg/pip/constraints.txt ]]; then cp /etc/xdg/pip/constraints.txt "$ctx/constraints.txt"
    else : >"$ctx/constraints.txt"; fi
    find_links=$(pip config get global.find-links 2>/dev/null || echo "${PIP_FIND_LINKS:-}")
    for d in $find_links; do cp "$d"/torch-*cpu*.whl "$ctx/wheels/" 2>/dev/null || true; done
    cat >"$ctx/pip.conf" <<'EOF'
[global]
cert = /etc/ssl/certs/ca-certificates.crt
constraint = /etc/pip/constraints.txt
find-links = /opt/wheels
EOF
    cat >"$ctx/Dockerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
COPY certs/ /usr/local/share/ca-certificates/
RUN update-ca-certificates && python3 -m venv /usr/local/python
COPY pip.conf /etc/pip.conf
COPY constraints.txt /etc/pip/constraints.txt
COPY wheels/ /opt/wheels/
ENV PATH=/usr/local/python/bin:\$PATH LANG=C.UTF-8
CMD ["python3"]
EOF
    "$DOCKER" build -q -t "$PY_IMAGE" "$ctx" >/dev/null
    log "$PY_IMAGE built in $((SECONDS - t0)) s"
fi

if ! have "$REDIS_STANDIN"; then
    t0=$SECONDS
    ctx="$WORK/redis"
    mkdir -p "$ctx"
    # Like the official image: `redis-server ARGS` without a config file runs with protected mode off.
    cat >"$ctx/entrypoint.sh" <<'EOF'
#!/bin/sh
if [ "${1:-}" = redis-server ]; then shift; exec redis-server --protected-mode no "$@"; fi
exec "$@"
EOF
    cat >"$ctx/Dockerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
EOF
    "$DOCKER" build -q -t "$REDIS_STANDIN" "$ctx" >/dev/null
    log "$REDIS_STANDIN built in $((SECONDS - t0)) s"
fi

echo "BASE_IMAGE=$PY_IMAGE REDIS_IMAGE=$REDIS_STANDIN"
