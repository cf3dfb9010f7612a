#!/usr/bin/env bash
# Weft's write-path benchmark (not a test): `POST /v1/orders` through gateway -> weft-order ->
# the database (a token, a fresh idempotency key per request, one unit of stock taken), against
# the same transaction with nothing around it on the same database: pgbench running
# bench/order-transaction.sql on PostgreSQL, weft-bench-sqlite-baseline (a bare rusqlite loop) on
# SQLite. Rounds interleaved; then the database is checked: every order Weft acknowledged is
# there, each whole and once, and the stock taken is exactly the units ordered. See
# bench/README.md.
#
# Environment knobs: BACKEND=sqlite|postgres (default sqlite), DURATION (seconds per round,
# default 10), ROUNDS (default 3), CONNECTIONS (weft bench connections and pgbench clients,
# default 16), POSTGRES_URL (the server for BACKEND=postgres, default
# postgres://postgres@127.0.0.1:5432; a database weft_bench_<pid> is made and dropped), and
# KEEP=1, NO_BUILD=1, BIN_DIR=DIR, PGO=1 as in run.sh.
set -euo pipefail

BACKEND="${BACKEND:-sqlite}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-16}"
POSTGRES_URL="${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
STOCK=1000000000

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v python3 >/dev/null 2>&1 || die "python3 is needed (it reads the JSON and the SQLite file)"
command -v curl >/dev/null 2>&1 || die "curl is needed"
need_binaries weft-auth weft-user weft-order weft-gateway weft weft-bench-sqlite-baseline

case "$BACKEND" in
    sqlite)
        ORDER_DB="sqlite://$WORK/order.db"
        ;;
    postgres)
        command -v pgbench >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 ||
            die "BACKEND=postgres needs pgbench and psql (apt-get install -y postgresql-client postgresql-contrib)"
        DATABASE="weft_bench_$$"
        psql -q "$POSTGRES_URL/postgres" -c "CREATE DATABASE $DATABASE" ||
            die "cannot create database $DATABASE on $POSTGRES_URL"
        on_cleanup() { psql -q "$POSTGRES_URL/postgres" -c "DROP DATABASE IF EXISTS $DATABASE" >/dev/null; }
        ORDER_DB="$POSTGRES_URL/$DATABASE"
        ;;
    *) die "BACKEND must be sqlite or postgres, not '$BACKEND'" ;;
esac

# sql QUERY: one value from weft-order's database.
sql() {
    if [ "$BACKEND" = postgres ]; then
        psql -At "$ORDER_DB" -c "$1"
    else
        python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' \
            "$WORK/order.db" "$1"
    fi
}

start_mesh "$ORDER_DB"
log "creating the benchmark product (stock $STOCK)"
create_product "$STOCK"
BODY="{\"items\":[{\"productId\":\"$PRODUCT_ID\",\"quantity\":1}],\"idempotencyKey\":\"{uuid}\"}"

# weft_run NAME SECONDS: one weft bench run with a fresh buyer (so its token outlives the run);
# its JSON summary goes to $WORK/NAME.json.
weft_run() {
    local token
    token="$(register "buyer-$1@example.com")"
    "$BIN/weft" bench "$GATEWAY/v1/orders" --body "$BODY" --token "$token" -c "$CONNECTIONS" \
        -d "${2}s" --json >"$WORK/$1.json" 2>"$WORK/$1.err" ||
        die "weft bench failed: $(tail -n 5 "$WORK/$1.err")"
}

# baseline_run NAME SECONDS: the bare transaction for SECONDS; prints its transactions/s.
baseline_run() {
    if [ "$BACKEND" = postgres ]; then
        pgbench -n -M prepared -c "$CONNECTIONS" -j 2 -T "$2" -D "product=$PRODUCT_ID" \
            -f "$ROOT/bench/order-transaction.sql" "$ORDER_DB" >"$WORK/$1.txt" 2>&1 ||
            die "pgbench failed: $(tail -n 5 "$WORK/$1.txt")"
        awk '/^tps = / {tps = $3} END {printf "%.1f\n", tps}' "$WORK/$1.txt"
    else
        "$BIN/weft-bench-sqlite-baseline" "$WORK/order.db" "$PRODUCT_ID" "$2" >"$WORK/$1.txt" ||
            die "weft-bench-sqlite-baseline failed"
        awk '{print $6}' "$WORK/$1.txt"
    fi
}

