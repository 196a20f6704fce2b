# Sourced by the scripts: points BioCage at the engines scripts/setup.sh prepared.
# Docker: the default socket. Podman: the rootless API socket of the user `biocage`.
PODMAN_USER=${BIOCAGE_PODMAN_USER:-biocage}
if [ -z "${CONTAINER_HOST:-}" ] && id "$PODMAN_USER" >/dev/null 2>&1; then
  export CONTAINER_HOST="unix:///run/user/$(id -u "$PODMAN_USER")/podman/podman.sock"
fi
export BIOCAGE_TEST_ENGINES=${BIOCAGE_TEST_ENGINES:-docker,podman}
