#!/usr/bin/env bash
# Benchmarks the catalog reads of the release build with wrk on loopback, beside a
# bare-axum ceiling serving the same bytes, in one run: each read from SQLite (a
# server on the same database with AGORA_CACHE__BACKEND=none) and through the
# in-process cache (the default), and through the cache with metrics off (what
# they cost). One server runs at a time: a second process on
# the same SQLite file slows the other's reads (shared file locks). Bounded: fixed
# durations.
#
#   scripts/bench-catalog.sh            # 10 s per load, 64 connections, 2 wrk threads
#   DURATION=30s CONNECTIONS=128 scripts/bench-catalog.sh
#   REDIS_URL=redis://127.0.0.1:6379 scripts/bench-catalog.sh   # also through Redis and two-tier
#
# Needs wrk (apt-get install wrk) and curl. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
PORT="${PORT:-18181}"
CEILING_PORT="${CEILING_PORT:-18182}"
target_dir="${CARGO_TARGET_DIR:-target}"

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p agora --bin agora --example ceiling
bin="$target_dir/release/agora"
ceiling="$target_dir/release/examples/ceiling"

source scripts/bench-lib.sh

# First start creates and seeds the database; it is not what we time.
"$bin" serve --data-dir "$work/data" --addr "127.0.0.1:$PORT" 2>>"$work/agora.log" &
pid=$!
wait_ready "http://127.0.0.1:$PORT/health/ready"
kill -TERM "$pid"; wait "$pid" || true

# Start-up to ready on the existing database.
t0=$(date +%s%N)
"$bin" serve --data-dir "$work/data" --addr "127.0.0.1:$PORT" 2>>"$work/agora.log" &
pid=$!; pids+=("$pid")
wait_ready "http://127.0.0.1:$PORT/health/ready"
startup_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
sleep 1
idle_rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")

id=$(curl -fs "http://127.0.0.1:$PORT/api/v1/products?limit=1" | sed -E 's/.*"id":"(prod_[0-9a-f]{32})".*/\1/')
curl -fs "http://127.0.0.1:$PORT/api/v1/products/$id" > "$work/product.json"
"$ceiling" "127.0.0.1:$CEILING_PORT" "$work/product.json" &
pids+=("$!")
wait_ready "http://127.0.0.1:$CEILING_PORT/"
kill -TERM "$pid"; wait "$pid" || true

# The same server, with the cache off (reads from SQLite) or on (the default).
serve() { # env…
  env "$@" "$bin" serve --data-dir "$work/data" --addr "127.0.0.1:$PORT" 2>>"$work/agora.log" &
  pid=$!; pids+=("$pid")
  wait_ready "http://127.0.0.1:$PORT/health/ready"
}

load() { # name url
  wrk_load "$2"
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
}

echo
echo "machine: $(machine); wrk -t$THREADS -c$CONNECTIONS -d$DURATION on the same machine"
echo
echo "| load | req/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|"
load "ceiling: bare axum, same product JSON" "http://127.0.0.1:$CEILING_PORT/"
serve AGORA_CACHE__BACKEND=none
load "GET /api/v1/products/{id} (SQLite, no cache)" "http://127.0.0.1:$PORT/api/v1/products/$id"
load "GET /api/v1/products?limit=20 (SQLite, no cache)" "http://127.0.0.1:$PORT/api/v1/products?limit=20"
kill -TERM "$pid"; wait "$pid" || true
serve AGORA_CACHE__BACKEND=memory
load "GET /api/v1/products/{id} (memory cache)" "http://127.0.0.1:$PORT/api/v1/products/$id"
load "GET /api/v1/products?limit=20 (memory cache)" "http://127.0.0.1:$PORT/api/v1/products?limit=20"
# What the metrics cost: the same read with them off.
kill -TERM "$pid"; wait "$pid" || true
serve AGORA_CACHE__BACKEND=memory AGORA_TELEMETRY__METRICS=false
load "GET /api/v1/products/{id} (memory cache, metrics off)" "http://127.0.0.1:$PORT/api/v1/products/$id"
if [[ -n "${REDIS_URL:-}" ]]; then
  kill -TERM "$pid"; wait "$pid" || true
  serve AGORA_CACHE__BACKEND=redis AGORA_CACHE__REDIS_URL="$REDIS_URL" AGORA_CACHE__REDIS_PREFIX="bench-$$"
  load "GET /api/v1/products/{id} (Redis cache)" "http://127.0.0.1:$PORT/api/v1/products/$id"
  load "GET /api/v1/products?limit=20 (Redis cache)" "http://127.0.0.1:$PORT/api/v1/products?limit=20"
  kill -TERM "$pid"; wait "$pid" || true
  serve AGORA_CACHE__BACKEND=two_tier AGORA_CACHE__REDIS_URL="$REDIS_URL" AGORA_CACHE__REDIS_PREFIX="bench-$$-2"
  load "GET /api/v1/products/{id} (two-tier cache)" "http://127.0.0.1:$PORT/api/v1/products/$id"
  load "GET /api/v1/products?limit=20 (two-tier cache)" "http://127.0.0.1:$PORT/api/v1/products?limit=20"
fi
echo
echo "start-up to ready on an existing database: ${startup_ms} ms (includes the curl polling interval of 10 ms)"
echo "idle RSS of agora serve: $(( idle_rss_kb / 1024 )) MB (${idle_rss_kb} kB)"
busy_rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
echo "RSS after the loads (the last server): $(( busy_rss_kb / 1024 )) MB"
