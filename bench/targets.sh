#!/usr/bin/env bash
# Issue 13's read-path targets in one command (a benchmark, not a test): `weft up` with
# mesh-config/local.toml (SQLite, every feature on, mTLS between the processes unless MTLS=off,
# no trace viewer, so no exporter), then per round `weft bench --baseline` on REST
# `GET /v1/products/{id}` (-c 64) and on gRPC `OrderService/GetProduct` straight to weft-order
# (2 connections x 32 streams, over the mesh's mTLS as the gateway when it is on), each against
# its bare server in the same run; at the end the peak RSS (VmHWM) of the gateway and weft-order.
# See bench/README.md.
#
# Environment knobs: MTLS=on|off (default on, as local.toml), ROUNDS (default 3), DURATION
# (seconds per measurement, default 5), and KEEP=1, NO_BUILD=1, BIN_DIR=DIR, PGO=1 as in run.sh.
# `weft up` takes local.toml's fixed ports (8080, 50051-50053, 9101-9103, 9180): stop
# `make run` first.
set -euo pipefail

MTLS="${MTLS:-on}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "$MTLS" in on | off) ;; *) die "MTLS must be on or off, not '$MTLS'" ;; esac
command -v python3 >/dev/null 2>&1 || die "python3 is needed (it reads weft bench's JSON)"
command -v curl >/dev/null 2>&1 || die "curl is needed"
need_binaries weft-auth weft-user weft-order weft-gateway weft weft-bench-baseline \
    weft-bench-grpc-baseline

# local.toml's relative paths (data/: databases, certificates) land in the work folder.
mkdir -p "$WORK/mesh-config"
cp "$ROOT/mesh-config/local.toml" "$WORK/mesh-config/"
log "starting the mesh (weft up, mTLS $MTLS)"
(cd "$WORK" && WEFT_MTLS__MODE="$MTLS" exec "$BIN/weft" up --config mesh-config/local.toml \
    --no-viewer) >"$WORK/weft-up.log" 2>&1 &
PIDS[weft]=$!
GATEWAY=http://127.0.0.1:8080
for _ in $(seq 1 120); do
    curl -fsS "$GATEWAY/v1/products" >/dev/null 2>&1 && break
    kill -0 "${PIDS[weft]}" 2>/dev/null || die "weft up stopped (see weft-up.log)"
    sleep 1
done
PRODUCT_ID="$(curl -fsS "$GATEWAY/v1/products" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["products"][0]["id"])')" ||
    die "no product listed (local.toml seeds the demo products)"
GATEWAY_PID="$(pgrep -f "^$BIN/weft-gateway" | head -n 1)"
ORDER_PID="$(pgrep -f "^$BIN/weft-order" | head -n 1)"
TLS_ARGS=()
[ "$MTLS" = on ] && TLS_ARGS=(--mtls order --identity gateway)
# weft bench reads the certificates where local.toml says, relative to the work folder.
cd "$WORK"

# summary FILE LABEL: one line from weft bench's JSON.
summary() {
    python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
b = d["baseline"]
print(f"  {sys.argv[2]}: weft {d['rps']:.0f}/s p99 {d['latency_ms']['p99']:.3f} ms, "
      f"bare {b['rps']:.0f}/s p99 {b['latency_ms']['p99']:.3f} ms: "
      f"{d['ratio']['rps_percent']:.1f} % of the req/s, p99 x{d['ratio']['p99_factor']:.2f}, "
      f"errors {d['errors']} {d['errors_by_kind'] or ''}")
share = lambda s: "?" if s.get("client_core_share") is None else f"{100 * s['client_core_share']:.0f} %"
print(f"    weft bench's own CPU: {share(d)} of a core against weft, {share(b)} against bare")
PY
}

echo "date: $(date -u '+%F %T') UTC  host: $(nproc) cores, $(uname -r)  mTLS: $MTLS"
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round"
    "$BIN/weft" bench "$GATEWAY/v1/products/{id}" --ids-from /v1/products -c 64 \
        -d "${DURATION}s" --warmup 1s --baseline --json >"$WORK/rest-$round.json" 2>/dev/null ||
        die "weft bench (REST) failed"
    summary "$WORK/rest-$round.json" "REST GET /v1/products/{id}, -c 64"
    "$BIN/weft" bench grpc://127.0.0.1:50053 weft.order.v1.OrderService/GetProduct \
        --body "{\"id\":\"$PRODUCT_ID\"}" --connections 2 --streams 32 -d "${DURATION}s" \
        --warmup 1s --baseline --json "${TLS_ARGS[@]}" --config mesh-config/local.toml \
        >"$WORK/grpc-$round.json" 2>/dev/null || die "weft bench (gRPC) failed"
    summary "$WORK/grpc-$round.json" "gRPC GetProduct, 2 x 32 streams"
done
echo "peak RSS (VmHWM): weft-gateway $(hwm_kib "$GATEWAY_PID") KiB, weft-order $(hwm_kib "$ORDER_PID") KiB"
