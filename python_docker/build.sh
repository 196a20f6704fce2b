#!/usr/bin/env bash
# Builds the BioCage sandbox image.
#
#   ./build.sh                 docker build from BASE_IMAGE (default python:3.11-slim),
#                              packages from the package index
#   ./build.sh --wheels        only download the wheels into wheels/ (python version of $TAG)
#   ./build.sh --download DIR PKG...
#                              only download wheels of PKG... (and pip) for $TAG's python
#                              into DIR, for offline custom images:
#                              biocage image build --offline --wheels DIR --requirements ...
#   ./build.sh --base          only make the Debian base image biocage-base:bookworm
#   ./build.sh --offline       for machines without a container registry: the base image
#                              is made from Debian packages (debootstrap) and the wheels
#                              are downloaded on the host, then installed without an index
#
# Environment: TAG (default biocage:latest), BASE_IMAGE, ENGINE (docker or podman),
# DEBIAN_MIRROR and DEBIAN_SUITE for --offline.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
TAG=${TAG:-biocage:latest}
ENGINE=${ENGINE:-docker}
# ENGINE may carry arguments, e.g. "podman --remote --url unix:///run/user/1001/podman/podman.sock".
read -ra ENGINE_CMD <<<"$ENGINE"
mode=${1:-online}
if [ "$mode" = --recipe-hash ]; then
  cat "$here/Dockerfile" "$here/requirements.txt" "$here/run_stdin.py" | sha256sum | cut -c1-16
  exit 0
fi

log() { echo "build.sh: $*" >&2; }

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  # The mirror this machine's apt already uses.
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
      | grep -v security | head -n1 | sed -E 's/^deb +(\[[^]]*\] +)?//; s/^URIs: *//' | awk '{print $1}')
  echo "${m:-http://deb.debian.org/debian}"
}

offline_base() {
  local base=biocage-base:bookworm
  if "${ENGINE_CMD[@]}" image inspect "$base" >/dev/null 2>&1; then echo "$base"; return; fi
  command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install -y debootstrap"; exit 1; }
  local dir
  dir=$(mktemp -d /tmp/biocage-rootfs.XXXXXX)
  log "creating $base with debootstrap in $dir"
  debootstrap --variant=minbase --include=python3 "${DEBIAN_SUITE:-bookworm}" "$dir" "$(debian_mirror)" >&2
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  chmod 0755 "$dir"  # mktemp made it 0700: as the image's root, non-root users could not enter it
  tar -C "$dir" -c . | "${ENGINE_CMD[@]}" import - "$base" >&2
  rm -rf "$dir"
  echo "$base"
}

download_wheels() { # IMAGE DIR PIP-ARGS...: wheels for IMAGE's python into DIR
  local image=$1 dir=$2 py
  shift 2
  py=$("${ENGINE_CMD[@]}" run --rm "$image" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  log "downloading wheels for python $py into $dir"
  python3 -m pip download --quiet --only-binary=:all: --python-version "$py" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any \
    -d "$dir" "$@" pip >&2
}

case "$mode" in
  --base)
    # Only make the Debian base (python3 and nothing else), if missing.
    offline_base >/dev/null
    exit 0
    ;;
  --wheels)
    # Only fill wheels/ (for builds through the engine API on offline machines).
    download_wheels "$TAG" "$here/wheels" -r "$here/requirements.txt"
    exit 0
    ;;
  --download)
    # Only download wheels of the packages named (for offline custom images).
    [ $# -ge 3 ] || { log "usage: build.sh --download DIR PKG..."; exit 2; }
    dir=$2
    shift 2
    mkdir -p "$dir"
    download_wheels "$TAG" "$dir" "$@"
    exit 0
    ;;
  --offline)
    base=$(offline_base)
    download_wheels "$base" "$here/wheels" -r "$here/requirements.txt"
    BASE_IMAGE=$base
    ;;
  online|--online) ;;
  *) log "unknown option '$mode' (use --offline or nothing)"; exit 2 ;;
esac

# The recipe's hash, as a label: setup scripts rebuild when the recipe changed.
recipe=$(cat "$here/Dockerfile" "$here/requirements.txt" "$here/run_stdin.py" | sha256sum | cut -c1-16)
args=(build -t "$TAG" --label "org.biocage.recipe=$recipe")
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
log "$ENGINE ${args[*]} $here"
"${ENGINE_CMD[@]}" "${args[@]}" "$here"
