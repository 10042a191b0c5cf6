#!/usr/bin/env bash
# Builds a local stand-in for `python:3.11-slim` where no registry is reachable: a minimal
# Debian bookworm root (debootstrap) with Python 3.11 and venv, imported as a Docker image.
# Usage: docker/build-base.sh [TAG]   (default recsys/base:bookworm; skips if the tag exists)
set -euo pipefail
TAG=${1:-recsys/base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG exists"; exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$MIRROR" >/dev/null
# a slim image: no apt lists, docs or locales
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$TAG"
docker image ls "$TAG"
