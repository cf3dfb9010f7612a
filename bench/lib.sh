# Shared by bench/run.sh and bench/write.sh (sourced, not run): the binaries, the processes
# started (stopped on exit, Ctrl-C or failure, when their last log lines are printed and the
# folder kept), and a mesh from a temporary mesh-config with one benchmark product.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# PGO=1: Weft's binaries built with profile-guided optimisation (scripts/release-pgo.sh), as the
# image builds them, with the bare servers' plain release build copied beside them.
if [ "${PGO:-0}" = 1 ]; then
    BIN="${BIN_DIR:-$TARGET_DIR/pgo/release}"
else
    BIN="${BIN_DIR:-$TARGET_DIR/release}"
fi
[ -d "$BIN" ] && BIN="$(cd "$BIN" && pwd)"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# need_binaries NAME...: builds the release binaries (unless NO_BUILD=1 or BIN_DIR is set; with
# PGO=1 as above), then checks that each NAME is in $BIN.
need_binaries() {
    if [ "${NO_BUILD:-0}" != 1 ] && [ -z "${BIN_DIR:-}" ]; then
        if [ "${PGO:-0}" = 1 ]; then
            log "building release binaries with PGO (scripts/release-pgo.sh), and the bare servers"
            "$ROOT/scripts/release-pgo.sh"
            (cd "$ROOT" && cargo build --release --quiet -p weft-bench-baseline)
            local bare
            for bare in weft-bench-baseline weft-bench-grpc-baseline weft-bench-sqlite-baseline; do
                cp "$TARGET_DIR/release/$bare" "$BIN/"
            done
        else
            log "building release binaries"
            (cd "$ROOT" && cargo build --release --quiet -p weft-order -p weft-gateway -p weft-auth \
                -p weft-user -p weft-bench-baseline -p weft)
        fi
    fi
    local bin
    for bin in "$@"; do
        [ -x "$BIN/$bin" ] || die "missing $BIN/$bin (build it, or unset NO_BUILD)"
    done
}

