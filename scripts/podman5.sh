#!/usr/bin/env bash
# Podman 5 (Debian trixie's 5.4.x) API services for BioCage, nested in ONE Docker container
# (Debian 12 cannot install Podman 5), as root, idempotently:
#   up      debootstrap trixie (once), build the service image (when its inputs changed),
#           run the container biocage-podman5 with a rootful and a rootless (user biocage,
#           uid 1000 inside, subuids 100000-165535) `podman system service`
#   load    up, then copy biocage:latest and every biocage-base:* from Docker into both
#           Podman stores, unless already there with the same image id
#   down    remove the container (keeps the root filesystem, the image and both stores)
#   status  the Podman version at each socket, or why there is none
# Sockets on the host:
#   rootful:  unix:///run/biocage-podman5/rootful/podman.sock
#   rootless: unix:///run/biocage-podman5/rootless/podman.sock
# Host paths that sandboxes bind must exist at the same path inside the service container:
# /run/biocage (BioCage's staging folders, as root) and /tmp/biocage-podman5-shared are.
# Fast when everything is already up. Usage: sudo scripts/podman5.sh [up|load|down|status]
set -euo pipefail
what=${1:-up}
[ "$(id -u)" = 0 ] || { echo "podman5: run as root" >&2; exit 1; }
NAME=biocage-podman5
STATE=${BIOCAGE_PODMAN5_STATE:-/var/lib/biocage/podman5}   # survives reboots, unlike /tmp
ROOTFS=$STATE/rootfs
SOCKDIR=/run/biocage-podman5
SOCK_ROOTFUL=$SOCKDIR/rootful/podman.sock
SOCK_ROOTLESS=$SOCKDIR/rootless/podman.sock
SHARED=/tmp/biocage-podman5-shared
STAGING=/run/biocage            # staging.rs: runtime_dir() as root
BASE_TAG=biocage-podman5-base:trixie
TAG=biocage-podman5:trixie
RL_UID=1000
SUITE=trixie
PACKAGES=podman,runc,crun,uidmap,slirp4netns,fuse-overlayfs,ca-certificates,netavark,aardvark-dns,iptables,passt,procps
API=http://d/v5.0.0/libpod
LOGDIR=${BIOCAGE_LOGDIR:-/var/log/biocage}

