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
# The front ends (CLI, Python, MCP) run on the plain engines; the conformance suite on
# every configuration listed (docker+gvisor, podman5, podman5-rootful: tests/src/matrix.rs).
front_engines=
for engine in ${BIOCAGE_TEST_ENGINES//,/ }; do
  case "$engine" in docker|podman) front_engines="$front_engines $engine" ;; esac
done
echo "== doctest replay"
for engine in $front_engines; do
  python3 tests/doctest_replay.py --biocage target/debug/biocage --runtime "$engine" 2>/dev/null | tail -n 12 || status=1
done
# The conformance suite's own lines (tests/tests/conformance.rs), per backend.
awk '/Running tests\/conformance.rs/ {on=1; next} /Running / {on=0} on' "$log" > "$log.conformance"
echo "== conformance cases per backend"
for engine in ${BIOCAGE_TEST_ENGINES//,/ }; do
  pattern="^test .*::${engine//+/\\+} +\.\.\. "
  passed=$(grep -cE "${pattern}ok$" "$log.conformance" || true)
  failed=$(grep -cE "${pattern}FAILED$" "$log.conformance" || true)
  ignored=$(grep -cE "${pattern}ignored" "$log.conformance" || true)
  echo "$engine: $passed passed, $failed failed, $ignored ignored"
  grep -E "${pattern}ignored" "$log.conformance" | sed 's/^test /  not run: /' || true
  grep -E "${pattern}FAILED$" "$log.conformance" | sed 's/^test /  failed: /' || true
done
rm -f "$log.conformance"
if [ -s "$report" ]; then
  echo "== capability-gated differences"
  sort -u "$report"
fi
# --- Python package (biocage-python/): its pytest suite, on the same engines ------------
# (Re)builds the package into the virtual environment of scripts/setup.sh, then runs
# biocage-python/tests; prints the count per engine. Then ruff (lint, format) on it.
echo "== python package (biocage-python)"
pylog=$(mktemp /tmp/biocage-pytest-log.XXXXXX)
set +e
bash scripts/setup.sh python && (cd biocage-python && PYTHONDONTWRITEBYTECODE=1 "${BIOCAGE_VENV:-$root/.venv}/bin/python" -m pytest -v -rs -p no:cacheprovider tests) 2>&1 | tee "$pylog"
pystatus=${PIPESTATUS[0]}
set -e
echo "== python tests per engine"
for engine in $front_engines; do
  passed=$(grep -cE "\[${engine}\] PASSED" "$pylog" || true)
  failed=$(grep -cE "\[${engine}\] (FAILED|ERROR)" "$pylog" || true)
  echo "python-$engine: $passed passed, $failed failed"
done
echo "python: $(grep -c ' PASSED' "$pylog" || true) passed, $(grep -cE ' (FAILED|ERROR)( |$)' "$pylog" || true) failed, $(grep -c ' SKIPPED' "$pylog" || true) skipped"
rm -f "$pylog"
[ "$pystatus" -eq 0 ] || status=1
venv=${BIOCAGE_VENV:-$root/.venv}
if ! { "$venv/bin/ruff" check -q --no-cache biocage-python && "$venv/bin/ruff" format -q --no-cache --check biocage-python; }; then
  echo "python: ruff found problems (run: $venv/bin/ruff check --fix biocage-python; $venv/bin/ruff format biocage-python)"
  status=1
fi
# --- end of the Python package --------------------------------------------------------
# --- MCP server (biocage-mcp/): the official MCP Python SDK drives `biocage mcp` --------
# over stdio and HTTP on the same engines (venv from `scripts/setup.sh mcp`); the test
# files are linted with ruff first.
echo "== MCP server (biocage mcp, official MCP Python SDK client)"
mcplog=$(mktemp /tmp/biocage-mcp-log.XXXXXX)
mcpvenv=${BIOCAGE_MCP_VENV:-$root/.venv-mcp}
set +e
bash scripts/setup.sh mcp \
  && "$mcpvenv/bin/ruff" check --no-cache biocage-mcp/tests \
  && "$mcpvenv/bin/ruff" format --no-cache --check biocage-mcp/tests \
  && PYTHONDONTWRITEBYTECODE=1 BIOCAGE_BIN="$root/target/debug/biocage" \
    "$mcpvenv/bin/python" -m pytest -v -rs -p no:cacheprovider biocage-mcp/tests 2>&1 | tee "$mcplog"
mcpstatus=${PIPESTATUS[0]}
set -e
# One line per test in pytest -v: "biocage-mcp/tests/test_mcp.py::NAME[ENGINE-...] OUTCOME".
mcpcount() { grep -cE "^biocage-mcp/.*::.*$1" "$mcplog" || true; }
for engine in $front_engines; do
  echo "mcp-$engine: $(mcpcount "\[${engine}[]-].* PASSED") passed, $(mcpcount "\[${engine}[]-].* (FAILED|ERROR)") failed"
done
echo "mcp: $(mcpcount ' PASSED') passed, $(mcpcount ' (FAILED|ERROR)') failed, $(mcpcount ' SKIPPED') not run"
rm -f "$mcplog"
[ "$mcpstatus" -eq 0 ] || status=1
# --- end of the MCP server -------------------------------------------------------------
exit "$status"