# --- processes and clean-up -----------------------------------------------------------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/weft-bench.XXXXXX")"
declare -A PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for name in "${!PIDS[@]}"; do
        kill -TERM "${PIDS[$name]}" 2>/dev/null || true
    done
    for name in "${!PIDS[@]}"; do
        local pid="${PIDS[$name]}"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # A script's own clean-up (write.sh drops its PostgreSQL database), once the processes stopped.
    if declare -F on_cleanup >/dev/null; then on_cleanup || true; fi
    if [ "$status" != 0 ]; then
        for f in "$WORK"/*.log; do
            [ -s "$f" ] || continue
            printf -- '--- last lines of %s\n' "$(basename "$f")" >&2
            tail -n 15 "$f" >&2
        done
    fi
    if [ "${KEEP:-0}" = 1 ] || [ "$status" != 0 ]; then
        printf 'bench: configs and logs kept in %s\n' "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME ARGS...: runs $BIN/NAME in the background, logs in $WORK/NAME.log.
start() {
    local name="$1"
    shift
    if [ "$name" = "${PROFILE:-}" ]; then
        (cd "$WORK" && exec valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
            --dump-instr=no "$BIN/$name" "$@") >"$WORK/$name.log" 2>&1 &
    else
        (cd "$WORK" && exec "$BIN/$name" "$@") >"$WORK/$name.log" 2>&1 &
    fi
    PIDS[$name]=$!
}

# wait_http URL NAME: polls URL until it answers 200 (20 s at most).
wait_http() {
    local url="$1" name="$2"
    # Under valgrind a process starts about 50 times slower.
    local tries=200
    [ -n "${PROFILE:-}" ] && tries=1200
    for _ in $(seq 1 "$tries"); do
        if curl -fsS -o /dev/null --max-time 10 "$url" 2>/dev/null; then
            return 0
        fi
        for proc in "${!PIDS[@]}"; do
            kill -0 "${PIDS[$proc]}" 2>/dev/null || die "$proc exited early"
        done
        sleep 0.1
    done
    die "$name not ready at $url after $((tries / 10)) s"
}

# free_ports N: N distinct free TCP ports on 127.0.0.1.
free_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
    else
        local used ports=() port
        used="$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)"
        while [ "${#ports[@]}" -lt "$1" ]; do
            port=$((20000 + RANDOM % 40000))
            grep -qx "$port" <<<"$used" || [[ " ${ports[*]} " == *" $port "* ]] || ports+=("$port")
        done
        echo "${ports[*]}"
    fi
}

# rss_kib PID: resident set size in KiB (VmRSS of /proc/PID/status).
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# --- the mesh ---------------------------------------------------------------------------------

BENCH_ADMIN="bench-admin@example.com"

# start_mesh ORDER_DATABASE_URL: writes $WORK/mesh.toml (free ports, weft-auth and weft-user on
# SQLite files in $WORK, weft-order on ORDER_DATABASE_URL), starts the four processes, waits for
# the gateway's /readyz; sets CONFIG, GATEWAY and P_ORDER.
start_mesh() {
    local order_db="$1" p_auth p_user p_gateway
    read -r p_auth p_user P_ORDER p_gateway <<<"$(free_ports 4)"
    CONFIG="$WORK/mesh.toml"
    cat >"$CONFIG" <<EOF
environment = "bench"

[telemetry]
log_format = "json"
log_filter = "warn"

[services.auth]
listen = "127.0.0.1:$p_auth"
database_url = "sqlite://$WORK/auth.db"

[services.user]
listen = "127.0.0.1:$p_user"
database_url = "sqlite://$WORK/user.db"

[services.order]
listen = "127.0.0.1:$P_ORDER"
database_url = "$order_db"

[upstreams.auth]
endpoint = "http://127.0.0.1:$p_auth"
grpc_services = ["weft.auth.v1.AuthService"]

[upstreams.user]
endpoint = "http://127.0.0.1:$p_user"
grpc_services = ["weft.user.v1.UserService"]

[upstreams.order]
endpoint = "http://127.0.0.1:$P_ORDER"
grpc_services = ["weft.order.v1.OrderService"]

[gateway]
listen = "127.0.0.1:$p_gateway"

# mTLS on, as by default: the figures include it. The CA and certificates are made below.
[mtls]
ca_file = "$WORK/certs/ca.pem"
ca_key_file = "$WORK/certs/ca.key"
cert_dir = "$WORK/certs"
EOF
    "$BIN/weft" certs --config "$CONFIG" >/dev/null || die "weft certs failed"

    log "starting weft-auth, weft-user, weft-order, weft-gateway in $WORK"
    # RUST_LOG would override the config's "warn" filter.
    unset RUST_LOG
    # Under valgrind weft-order needs seconds to listen: it starts first, or the gateway would
    # eject its endpoint (connection refused) and the set-up calls would fail with 503.
    if [ "${PROFILE:-}" = weft-order ]; then
        start weft-order --config "$CONFIG"
        for _ in $(seq 1 600); do
            (exec 3<>"/dev/tcp/127.0.0.1/$P_ORDER") 2>/dev/null && break
            kill -0 "${PIDS[weft-order]}" 2>/dev/null || die "weft-order exited early"
            sleep 0.2
        done
    fi
    local name
    for name in weft-auth weft-user weft-order weft-gateway; do
        [ -n "${PIDS[$name]:-}" ] || start "$name" --config "$CONFIG"
    done
    GATEWAY="http://127.0.0.1:$p_gateway"
    wait_http "$GATEWAY/readyz" weft-gateway
}

# json_field NAME JSON: the first string value of "NAME" in JSON.
json_field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" <<<"$2" | head -n 1; }

# credentials_call PATH EMAIL [EXTRA_JSON]: POSTs EMAIL and the benchmark password (and
# EXTRA_JSON's fields) to PATH (register or login) through the gateway and prints the answer's
# access token.
credentials_call() {
    local answer token
    answer="$(curl -fsS -X POST "$GATEWAY$1" -H 'content-type: application/json' \
        -d "{\"email\":\"$2\",\"password\":\"bench-password-1\"${3:+,$3}}")" ||
        die "POST $1 for $2 failed"
    token="$(json_field accessToken "$answer")"
    [ -n "$token" ] || die "no accessToken in: $answer"
    echo "$token"
}

# register EMAIL: registers EMAIL and prints its access token.
register() { credentials_call /v1/auth/register "$1" '"displayName":"Bench"'; }

# create_product STOCK: makes an administrator as an operator does (register, `weft-user
# grant-role`, sign in again), creates the benchmark product with its token; sets PRODUCT_ID.
create_product() {
    local token created
    register "$BENCH_ADMIN" >/dev/null
    "$BIN/weft-user" grant-role --config "$CONFIG" --email "$BENCH_ADMIN" --role admin >/dev/null ||
        die "weft-user grant-role failed"
    token="$(credentials_call /v1/auth/login "$BENCH_ADMIN")"
    created="$(curl -fsS -X POST "$GATEWAY/v1/products" -H 'content-type: application/json' \
        -H "authorization: Bearer $token" \
        -d "{\"name\":\"Benchmark widget\",\"description\":\"A product created by bench/\",\"unitPriceCents\":\"1999\",\"currency\":\"USD\",\"stock\":\"$1\"}")" ||
        die "create product failed"
    PRODUCT_ID="$(json_field id "$created")"
    [ -n "$PRODUCT_ID" ] || die "no product id in: $created"
}
