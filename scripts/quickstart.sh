#!/usr/bin/env bash
# From a fresh Debian 12 machine (as root): install and start the engines, build the
# sandbox image, build the `biocage` command, and run a hello world in a sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "quickstart: cargo (Rust 1.80 or newer, e.g. from rustup) is needed" >&2; exit 1; }
bash scripts/setup.sh all
cargo build --release -p biocage-cli
. scripts/env.sh
./target/release/biocage run examples/hello.py
echo "biocage is at $PWD/target/release/biocage; try: ./target/release/biocage repl"
