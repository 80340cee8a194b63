#!/usr/bin/env bash
# The performance report in one run: the release server on a fresh SQLite
# database with the demo catalog, loaded with fixed parameters, beside the
# ceiling of a bare axum handler serving the same product JSON on the same
# machine, so that each figure can be read as a ratio that survives a noisy
# machine. Prints one Markdown table:
#
# - wrk on the ceiling, then on GET /api/v1/products/{id} (memory cache) as
#   configured by default (metrics on, no trace export), with metrics and
#   tracing both on (spans exported over OTLP to a local sink, the example
#   otlp_sink; every trace, then 1 % of them), and with both off: what
#   observing costs;
# - `agora loadgen --scenario shop` with 64 customers (the issue's target: no
#   errors but the expected out-of-stock codes, p99 < 50 ms) — all requests and
#   the checkouts;
# - GET /metrics after that run: the median and slowest of 20 scrapes, and how
#   many series it held.
#
#   scripts/bench.sh                                 # 10 s per wrk load, 30 s of shop
#   DURATION=5s SHOP_DURATION=10s scripts/bench.sh
#
# Bounded: fixed durations, loopback only. Needs wrk (apt-get install wrk) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10s}"
SHOP_DURATION="${SHOP_DURATION:-30s}"
SHOP_USERS="${SHOP_USERS:-64}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
PORT="${PORT:-18171}"
CEILING_PORT="${CEILING_PORT:-18172}"
target_dir="${CARGO_TARGET_DIR:-target}"

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p agora --bin agora --example ceiling --example otlp_sink
bin="$target_dir/release/agora"
ceiling="$target_dir/release/examples/ceiling"
sink="$target_dir/release/examples/otlp_sink"
SINK_PORT="${SINK_PORT:-18173}"
source scripts/bench-lib.sh
base="http://127.0.0.1:$PORT"

serve() { # env…
  env "$@" "$bin" serve --data-dir "$work/data" --addr "127.0.0.1:$PORT" 2>>"$work/agora.log" &
  pid=$!; pids+=("$pid")
  wait_ready "$base/health/ready"
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }

ceiling_rps=0
row() { # load, req/s, p50, p99, errors
  local ratio="—"
  [[ "$ceiling_rps" -gt 0 && "$2" =~ ^[0-9]+$ ]] && ratio="$(( 100 * $2 / ceiling_rps )) %"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" "$ratio"
}

# The first start migrates and loads the demo catalog (100 of each in stock).
serve
id=$(curl -fs "$base/api/v1/products?limit=1" | sed -E 's/.*"id":"(prod_[0-9a-f]{32})".*/\1/')
curl -fs "$base/api/v1/products/$id" > "$work/product.json"
"$ceiling" "127.0.0.1:$CEILING_PORT" "$work/product.json" &
pids+=("$!")
wait_ready "http://127.0.0.1:$CEILING_PORT/"

echo
echo "machine: $(machine); at $(git rev-parse --short HEAD 2>/dev/null || echo '?'); wrk -t$THREADS -c$CONNECTIONS -d$DURATION; loadgen shop $SHOP_USERS users $SHOP_DURATION; same machine, loopback"
echo
echo "| load | req/s | p50 | p99 | errors | of the ceiling |"
echo "|---|---|---|---|---|---|"
wrk_load "http://127.0.0.1:$CEILING_PORT/"
ceiling_rps=$wrk_rps
row "ceiling: bare axum, the same product JSON" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
wrk_load "$base/api/v1/products/$id"
row "GET /api/v1/products/{id}, memory cache (metrics on, no trace export)" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"

# The shop: loadgen's table goes to a file, two of its rows into this table.
set +e
"$bin" loadgen --quiet --target "$base" --scenario shop --users "$SHOP_USERS" \
  --duration "$SHOP_DURATION" --seed 1 > "$work/shop.txt" 2> "$work/shop.err"
shop_status=$?
set -e
shop_row() { # label, kind as printed (its words), fields before count
  awk -v k="$2" -v n="$3" -v label="$1" '
    index($0, k " ") == 1 {
      printf "| %s | %.0f | %.2f ms | %.2f ms | %s |\n", label, $(n + 3), $(n + 4), $(n + 6), $(n + 2)
    }' "$work/shop.txt"
}
shop_row "loadgen shop, every request" "all" 1 | sed 's/$/ — |/'
shop_row "loadgen shop, POST /checkout" "POST /checkout" 2 | sed 's/$/ — |/'

# Scrapes of /metrics after the shop run, which touched most routes, once
# the work it left behind (the relay, the receipts) is done.
for _ in $(seq 1 100); do
  backlog=$(curl -fs "$base/metrics" | awk '/^agora_outbox_backlog/ {n += $2} END {print n + 0}')
  [[ "$backlog" == 0 ]] && break
  sleep 0.1
done
sleep 1
for _ in $(seq 1 20); do
  curl -fs -o /dev/null -w '%{time_total}\n' "$base/metrics"
done | sort -n > "$work/scrapes.txt"
series=$(curl -fs "$base/metrics" | grep -cv '^#')
median=$(awk 'NR==10 {printf "%.2f", $1 * 1000}' "$work/scrapes.txt")
slowest=$(awk 'END {printf "%.2f", $1 * 1000}' "$work/scrapes.txt")
row "GET /metrics ($series series), 20 scrapes" "—" "$median ms" "max $slowest ms" 0
stop

# What observing costs: the product read again with metrics and spans
# exported, then with neither.
"$sink" "127.0.0.1:$SINK_PORT" &
pids+=("$!")
wait_ready "http://127.0.0.1:$SINK_PORT/stats"
serve AGORA_TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT/v1/traces"
wrk_load "$base/api/v1/products/$id"
row "GET /api/v1/products/{id}, memory cache, metrics and tracing on" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
stop
exported=$(curl -fs "http://127.0.0.1:$SINK_PORT/stats")
serve AGORA_TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT/v1/traces" AGORA_TELEMETRY__SAMPLE_RATIO=0.01
wrk_load "$base/api/v1/products/$id"
row "GET /api/v1/products/{id}, memory cache, metrics and tracing on, 1 % of traces sampled" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
stop
serve AGORA_TELEMETRY__METRICS=false
wrk_load "$base/api/v1/products/$id"
row "GET /api/v1/products/{id}, memory cache, metrics and tracing off" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
stop

echo
echo "spans exported to the sink while tracing was on: $exported"
echo
echo "loadgen shop, every error by code (exit status $shop_status):"
sed -n '/^errors by code:/,$p; /^no errors/p' "$work/shop.txt"
cat "$work/shop.err"
