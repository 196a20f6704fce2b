#!/usr/bin/env bash
# Sets up everything BioCage needs on a Debian 12 machine, as root, idempotently:
#   Docker Engine (started if not answering), rootless Podman for the user `biocage`
#   (subuids, runtime dir, runc, API socket), and the sandbox image in both engines.
#   With `python` (and `all`): a virtual environment with the `biocage` Python package.
#   With `mcp` (and `all`): a virtual environment with the MCP Python SDK, for the MCP tests.
#   With `gvisor` (and `all`): gVisor's runsc, registered with Docker (--isolation gvisor).
#   With `podman-rootful` (and `all`): a root Podman API socket for the engine matrix.
# Fast when everything is already there.
# Usage: sudo scripts/setup.sh [docker|gvisor|podman|podman-rootful|python|mcp|all]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-all}
PODMAN_USER=${BIOCAGE_PODMAN_USER:-biocage}
IMAGE=${BIOCAGE_IMAGE:-biocage:latest}
BASE_IMAGE=biocage-base:bookworm
LOGDIR=${BIOCAGE_LOGDIR:-/var/log/biocage}
mkdir -p "$LOGDIR"

log() { echo "setup: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then apt-get update -qq; apt_updated=1; fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$LOGDIR/apt.log" 2>&1 \
    || { cat "$LOGDIR/apt.log" >&2; exit 1; }
}

