#!/usr/bin/env bash
# The GPU backend against the CPU backend, on a machine with an NVIDIA GPU:
# embeddings of the reference sentences (cosine ≥ 0.9999, and both against
# sentence-transformers' own output) and throughput at batch 1 and 32.
# Needs only the release binary and the model directory (plus the fixture
# for the sentence-transformers comparison):
#
#   cargo build --release -p wasmbento
#   scripts/gpu-check.sh target/release/wasmbento MODEL_DIR [tests/fixtures/minilm-reference.json]
#
# The NVIDIA driver, cuBLAS and NVRTC must be loadable (a CUDA 12 runtime,
# or the PyPI packages nvidia-cublas-cu12 and nvidia-cuda-nvrtc-cu12 with
# their lib/ directories in CUDA_LIBS, colon-separated).
set -euo pipefail

bin="${1:?usage: gpu-check.sh WASMBENTO_BINARY MODEL_DIR [REFERENCE_JSON]}"
model="${2:?usage: gpu-check.sh WASMBENTO_BINARY MODEL_DIR [REFERENCE_JSON]}"
reference="${3:-}"
if [ -n "${CUDA_LIBS:-}" ]; then
    export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

"$bin" info
echo
args=(check-device "$model" --seconds "${SECONDS_PER_RUN:-5}")
[ -n "$reference" ] && args+=(--reference "$reference")
"$bin" "${args[@]}"
