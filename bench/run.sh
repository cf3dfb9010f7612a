#!/usr/bin/env bash
# Weft's hot-path benchmark (not a test): GET /v1/products/{id} through
# gateway -> weft-order -> SQLite, against a bare hyper server answering the same JSON, with
# `wrk -t1 -c64` on this box, rounds interleaved. See bench/README.md.
#
# Environment knobs: DURATION (wrk seconds per round, default 10), ROUNDS (pairs of
# baseline/weft runs, default 2), CONNECTIONS (default 64), WARMUP (seconds, default 3),
# KEEP=1 (keep the temp dir with configs and logs), NO_BUILD=1 (use existing release binaries),
# BIN_DIR=DIR (run the binaries in DIR instead, e.g. a build with another profile; no build),
# PGO=1 (Weft's binaries built with profile-guided optimisation by scripts/release-pgo.sh, as
# the image has them: target/pgo/release).
#
# PROFILE=weft-gateway|weft-order counts instructions instead of timing: that process runs under
# valgrind's callgrind, gets WARM requests (default 200), is zeroed, gets exactly REQUESTS
# requests (default 2000, over PARALLEL keep-alive connections, default 4), and its counts are
# dumped to $WORK/callgrind.out.1 (kept); the script prints instructions per request. Instruction
# counts do not depend on the machine's noise: use them for changes wrk cannot resolve.
set -euo pipefail

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
WARMUP="${WARMUP:-3}"

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- tools and binaries ---------------------------------------------------------------------

if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get install -y wrk >/dev/null 2>&1 ||
        { $SUDO apt-get update -qq && $SUDO apt-get install -y wrk >/dev/null; } ||
        die "cannot install wrk (apt-get install -y wrk)"
fi
command -v curl >/dev/null 2>&1 || die "curl is needed"

need_binaries weft-auth weft-user weft-order weft-gateway weft weft-bench-baseline

# --- the mesh ---------------------------------------------------------------------------------

start_mesh "sqlite://$WORK/order.db"
log "creating the benchmark product"
create_product 1000000
WEFT_URL="$GATEWAY/v1/products/$PRODUCT_ID"
curl -fsS -o "$WORK/product.json" "$WEFT_URL" || die "GET $WEFT_URL failed"

if [ -n "${PROFILE:-}" ]; then
    command -v valgrind >/dev/null || die "PROFILE needs valgrind (apt-get install -y valgrind)"
    [ -n "${PIDS[$PROFILE]:-}" ] || die "PROFILE must be weft-gateway or weft-order"
    REQUESTS="${REQUESTS:-2000}" WARM="${WARM:-200}" PARALLEL="${PARALLEL:-4}"
    # A curl config asking for the URL n times; --parallel keeps PARALLEL connections busy.
    requests() {
        local n="$1" file="$WORK/requests-$1.cfg"
        for _ in $(seq 1 "$n"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$WEFT_URL"; done >"$file"
        curl -sS -Z --parallel-max "$PARALLEL" -w '%{http_code}\n' -K "$file"
    }
    log "profiling $PROFILE: $WARM requests of warm-up, then $REQUESTS counted"
    requests "$WARM" >/dev/null
    callgrind_control --zero "${PIDS[$PROFILE]}" >/dev/null
    ok="$(requests "$REQUESTS" | grep -c '^200$' || true)"
    callgrind_control --dump="$REQUESTS requests" "${PIDS[$PROFILE]}" >/dev/null
    [ "$ok" = "$REQUESTS" ] || die "only $ok of $REQUESTS requests answered 200"
    sleep 1
    dump="$WORK/callgrind.out.1"
    total="$(awk '/^summary:/ {print $2}' "$dump")"
    echo "$PROFILE: $((total / REQUESTS)) instructions per request ($total for $REQUESTS requests)"
    echo "callgrind file: $dump (callgrind_annotate --inclusive=yes $dump)"
    KEEP=1
    exit 0
fi

# The baseline answers the gateway's own body, so both send the same bytes.
P_BASE="$(free_ports 1)"
start weft-bench-baseline "127.0.0.1:$P_BASE" "$WORK/product.json"
BASE_URL="http://127.0.0.1:$P_BASE/v1/products/$PRODUCT_ID"
wait_http "$BASE_URL" weft-bench-baseline

# --- measuring --------------------------------------------------------------------------------

# to_ms VALUE: wrk's "1.23ms" / "456.78us" / "1.20s" in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# box_busy: busy CPU ticks of the whole machine so far (user+nice+system+irq+softirq+steal).
box_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# ours_busy: CPU ticks used so far by the processes this script started.
ours_busy() {
    local total=0 pid
    for pid in "${PIDS[@]}"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
# ticks PID: CPU ticks used so far by one process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
TICKS="$(getconf CLK_TCK)"
CORES="$(nproc)"

# measure NAME URL ROUND: one wrk round; appends "name rps p50_ms p99_ms other%" to
# $WORK/results. "other" is the share of the box's CPU used by anything but wrk and the
# processes started here during the round: other work on the machine skews the comparison
# (the baseline needs one core, the weft path two).
measure() {
    local name="$1" url="$2" out="$WORK/wrk-$1-$3.txt"
    local box0 ours0 box1 ours1 wrk_secs other gw0 od0 bl0
    box0="$(box_busy)" ours0="$(ours_busy)"
    gw0="$(ticks "${PIDS[weft-gateway]}")" od0="$(ticks "${PIDS[weft-order]}")"
    bl0="$(ticks "${PIDS[weft-bench-baseline]}")"
    TIMEFORMAT='%U %S'
    { time wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$out" 2>&1; } \
        2>"$out.time" || die "wrk failed on $name: $(cat "$out")"
    box1="$(box_busy)" ours1="$(ours_busy)"
    local gw_t=$(($(ticks "${PIDS[weft-gateway]}") - gw0)) od_t=$(($(ticks "${PIDS[weft-order]}") - od0))
    local bl_t=$(($(ticks "${PIDS[weft-bench-baseline]}") - bl0))
    wrk_secs="$(awk '{print $1 + $2}' "$out.time")"
    other="$(awk -v b="$((box1 - box0))" -v o="$((ours1 - ours0))" -v w="$wrk_secs" \
        -v t="$TICKS" -v c="$CORES" -v d="$DURATION" 'BEGIN {
            x = (b - o - w * t) / (c * d * t) * 100; if (x < 0) x = 0; printf "%.0f", x }')"
    local rps p50 p99 errors
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    p50="$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")"
    p99="$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")"
    errors="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")"
    [ -z "$errors" ] || die "$name answered $errors non-2xx responses (see $out)"
    grep -q "Socket errors" "$out" && log "$name: $(grep 'Socket errors' "$out")"
    printf '%s %s %s %s %s\n' "$name" "$rps" "$p50" "$p99" "$other" >>"$WORK/results"
    printf '  %-9s round %s: %10s req/s   p50 %8s ms   p99 %8s ms   other load %3s %%\n' \
        "$name" "$3" "$rps" "$p50" "$p99" "$other"
    # CPU per request (us): where the time goes, for whoever tunes this next.
    awk -v n="$(awk '/ requests in / {print $1}' "$out")" -v t="$TICKS" -v w="$wrk_secs" \
        -v g="$gw_t" -v o="$od_t" -v b="$bl_t" -v name="$name" 'BEGIN {
            us = 1e6 / n
            if (name == "weft")
                printf "            CPU per request: gateway %.1f us, order %.1f us, wrk %.1f us\n", g / t * us, o / t * us, w * us
            else
                printf "            CPU per request: baseline %.1f us, wrk %.1f us\n", b / t * us, w * us
        }'
}

