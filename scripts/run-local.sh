#!/usr/bin/env bash
# Runs the three services of the mesh locally from mesh-config/local.toml, SQLite under ./data/.
# Ctrl-C stops all of them gracefully (SIGTERM, then they drain in-flight calls).
set -euo pipefail
cd "$(dirname "$0")/.."
export WEFT_CONFIG="${WEFT_CONFIG:-mesh-config/local.toml}"
mkdir -p data
pids=()
stop() {
    trap - INT TERM EXIT
    echo; echo "==> stopping"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT
for service in auth user order; do
    echo "==> starting weft-$service"
    "target/debug/weft-$service" &
    pids+=("$!")
done
echo "==> gRPC: weft-auth 127.0.0.1:50051, weft-user 127.0.0.1:50052, weft-order 127.0.0.1:50053 (Ctrl-C stops)"
# Stop everything as soon as one of them exits.
wait -n "${pids[@]}"
