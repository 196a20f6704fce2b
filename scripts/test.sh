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
# Real doctest examples (stdlib and pandas) replayed through `biocage --json repl`,
# against native doctest in the same image, on every engine.
echo "== doctest replay"
for engine in ${BIOCAGE_TEST_ENGINES//,/ }; do
  python3 tests/doctest_replay.py --biocage target/debug/biocage --runtime "$engine" 2>/dev/null | tail -n 12 || status=1
done
# The conformance suite's own lines (tests/tests/conformance.rs), per backend.
awk '/Running tests\/conformance.rs/ {on=1; next} /Running / {on=0} on' "$log" > "$log.conformance"
echo "== conformance cases per backend"
for engine in ${BIOCAGE_TEST_ENGINES//,/ }; do
  passed=$(grep -cE "^test .*::${engine} +\.\.\. ok$" "$log.conformance" || true)
  failed=$(grep -cE "^test .*::${engine} +\.\.\. FAILED$" "$log.conformance" || true)
  ignored=$(grep -cE "^test .*::${engine} +\.\.\. ignored" "$log.conformance" || true)
  echo "$engine: $passed passed, $failed failed, $ignored ignored"
  grep -E "^test .*::${engine} +\.\.\. ignored" "$log.conformance" | sed 's/^test /  not run: /' || true
done
rm -f "$log.conformance"
if [ -s "$report" ]; then
  echo "== capability-gated differences"
  sort -u "$report"
fi
exit "$status"