log "warming up (${WARMUP} s each)"
wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$BASE_URL" >/dev/null
wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$WEFT_URL" >/dev/null

log "measuring: wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency, $ROUNDS rounds, interleaved"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host: $(nproc) cores, $(uname -r)"
echo "weft:     GET $WEFT_URL (gateway -> weft-order -> SQLite)"
echo "baseline: GET $BASE_URL (bare hyper, same body: $(wc -c <"$WORK/product.json") bytes)"
: >"$WORK/results"
gw_rss0="$(rss_kib "${PIDS[weft-gateway]}")"
order_rss0="$(rss_kib "${PIDS[weft-order]}")"
for round in $(seq 1 "$ROUNDS"); do
    measure baseline "$BASE_URL" "$round"
    measure weft "$WEFT_URL" "$round"
done

gw_rss="$(rss_kib "${PIDS[weft-gateway]}")"
order_rss="$(rss_kib "${PIDS[weft-order]}")"
gw_hwm="$(hwm_kib "${PIDS[weft-gateway]}")"
order_hwm="$(hwm_kib "${PIDS[weft-order]}")"

awk -v gw="$gw_rss" -v od="$order_rss" -v gwh="$gw_hwm" -v odh="$order_hwm" \
    -v gw0="$gw_rss0" -v od0="$order_rss0" '
    { n[$1]++; rps[$1] += $2; p50[$1] += $3; p99[$1] += $4; if ($5 > other) other = $5
      if ($1 == "baseline") { b_rps[n[$1]] = $2; b_p99[n[$1]] = $4 }
      else { w_rps[n[$1]] = $2; w_p99[n[$1]] = $4 } }
    END {
        print ""
        printf "%-9s %12s %10s %10s   (mean of %d rounds)\n", "", "req/s", "p50 ms", "p99 ms", n["weft"]
        for (s = 0; s < 2; s++) {
            name = s == 0 ? "baseline" : "weft"
            printf "%-9s %12.0f %10.3f %10.3f\n", name, rps[name] / n[name], p50[name] / n[name], p99[name] / n[name]
        }
        r = (rps["weft"] / n["weft"]) / (rps["baseline"] / n["baseline"])
        q = (p99["weft"] / n["weft"]) / (p99["baseline"] / n["baseline"])
        printf "\nweft/baseline req/s: %.1f %%   (per round:", 100 * r
        for (i = 1; i <= n["weft"]; i++) printf " %.1f %%", 100 * w_rps[i] / b_rps[i]
        printf ")   target >= 45 %%\n"
        printf "weft/baseline p99:   %.2fx     (per round:", q
        for (i = 1; i <= n["weft"]; i++) printf " %.2fx", w_p99[i] / b_p99[i]
        printf ")   target <= 2.5x\n"
        printf "RSS after the run: gateway %.1f MiB + order %.1f MiB = %.1f MiB   target <= 16 MiB\n",
            gw / 1024, od / 1024, (gw + od) / 1024
        printf "peak RSS (VmHWM):  gateway %.1f MiB + order %.1f MiB = %.1f MiB\n",
            gwh / 1024, odh / 1024, (gwh + odh) / 1024
        printf "RSS before the measured rounds (after warm-up): gateway %.1f MiB + order %.1f MiB = %.1f MiB\n",
            gw0 / 1024, od0 / 1024, (gw0 + od0) / 1024
        if (other > 5)
            printf "\nWARNING: other work used up to %d %% of the CPU during a round: the figures are skewed (against weft); rerun on a quiet machine.\n", other
    }' "$WORK/results"
