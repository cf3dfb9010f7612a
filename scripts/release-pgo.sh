#!/usr/bin/env bash
# Release binaries built with profile-guided optimisation (PGO): the binaries are built once
# with instrumentation, run under a training load (`weft up` with mesh-config/local.toml, mTLS
# on, SQLite, then `weft bench` on the REST routes: product reads, listings, sign-up and login,
# orders, the profile, error answers), their counts merged, and the binaries built again
# optimised for the paths that load took. See bench/README.md ("Session 12") for what it gains.
#
#   scripts/release-pgo.sh            -> target/pgo/release/{weft,weft-auth,...}
#
# Needs `llvm-profdata` of the LLVM that rustc uses (`rustup component add llvm-tools`, or a
# distribution's llvm-N with N = the major version `rustc -vV` prints). Environment knobs:
# CARGO_TARGET_DIR (default target/), TRAIN_SECONDS (seconds of each read load, default 5). The
# training mesh takes local.toml's fixed ports (8080, 50051-50053, 9101-9103, 9180): stop
# `make run` first.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'release-pgo: %s\n' "$*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$TARGET_DIR" && TARGET_DIR="$(cd "$TARGET_DIR" && pwd)"
TRAIN_SECONDS="${TRAIN_SECONDS:-5}"
# The binaries of the image (deploy/Dockerfile); the training runs them all. Each is the binary
# of the package of its name.
BINARIES=(weft-auth weft-user weft-order weft-gateway weft)
PACKAGES=()
for bin in "${BINARIES[@]}"; do PACKAGES+=(-p "$bin"); done
PGO="$TARGET_DIR/pgo"

case "$TRAIN_SECONDS" in '' | *[!0-9]*) die "TRAIN_SECONDS must be a whole number of seconds, not '$TRAIN_SECONDS'" ;; esac

# --- llvm-profdata of rustc's LLVM -------------------------------------------------------------

llvm_major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
[ -n "$llvm_major" ] || die "cannot tell rustc's LLVM version from 'rustc -vV'"
profdata=""
for candidate in \
    "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata" \
    "$(command -v "llvm-profdata-$llvm_major" || true)" \
    "/usr/lib/llvm-$llvm_major/bin/llvm-profdata" \
    "$(command -v llvm-profdata || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    # A profile written by one LLVM is read only by llvm-profdata of the same major version.
    if "$candidate" --version 2>/dev/null | grep -q "LLVM version $llvm_major\."; then
        profdata="$candidate"
        break
    fi
done
[ -n "$profdata" ] || die "no llvm-profdata of LLVM $llvm_major (rustc's): run 'rustup component add llvm-tools', or install llvm-$llvm_major"

# --- 1. instrumented build -----------------------------------------------------------------

rm -rf "$PGO/raw"
mkdir -p "$PGO/raw"
log "building instrumented binaries (target dir $PGO/generate)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$PGO/raw" \
    CARGO_TARGET_DIR="$PGO/generate" cargo build --release --locked "${PACKAGES[@]}")
BIN="$PGO/generate/release"

# --- 2. training load ----------------------------------------------------------------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/weft-pgo.XXXXXX")"
GATEWAY=http://127.0.0.1:8080
MESH_PID=""
stop_mesh() {
    [ -n "$MESH_PID" ] || return 0
    # TERM: every process shuts down and exits normally, which is when it writes its counts.
    kill -TERM "$MESH_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$MESH_PID" 2>/dev/null || break
        sleep 0.1
    done
    local pid="$MESH_PID"
    MESH_PID=""
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        die "weft up did not stop within 30 s of SIGTERM (killed: the profile would be incomplete)"
    fi
    wait "$pid" 2>/dev/null || true
}
on_exit() {
    local status=$?
    stop_mesh || true
    if [ "$status" != 0 ]; then
        printf 'release-pgo: the training mesh kept in %s (weft-up.log)\n' "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap on_exit EXIT

if "$BIN/weft" bench "$GATEWAY/readyz" -n 1 -c 1 >/dev/null 2>&1; then
    die "a gateway already answers on $GATEWAY (make run?): stop it, the training mesh needs its ports"
fi
log "training: weft up with mesh-config/local.toml (SQLite, mTLS on) in $WORK"
mkdir -p "$WORK/mesh-config"
cp "$ROOT/mesh-config/local.toml" "$WORK/mesh-config/"
(cd "$WORK" && exec "$BIN/weft" up --config mesh-config/local.toml --no-viewer) \
    >"$WORK/weft-up.log" 2>&1 &
MESH_PID=$!
# weft bench: its summary to the log, a failed run (bad arguments, no answer) stops the script.
bench() {
    printf -- '--- weft bench %s\n' "$*" >>"$WORK/bench.log"
    "$BIN/weft" bench "$@" >>"$WORK/bench.log" 2>&1 ||
        die "weft bench $* failed (see $WORK/bench.log)"
}
ready=""
for _ in $(seq 1 120); do
    if "$BIN/weft" bench "$GATEWAY/readyz" -n 1 -c 1 >/dev/null 2>&1; then
        ready=1
        break
    fi
    kill -0 "$MESH_PID" 2>/dev/null || die "weft up stopped (see $WORK/weft-up.log)"
    sleep 1
done
[ -n "$ready" ] || die "the gateway was not ready within 120 s (see $WORK/weft-up.log)"

EMAIL="trainer@example.com" PASSWORD="training-password-1"
D="${TRAIN_SECONDS}s"
bench "$GATEWAY/v1/products/{id}" --ids-from /v1/products -c 32 -d "$D"
bench "$GATEWAY/v1/products" -c 4 -d 1s
bench "$GATEWAY/v1/auth/register" -n 1 -c 1 \
    --body "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\",\"displayName\":\"Trainer\"}"
bench "$GATEWAY/v1/orders" --login "$EMAIL:$PASSWORD" --ids-from /v1/products -c 16 -n 1000 \
    --body '{"items":[{"productId":"{id}","quantity":1}],"idempotencyKey":"{uuid}"}'
bench "$GATEWAY/v1/orders" --login "$EMAIL:$PASSWORD" -c 4 -d 1s
bench "$GATEWAY/v1/me" --login "$EMAIL:$PASSWORD" -c 4 -d 1s
# Error answers: an unknown product (404), an order without a token (401), a bad body (400).
bench "$GATEWAY/v1/products/{id}" --ids no-such-product -c 4 -n 500
bench "$GATEWAY/v1/orders" -c 4 -n 500 --body '{"items":[]}'
bench "$GATEWAY/v1/auth/register" -c 4 -n 500 --body '{"email":"not-an-email"}'
stop_mesh

# --- 3. the profile, and the optimised build -------------------------------------------------

shopt -s nullglob
raw=("$PGO"/raw/*.profraw)
[ "${#raw[@]}" -gt 0 ] || die "the training run wrote no profile to $PGO/raw"
"$profdata" merge -o "$PGO/weft.profdata" "${raw[@]}"
log "profile: $PGO/weft.profdata, from ${#raw[@]} raw profiles"

log "building the optimised binaries (target dir $PGO/use)"
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PGO/weft.profdata" \
    CARGO_TARGET_DIR="$PGO/use" cargo build --release --locked "${PACKAGES[@]}")
mkdir -p "$PGO/release"
for bin in "${BINARIES[@]}"; do
    cp "$PGO/use/release/$bin" "$PGO/release/"
done
log "done: ${BINARIES[*]} in $PGO/release"
