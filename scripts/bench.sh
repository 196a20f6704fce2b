#!/usr/bin/env bash
# The latency benchmark on every engine under test (see tests/benches/latency.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
exec cargo bench -p biocage-conformance --bench latency -- ${BIOCAGE_TEST_ENGINES//,/ } "$@"
