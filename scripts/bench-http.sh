#!/usr/bin/env bash
# HTTP throughput and latency of the hello service on loopback, with wrk.
# Baseline in the same run: GET /livez on the same server (HTTP stack only,
# no Wasm), so the ratio shows what a fresh instance per request costs.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } >&2
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32}"
PORT="${PORT:-3901}"

cargo build --release -p wasmbento >&2
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/wasmbento"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
export WASMBENTO_HOME="$work/home"
"$bin" build plugins/hello >&2
RUST_LOG=warn "$bin" serve hello --port "$PORT" >&2 &
server=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
    sleep 0.1
done

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"name":"bench"}'
wrk.headers["Content-Type"] = "application/json"
LUA

run() { # key, label, wrk args...
    local key=$1 name=$2; shift 2
    local text
    text="$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$@")"
    local rps p50 p99 errors
    rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$text")"
    p50="$(awk '$1=="50%" {print $2}' <<<"$text")"
    p99="$(awk '$1=="99%" {print $2}' <<<"$text")"
    errors="$(grep -c 'Non-2xx\|Socket errors' <<<"$text" || true)"
    echo "| $name | $rps | $p50 | $p99 | $errors |"
    echo "$rps" > "$work/$key.rps"
}

echo "## HTTP on loopback: wrk -t2 -c$CONNECTIONS -d$DURATION (load generator on the same 2 cores)"
echo "| request | req/s | p50 | p99 | error lines |"
echo "|---|---|---|---|---|"
run livez "GET /livez (baseline)" "http://127.0.0.1:$PORT/livez"
run hello "POST /hello/greet" -s "$work/post.lua" "http://127.0.0.1:$PORT/hello/greet"
python3 - "$work" <<'PY'
import sys, pathlib
w = pathlib.Path(sys.argv[1])
base = float((w / "livez.rps").read_text())
hello = float((w / "hello.rps").read_text())
print(f"\nhello / baseline throughput ratio: {hello / base:.2f}")
PY