wait_for() { # wait_for SECONDS command...
  local t=$1; shift
  for _ in $(seq 1 $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

setup_docker() {
  apt_install docker.io debootstrap python3-pip tmux
  if ! docker version >/dev/null 2>&1; then
    log "starting dockerd (log: $LOGDIR/dockerd.log)"
    setsid dockerd >"$LOGDIR/dockerd.log" 2>&1 < /dev/null &
    wait_for 60 docker version || { tail -20 "$LOGDIR/dockerd.log" >&2; log "dockerd did not start"; exit 1; }
  fi
  local want have
  want=$("$root/python_docker/build.sh" --recipe-hash)
  have=$(docker image inspect --format '{{ index .Config.Labels "org.biocage.recipe" }}' "$IMAGE" 2>/dev/null || true)
  # Rebuilt when missing or made from an older recipe; an image built otherwise (no
  # recipe label, e.g. with `biocage image build`) is the user's and is kept.
  if ! docker image inspect "$IMAGE" >/dev/null 2>&1 || { [ -n "$have" ] && [ "$want" != "$have" ]; }; then
    log "building $IMAGE (offline path: Debian base + host wheels)"
    TAG=$IMAGE "$root/python_docker/build.sh" --offline
  fi
  # A bare python3 image: the tests show that any image with python3 hosts a session.
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || "$root/python_docker/build.sh" --base
  # Builds through the engine API (biocage image build) install from these wheels.
  if ! ls "$root"/python_docker/wheels/pip-*.whl >/dev/null 2>&1; then
    TAG=$IMAGE "$root/python_docker/build.sh" --wheels
  fi
  # Wheels of packages the default image lacks, for the custom-image tests
  # (biocage-cli/tests/image.rs builds offline from them: the tests need no network).
  local test_wheels=$root/biocage-cli/tests/wheels
  if ! ls "$test_wheels"/tabulate-*.whl "$test_wheels"/toolz-*.whl "$test_wheels"/pip-*.whl >/dev/null 2>&1; then
    TAG=$IMAGE "$root/python_docker/build.sh" --download "$test_wheels" tabulate toolz
  fi
}

podman_env() {
  local uid
  uid=$(id -u "$PODMAN_USER")
  echo "XDG_RUNTIME_DIR=/run/user/$uid"
}

as_podman_user() {
  runuser -u "$PODMAN_USER" -- env -C / HOME="$(getent passwd "$PODMAN_USER" | cut -d: -f6)" "$(podman_env)" "$@"
}

# Writes BioCage's containers.conf to $1 (runc: crun cannot run on hybrid cgroups here;
# no systemd, so cgroupfs and file events; no session keyring per container, which
# Podman 4.4+ honours). Succeeds when the file changed, so the caller restarts its service.
# gVisor's runsc as Podman runs it (scripts/setup.sh gvisor): registered as biocage-gvisor.
RUNSC_FOR_PODMAN=/usr/local/lib/biocage/runsc-gvisor

write_containers_conf() {
  local before
  before=$(cat "$1" 2>/dev/null || true)
  cat >"$1" <<CONF
[containers]
keyring = false

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  if [ -x "$RUNSC_FOR_PODMAN" ]; then
    printf '\n[engine.runtimes]\nbiocage-gvisor = ["%s"]\n' "$RUNSC_FOR_PODMAN" >>"$1"
  fi
  [ "$before" != "$(cat "$1")" ]
}

# Copies the sandbox images from Docker into the Podman store that the command "$@"
# (a podman invocation) reaches, unless it already holds them with the same id.
copy_images_to_podman() {
  local img want have_id
  for img in "$IMAGE" "$BASE_IMAGE"; do
    want=$(docker image inspect --format '{{.Id}}' "$img")
    have_id=$("$@" image inspect --format '{{.Id}}' "$img" 2>/dev/null || true)
    if [ "sha256:$have_id" != "$want" ] && [ "$have_id" != "$want" ]; then
      log "copying $img into Podman's storage ($*)"
      docker save "$img" | "$@" load >/dev/null
    fi
  done
}

setup_podman() {
  apt_install podman uidmap slirp4netns runc
  if ! id "$PODMAN_USER" >/dev/null 2>&1; then
    log "creating user $PODMAN_USER"
    useradd -m -s /bin/bash "$PODMAN_USER"
  fi
  grep -q "^$PODMAN_USER:" /etc/subuid || usermod --add-subuids 200000-265535 "$PODMAN_USER"
  grep -q "^$PODMAN_USER:" /etc/subgid || usermod --add-subgids 200000-265535 "$PODMAN_USER"
  local uid home run
  uid=$(id -u "$PODMAN_USER"); home=$(getent passwd "$PODMAN_USER" | cut -d: -f6)
  run=/run/user/$uid
  install -d -m 0700 -o "$PODMAN_USER" -g "$PODMAN_USER" "$run" "$run/podman"
  install -d -o "$PODMAN_USER" -g "$PODMAN_USER" "$home/.config" "$home/.config/containers"
  local conf=$home/.config/containers/containers.conf conf_changed=false
  write_containers_conf "$conf" && conf_changed=true
  # runc gives every container a session keyring charged to the user that runs Podman,
  # and the kernel allows a non-root user 200 keys: 200 live sessions would be the cap.
  if [ "$(sysctl -n kernel.keys.maxkeys)" -lt 20000 ]; then
    log "raising the per-user key quota (kernel.keys.maxkeys 20000, maxbytes 2000000) for many rootless sandboxes"
    sysctl -qw kernel.keys.maxkeys=20000 kernel.keys.maxbytes=2000000
  fi
  # Native rootless overlay (kernel 5.13+); without this Podman may fall back to vfs,
  # which copies the whole image for every container.
  printf '[storage]\ndriver = "overlay"\n' >"$home/.config/containers/storage.conf"
  chown "$PODMAN_USER:" "$home/.config/containers/containers.conf" "$home/.config/containers/storage.conf"
  local sock=$run/podman/podman.sock
  local driver
  driver=$(as_podman_user podman info --format '{{.Store.GraphDriverName}}' 2>/dev/null || true)
  if [ "$driver" != overlay ]; then
    log "resetting $PODMAN_USER's Podman storage to the overlay driver (was: ${driver:-unknown})"
    pkill -u "$PODMAN_USER" -f "podman system service" || true
    as_podman_user podman system reset -f >/dev/null 2>&1 || true
  fi
  if $conf_changed && pkill -u "$PODMAN_USER" -f "podman system service"; then
    log "restarting the rootless Podman API socket: its configuration changed"
    sleep 1
  fi
  if ! as_podman_user podman --url "unix://$sock" version >/dev/null 2>&1; then
    log "starting the rootless Podman API socket $sock (log: $LOGDIR/podman.log)"
    as_podman_user podman system migrate >/dev/null 2>&1 || true
    rm -f "$sock"
    runuser -u "$PODMAN_USER" -- env -C / HOME="$home" "$(podman_env)" \
      setsid podman system service --time=0 "unix://$sock" >"$LOGDIR/podman.log" 2>&1 < /dev/null &
    wait_for 30 as_podman_user podman --url "unix://$sock" version || { tail -20 "$LOGDIR/podman.log" >&2; log "podman service did not start"; exit 1; }
  fi
  copy_images_to_podman as_podman_user podman
}

# --- rootful Podman (the host's 4.3), for the engine matrix ------------------------------
# A root `podman system service` on its own socket, with the same runtime choices as the
# rootless one (runc: crun cannot run on hybrid cgroups here) and BioCage's images.
ROOTFUL_SOCK=/run/biocage-podman-rootful/podman.sock
ROOTFUL_CONF=/etc/biocage/podman-rootful.conf
setup_podman_rootful() {
  apt_install podman runc
  install -d -m 0755 /etc/biocage
  install -d -m 0700 "$(dirname "$ROOTFUL_SOCK")"
  if write_containers_conf "$ROOTFUL_CONF"; then
    pkill -f "podman system service --time=0 unix://$ROOTFUL_SOCK" || true
  fi
  if ! podman --url "unix://$ROOTFUL_SOCK" version >/dev/null 2>&1; then
    log "starting the rootful Podman API socket $ROOTFUL_SOCK (log: $LOGDIR/podman-rootful.log)"
    rm -f "$ROOTFUL_SOCK"
    # conmon leaves files (an "oom" marker) in the service's working directory: its own.
    CONTAINERS_CONF=$ROOTFUL_CONF setsid env -C "$(dirname "$ROOTFUL_SOCK")" podman system service --time=0 "unix://$ROOTFUL_SOCK" \
      >"$LOGDIR/podman-rootful.log" 2>&1 < /dev/null &
    wait_for 30 podman --url "unix://$ROOTFUL_SOCK" version || { tail -20 "$LOGDIR/podman-rootful.log" >&2; log "rootful podman service did not start"; exit 1; }
  fi
  copy_images_to_podman podman --url "unix://$ROOTFUL_SOCK"
}

# --- Python package (biocage-python/) ------------------------------------------------
# A virtual environment (BIOCAGE_VENV, default .venv at the repository root) with the
# `biocage` module built from biocage-python/ by maturin, and the tools of its tests.
VENV=${BIOCAGE_VENV:-$root/.venv}
setup_python() {
  have cargo || { log "cargo is needed to build the Python package (biocage-python)"; exit 1; }
  local py=/usr/bin/python3
  [ -x "$py" ] || apt_install python3
  "$py" -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_install python3-venv
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating the virtual environment $VENV"
    "$py" -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c 'import maturin, pytest, pytest_asyncio' >/dev/null 2>&1 \
      || [ ! -x "$VENV/bin/ruff" ]; then
    log "installing maturin, pytest, pytest-asyncio and ruff into $VENV"
    "$VENV/bin/pip" install -q "maturin>=1.5,<2" "pytest>=7" "pytest-asyncio>=0.23" ruff \
      >"$LOGDIR/python-tools.log" 2>&1 || { cat "$LOGDIR/python-tools.log" >&2; exit 1; }
  fi
  # Always: cargo makes it quick when nothing changed. maturin is the PEP 517 backend.
  log "building biocage-python and installing it into $VENV (log: $LOGDIR/python.log)"
  PATH="$VENV/bin:$PATH" "$VENV/bin/pip" install --no-build-isolation --force-reinstall --no-deps \
    "$root/biocage-python" >"$LOGDIR/python.log" 2>&1 || { tail -40 "$LOGDIR/python.log" >&2; exit 1; }
}
# --- end of the Python package --------------------------------------------------------

# --- MCP server tests (biocage-mcp/) ---------------------------------------------------
# A virtual environment of its own (BIOCAGE_MCP_VENV, default .venv-mcp at the repository
# root) with the official MCP Python SDK, pytest and ruff: the client that
# biocage-mcp/tests/test_mcp.py drives `biocage mcp` with. Reinstalled when
# biocage-mcp/tests/requirements.txt changes.
MCP_VENV=${BIOCAGE_MCP_VENV:-$root/.venv-mcp}
setup_mcp() {
  local py=/usr/bin/python3 reqs=$root/biocage-mcp/tests/requirements.txt want
  [ -x "$py" ] || apt_install python3
  "$py" -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_install python3-venv
  if [ ! -x "$MCP_VENV/bin/python" ]; then
    log "creating the virtual environment $MCP_VENV"
    "$py" -m venv "$MCP_VENV"
  fi
  want=$(sha256sum "$reqs" | cut -d' ' -f1)
  if [ "$(cat "$MCP_VENV/.requirements.sha256" 2>/dev/null)" != "$want" ] \
      || ! "$MCP_VENV/bin/python" -c 'import mcp, pytest' >/dev/null 2>&1; then
    log "installing the MCP Python SDK, pytest and ruff into $MCP_VENV (log: $LOGDIR/mcp-venv.log)"
    "$MCP_VENV/bin/pip" install -q -r "$reqs" >"$LOGDIR/mcp-venv.log" 2>&1 \
      || { cat "$LOGDIR/mcp-venv.log" >&2; exit 1; }
    echo "$want" >"$MCP_VENV/.requirements.sha256"
  fi
}
# --- end of the MCP server tests --------------------------------------------------------

# --- gVisor (runsc) for --isolation gvisor ---------------------------------------------
# Debian's runsc, registered with Docker as biocage-gvisor (runsc --network=none: its own
# network stack does not start on these kernels). dockerd reloads its runtimes on SIGHUP,
# so running containers are left alone.
setup_gvisor() {
  setup_docker
  apt_install runsc
  # For Podman, which takes no runtime flags per runtime: runsc without a network (its
  # own network stack does not start on this kernel), without runc's --no-new-keyring
  # (containers.conf keyring = false), and, inside a rootless engine's user namespace,
  # without cgroups (a rootless engine has none to give on cgroup v1).
  install -d -m 0755 "$(dirname "$RUNSC_FOR_PODMAN")"
  cat >"$RUNSC_FOR_PODMAN.tmp" <<'SH'
#!/bin/sh
for a; do shift; [ "$a" = --no-new-keyring ] || set -- "$@" "$a"; done
if grep -qE '^ +0 +0 +4294967295$' /proc/self/uid_map; then
  exec /usr/bin/runsc --network=none "$@"
fi
exec /usr/bin/runsc --network=none --ignore-cgroups "$@"
SH
  chmod 0755 "$RUNSC_FOR_PODMAN.tmp"
  mv "$RUNSC_FOR_PODMAN.tmp" "$RUNSC_FOR_PODMAN"
  local conf=/etc/docker/daemon.json
  if ! docker info --format '{{json .Runtimes}}' | grep -q '"biocage-gvisor"'; then
    log "registering runsc with Docker as biocage-gvisor ($conf)"
    python3 - "$conf" <<'PY'
import json, os, sys
path = sys.argv[1]
conf = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
conf.setdefault("runtimes", {})["biocage-gvisor"] = {
    "path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(conf, f, indent=2)
os.replace(tmp, path)
PY
    pkill -HUP -x dockerd
    wait_for 30 sh -c "docker info --format '{{json .Runtimes}}' | grep -q biocage-gvisor" \
      || { log "dockerd did not load the biocage-gvisor runtime"; exit 1; }
  fi
}

case "$what" in
  docker) setup_docker ;;
  gvisor) setup_gvisor ;;
  podman-rootful) setup_docker; setup_podman_rootful ;;
  podman) setup_docker; setup_podman ;;
  python) setup_python ;;
  mcp) setup_mcp ;;
  all) setup_docker; setup_gvisor; setup_podman; setup_podman_rootful; setup_python; setup_mcp ;;
  *) log "unknown target '$what' (docker, gvisor, podman, podman-rootful, python, mcp or all)"; exit 2 ;;
esac
if [ "$what" = mcp ]; then log "ready: the MCP test client in $MCP_VENV"; exit 0; fi
if [ "$what" = python ]; then log "ready: the biocage Python package in $VENV"; exit 0; fi
log "ready: docker $(docker version --format '{{.Server.Version}}'), image $IMAGE$( [ "$what" = docker ] || [ "$what" = gvisor ] || [ "$what" = podman-rootful ] || echo ", rootless podman socket unix://$(podman_env | cut -d= -f2)/podman/podman.sock")$( [ "$what" = all ] && echo ", Python package in $VENV")"
