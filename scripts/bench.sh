#!/usr/bin/env bash
# The latency benchmark on every engine under test (see tests/benches/latency.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
rustlog=$(mktemp /tmp/biocage-bench.XXXXXX)
trap 'rm -f "$rustlog"' EXIT
# gVisor beside runc when it is registered (scripts/setup.sh gvisor).
gvisor=
docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q biocage-gvisor && gvisor=docker+gvisor
# shellcheck disable=SC2086 # the configurations are words
cargo bench -p biocage-conformance --bench latency -- ${BIOCAGE_TEST_ENGINES//,/ } $gvisor "$@" | tee "$rustlog"
# Pool, streaming, throughput, crash replacement, 100 and 200 live sessions.
cargo bench -p biocage-conformance --bench scale -- ${BIOCAGE_TEST_ENGINES//,/ }
# --- Python package (biocage-python/): per-run overhead of Sandbox.run from Python ------
# Against the warm p50 just measured, and against Rust-only runs on the same session
# (biocage-python/bench/run_latency.py). Builds the package into the venv first.
bash scripts/setup.sh python
rust_p50=$(awk '/^== (docker|podman) /{e=$2} /^warm trivial run: p50/{print "--rust-p50", e "=" $5}' "$rustlog")
# shellcheck disable=SC2086 # one argument pair per engine
"${BIOCAGE_VENV:-.venv}/bin/python" biocage-python/bench/run_latency.py ${BIOCAGE_TEST_ENGINES//,/ } $rust_p50
# --- end of the Python package --------------------------------------------------------