log() { echo "podman5: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
sha() { sha256sum | cut -c1-16; }
label() { # label OBJECT KEY: the label's value, empty when the object or label is missing
  docker inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null | sed 's/^<no value>$//' || true
}
# The Podman API at a socket; curl's -f makes HTTP errors fail.
api() { local sock=$1 path=$2; shift 2; curl -sf --max-time "${CURL_TIME:-10}" --unix-socket "$sock" "$@" "$API$path"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

wait_for() { # wait_for SECONDS command...
  local t=$1; shift
  for _ in $(seq 1 $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

debian_mirror() {
  # The mirror this machine's apt already uses (it serves trixie too), as build.sh does.
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
      | grep -v security | head -n1 | sed -E 's/^deb +(\[[^]]*\] +)?//; s/^URIs: *//' | awk '{print $1}')
  echo "${m:-http://deb.debian.org/debian}"
}

ensure_docker() {
  { have docker && have dockerd; } || { log "Docker is missing: run scripts/setup.sh docker"; exit 1; }
  if ! docker version >/dev/null 2>&1; then
    # No systemd on these machines: started as setup.sh does.
    mkdir -p "$LOGDIR"
    log "starting dockerd (log: $LOGDIR/dockerd.log)"
    setsid dockerd >>"$LOGDIR/dockerd.log" 2>&1 </dev/null &
    wait_for 60 docker version || { tail -20 "$LOGDIR/dockerd.log" >&2; log "dockerd did not start"; exit 1; }
  fi
  for t in debootstrap curl python3; do
    have "$t" || { log "$t is missing: apt-get install -y $t"; exit 1; }
  done
}

# 1. The base image: trixie with Podman, from Debian packages (no registry here).
#    The root filesystem is kept, so a lost image is re-imported without debootstrap.
base_image() {
  local mirror want s
  mirror=$(debian_mirror)
  want=$(echo "$SUITE $mirror $PACKAGES" | sha)
  [ "$(label "$BASE_TAG" org.biocage.podman5.base)" = "$want" ] && return 0
  if [ "$(cat "$ROOTFS/.biocage-stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$ROOTFS" "$ROOTFS.new"
    mkdir -p "$STATE"
    log "debootstrap $SUITE from $mirror into $ROOTFS (about a minute; log: $STATE/debootstrap.log)"
    s=$SECONDS
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS.new" "$mirror" \
      >"$STATE/debootstrap.log" 2>&1 || { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
    rm -rf "$ROOTFS.new"/var/cache/apt/archives/*.deb "$ROOTFS.new"/var/lib/apt/lists/*
    echo "$want" >"$ROOTFS.new/.biocage-stamp"
    mv "$ROOTFS.new" "$ROOTFS"    # only a complete root filesystem gets the final name
    log "debootstrap took $((SECONDS - s)) s"
  fi
  log "importing $ROOTFS as $BASE_TAG"
  tar -C "$ROOTFS" --exclude=./.biocage-stamp -c . \
    | docker import -c "LABEL org.biocage.podman5.base=$want" - "$BASE_TAG" >/dev/null
}

# 2. The service image: the base plus the user biocage and the configuration (a small
#    docker build, seconds), rebuilt when any of these files or the base changed.
write_context() {
  local ctx=$STATE/context
  mkdir -p "$ctx"
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_TAG
# Rootless Podman: a user with subordinate ids, and its storage folder (bound from the
# host) under folders it owns (Docker would create missing parents as root).
RUN useradd -m -u $RL_UID -s /bin/bash biocage \\
 && { grep -q '^biocage:' /etc/subuid 2>/dev/null || echo biocage:100000:65536 >>/etc/subuid; } \\
 && { grep -q '^biocage:' /etc/subgid 2>/dev/null || echo biocage:100000:65536 >>/etc/subgid; } \\
 && install -d -o $RL_UID -g $RL_UID /home/biocage/.local /home/biocage/.local/share \\
      /home/biocage/.local/share/containers /home/biocage/.config /home/biocage/.config/containers
COPY containers.conf storage.conf /etc/containers/
COPY --chown=$RL_UID:$RL_UID containers.conf /home/biocage/.config/containers/
COPY --chown=$RL_UID:$RL_UID storage-rootless.conf /home/biocage/.config/containers/storage.conf
COPY podman5-service /usr/local/bin/
CMD ["/usr/local/bin/podman5-service"]
EOF
  # For root (/etc) and for biocage (~/.config, the same file, so neither depends on
  # which files the other reads). crun, Podman 5's default: it refuses the host's hybrid
  # cgroups ("cgroups in hybrid mode not supported"), but this container sees only the
  # v1 hierarchies (no cgroup2 "unified"), where crun and runc both work (runc is
  # installed: `--runtime runc`). cgroupfs and file events: no systemd.
  # keyring = false: otherwise each running rootless sandbox holds a session keyring of
  # uid 1000, and the kernel allows 200 keys per non-root user (keys.maxkeys).
  cat >"$ctx/containers.conf" <<'EOF'
[containers]
keyring = false

[engine]
runtime = "crun"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
firewall_driver = "iptables"
EOF
  # Native overlay on bind-mounted ext4 folders (overlay on Docker's overlay2 fails).
  cat >"$ctx/storage.conf" <<'EOF'
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF
  printf '[storage]\ndriver = "overlay"\n' >"$ctx/storage-rootless.conf"
  cat >"$ctx/podman5-service" <<EOF
#!/bin/bash
# The container's main process (under docker-init): both Podman API services; when one
# ends, the container stops (and Docker restarts it: --restart on-failure).
# Not --privileged (the host's bounding set lacks CAP_SYS_RESOURCE, which --privileged asks
# runc for): Docker then mounts /sys and the cgroup v1 hierarchies read-only; with
# CAP_SYS_ADMIN they are remounted read-write, for the sandboxes' cgroups.
mount -o remount,rw /sys 2>/dev/null || true
for m in \$(awk '\$3 ~ /^cgroup/ {print \$2}' /proc/self/mounts); do
  mount -o remount,bind,rw "\$m" 2>/dev/null || mount -o remount,rw "\$m" 2>/dev/null || true
done
# Rootless Podman's mount namespace sees later mounts only if / is shared.
mount --make-rshared /
chmod 666 /dev/net/tun /dev/fuse   # Docker copies the host's 0600; pasta runs as biocage
export PODMAN_IGNORE_CGROUPSV1_WARNING=1
rm -f /run/podman/podman.sock /run/user/$RL_UID/podman/podman.sock
install -d -m 0700 -o $RL_UID -g $RL_UID /run/user/$RL_UID
trap 'trap - TERM INT; kill 0' TERM INT
setpriv --reuid=$RL_UID --regid=$RL_UID --init-groups env -i PATH=/usr/local/bin:/usr/bin:/bin \\
  HOME=/home/biocage USER=biocage LOGNAME=biocage XDG_RUNTIME_DIR=/run/user/$RL_UID \\
  PODMAN_IGNORE_CGROUPSV1_WARNING=1 \\
  podman --log-level=info system service --time=0 unix:///run/user/$RL_UID/podman/podman.sock \\
  2>&1 | sed -u 's/^/rootless: /' &
podman --log-level=info system service --time=0 unix:///run/podman/podman.sock \\
  2>&1 | sed -u 's/^/rootful: /' &
wait -n
echo "a Podman service ended; stopping" >&2
kill 0
EOF
  chmod 0755 "$ctx/podman5-service"
}

service_image() {
  local ctx=$STATE/context want
  write_context
  want=$( { docker image inspect --format '{{.Id}}' "$BASE_TAG"; cat "$ctx"/*; } | sha)
  [ "$(label "$TAG" org.biocage.podman5.config)" = "$want" ] && return 0
  log "building $TAG (log: $STATE/build.log)"
  docker build -q -t "$TAG" --label "org.biocage.podman5.config=$want" "$ctx" \
    >"$STATE/build.log" 2>&1 || { tail -20 "$STATE/build.log" >&2; exit 1; }
  docker image prune -f --filter "label=org.biocage.podman5.config" >/dev/null 2>&1 || true
}

# 3. The container, re-created when the image or these arguments changed.
run_container() {
  local want state
  # The staging folders: created as staging.rs's create_private_dir does (root, 0711).
  [ -d "$STAGING" ] || install -d -m 0711 "$STAGING"
  install -d -m 1777 "$SHARED"
  install -d -m 0755 "$SOCKDIR"
  install -d -m 0700 "$SOCKDIR/rootful" "$STATE/storage"
  install -d -m 0700 -o "$RL_UID" -g "$RL_UID" "$SOCKDIR/rootless" "$STATE/storage-rootless"
  local args=(
    --init --cgroupns=private --restart on-failure
    # --privileged fails here ("unable to apply caps"): every capability but the one the
    # host lacks, and no confinement, which nested Podman needs for its own containers.
    --cap-add ALL --cap-drop SYS_RESOURCE
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --security-opt systempaths=unconfined
    --device /dev/fuse --device /dev/net/tun --device-cgroup-rule 'a *:* rwm'
    --tmpfs '/run:rw,exec,mode=755' --tmpfs '/tmp:rw,exec,mode=1777'
    --log-opt max-size=10m --log-opt max-file=2
    -v "$SOCKDIR/rootful:/run/podman"
    -v "$SOCKDIR/rootless:/run/user/$RL_UID/podman"
    -v "$STATE/storage:/var/lib/containers"
    -v "$STATE/storage-rootless:/home/biocage/.local/share/containers"
    # Sandboxes bind host paths: the same paths inside.
    -v "$STAGING:$STAGING" -v "$SHARED:$SHARED"
  )
  want=$(echo "$(docker image inspect --format '{{.Id}}' "$TAG") ${args[*]}" | sha)
  state=$(docker inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null || true)
  if [ "$state" = true ] && [ "$(label "$NAME" org.biocage.podman5.run)" = "$want" ]; then
    return 0
  fi
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  log "starting the container $NAME"
  docker run -d --name "$NAME" --label "org.biocage.podman5.run=$want" "${args[@]}" "$TAG" >/dev/null
}

wait_sockets() {
  local s
  for s in "$SOCK_ROOTFUL" "$SOCK_ROOTLESS"; do
    if ! wait_for 30 api "$s" /_ping; then
      docker logs --tail 30 "$NAME" >&2 || true
      log "no answer at unix://$s"
      exit 1
    fi
  done
}

up() {
  ensure_docker
  base_image
  service_image
  run_container
  wait_sockets
}

# 4. The project's images, from Docker into both stores; skipped when the store has the
#    same image id (so a rebuilt image is reloaded); the replaced one is removed when it
#    has no name left and no container uses it.
load() {
  local images img want have_id s tar=$STATE/load.tar
  images=("${BIOCAGE_IMAGE:-biocage:latest}")
  while read -r img; do images+=("$img"); done < <(docker images --format '{{.Repository}}:{{.Tag}}' biocage-base)
  trap 'rm -f "$STATE/load.tar"' EXIT
  for img in "${images[@]}"; do
    want=$(docker image inspect --format '{{.Id}}' "$img" 2>/dev/null) \
      || { log "$img is not in Docker: run scripts/setup.sh docker"; exit 1; }
    rm -f "$tar"
    for s in "$SOCK_ROOTFUL" "$SOCK_ROOTLESS"; do
      have_id=$(api "$s" "/images/$img/json" 2>/dev/null | json 'd["Id"]' 2>/dev/null || true)
      [ "sha256:$have_id" = "$want" ] && continue
      # Saved once, streamed to each store that needs it (curl -T does not buffer it).
      [ -e "$tar" ] || docker save -o "$tar" "$img"
      log "loading $img into unix://$s"
      CURL_TIME=600 api "$s" /images/load -X POST -H 'Content-Type: application/x-tar' -T "$tar" >/dev/null \
        || { log "loading $img into unix://$s failed"; exit 1; }
      # The replaced image, once nameless (a DELETE by id would also drop other names).
      if [ -n "$have_id" ] && [ "$(api "$s" "/images/$have_id/json" | json 'len(d.get("RepoTags") or [])')" = 0 ]; then
        api "$s" "/images/$have_id" -X DELETE >/dev/null 2>&1 || true  # fails if a container uses it
      fi
    done
  done
  rm -f "$tar"
}

container_state() {
  docker version >/dev/null 2>&1 || { echo "Docker is not answering"; return; }
  local st
  st=$(docker inspect --format '{{.State.Status}}' "$NAME" 2>/dev/null | head -1 || true)
  echo "container $NAME ${st:-does not exist}"
}

status() {
  local s v
  for s in "$SOCK_ROOTFUL" "$SOCK_ROOTLESS"; do
    if v=$(CURL_TIME=5 api "$s" /version); then
      echo "$v" | json "'podman %s (libpod API %s, Docker API %s) at unix://$s' % (d['Version'],
        d['Components'][0]['Details']['APIVersion'], d['ApiVersion'])"
    elif [ ! -S "$s" ]; then
      echo "no socket at unix://$s ($(container_state); scripts/podman5.sh up starts it)"
    else
      echo "no answer at unix://$s ($(container_state); docker logs $NAME tells why)"
    fi
  done
}

case "$what" in
  up) up; status ;;
  load) up; load; status ;;
  down)
    docker rm -f "$NAME" >/dev/null 2>&1 || true
    rm -f "$SOCK_ROOTFUL" "$SOCK_ROOTLESS"   # nobody answers there any more
    log "removed $NAME (kept $STATE)" ;;
  status) status ;;
  *) log "unknown command '$what' (up, load, down or status)"; exit 2 ;;
esac