# weft_figures NAME: "req/s ok p99_ms errors" of a weft bench run.
weft_figures() {
    python3 - "$WORK/$1.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{s['rps']:.1f} {s['requests'] - s['errors']} {s['latency_ms']['p99']:.2f} {s['errors']}")
EOF
}

log "warming up (2 s each)"
baseline_run baseline-warmup 2 >/dev/null
weft_run weft-warmup 2
read -r _ acknowledged _ _ <<<"$(weft_figures weft-warmup)"

log "measuring: $ROUNDS rounds of ${DURATION} s, $CONNECTIONS connections, interleaved"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host: $(nproc) cores, $(uname -r)  backend: $BACKEND"
: >"$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
    base_tps="$(baseline_run "baseline-$round" "$DURATION")"
    weft_run "weft-$round" "$DURATION"
    read -r rps ok p99 errors <<<"$(weft_figures "weft-$round")"
    acknowledged=$((acknowledged + ok))
    printf '  round %s: baseline %10s tx/s   weft %10s orders/s (p99 %s ms, %s errors)   %s %%\n' \
        "$round" "$base_tps" "$rps" "$p99" "$errors" \
        "$(awk -v w="$rps" -v b="$base_tps" 'BEGIN {printf "%.1f", 100 * w / b}')"
    echo "$base_tps $rps $p99" >>"$WORK/results"
done

sort -n -k1 "$WORK/results" | awk '{b[NR] = $1} END {print b[int((NR + 1) / 2)]}' >"$WORK/median-base"
sort -n -k2 "$WORK/results" | awk '{w[NR] = $2; p[NR] = $3} END {m = int((NR + 1) / 2); print w[m], p[m]}' >"$WORK/median-weft"
read -r median_base <"$WORK/median-base"
read -r median_weft median_p99 <"$WORK/median-weft"
echo
printf 'median of %s rounds: weft %s orders/s (p99 %s ms), baseline %s tx/s: weft = %s %% of the baseline (target >= 50 %%)\n' \
    "$ROUNDS" "$median_weft" "$median_p99" "$median_base" \
    "$(awk -v w="$median_weft" -v b="$median_base" 'BEGIN {printf "%.1f", 100 * w / b}')"

log "checking the database"
sleep 1
baseline_user="bench-sqlite-baseline"
[ "$BACKEND" = postgres ] && baseline_user="bench-pgbench"
stock="$(sql "SELECT stock FROM products WHERE id = '$PRODUCT_ID'")"
units="$(sql "SELECT COALESCE(SUM(quantity), 0) FROM order_items WHERE product_id = '$PRODUCT_ID'")"
weft_orders="$(sql "SELECT COUNT(*) FROM orders WHERE user_id <> '$baseline_user'")"
partial="$(sql "SELECT COUNT(*) FROM orders o WHERE (SELECT COUNT(*) FROM order_items i WHERE i.order_id = o.id) <> 1")"
doubled="$(sql "SELECT COUNT(*) - COUNT(DISTINCT user_id || ':' || idempotency_key) FROM orders")"
echo "stock left $stock + units ordered $units = $((stock + units)) (created with $STOCK)"
echo "orders placed through weft: $weft_orders; acknowledged to weft bench: $acknowledged (the difference: requests cut off in flight at the end of a run)"
echo "orders without exactly one item: $partial; idempotency keys used twice: $doubled"
[ "$((stock + units))" = "$STOCK" ] || die "stock and orders disagree: units lost or oversold"
# weft bench drops the requests in flight when a run ends: those orders may be committed without
# being counted, at most one per connection and run.
in_flight=$((CONNECTIONS * (ROUNDS + 1)))
[ "$weft_orders" -ge "$acknowledged" ] || die "weft acknowledged $acknowledged orders but only $weft_orders are stored"
[ "$weft_orders" -le "$((acknowledged + in_flight))" ] ||
    die "$weft_orders orders stored for $acknowledged acknowledged (+ at most $in_flight cut off)"
[ "$partial" = 0 ] && [ "$doubled" = 0 ] || die "partial or doubled orders"
echo "database consistent"
