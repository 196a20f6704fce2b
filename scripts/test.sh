#!/usr/bin/env bash
# Runs every test of the workspace; engine tests against Docker and rootless Podman
# (BIOCAGE_TEST_ENGINES, default docker,podman: a listed engine that is unreachable fails).
# Prints, per backend, how many conformance cases passed, and the capability notes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. scripts/env.sh
report=$(mktemp /tmp/biocage-report.XXXXXX)
log=$(mktemp /tmp/biocage-test-log.XXXXXX)
trap 'rm -f "$report" "$log"' EXIT
export BIOCAGE_REPORT=$report
echo "engines under test: $BIOCAGE_TEST_ENGINES${CONTAINER_HOST:+ (podman at $CONTAINER_HOST)}"
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "== conformance cases per backend"
for engine in ${BIOCAGE_TEST_ENGINES//,/ }; do
  passed=$(grep -cE "^test .*::case_[0-9]+_${engine} \.\.\. ok$" "$log" || true)
  failed=$(grep -cE "^test .*::case_[0-9]+_${engine} \.\.\. FAILED$" "$log" || true)
  echo "$engine: $passed passed, $failed failed"
done
if [ -s "$report" ]; then
  echo "== capability-gated differences"
  sort -u "$report"
fi
exit "$status"
