#!/usr/bin/env bash
# Benchmarks complete checkouts against the release build with `agora loadgen
# --scenario checkout-only`: virtual customers sign in once, then loop "3 products
# of the demo catalog into the cart, check out with tok_visa", for a fixed time,
# after a staff account has stocked every product with a million units (nothing
# runs out). Sets the result beside the database's own commit ceiling measured in
# the same run: a bare one-row insert-transaction loop on SQLite (WAL,
# synchronous=FULL, as Agora runs it), and pgbench with one insert per
# transaction on PostgreSQL.
#
#   scripts/bench-checkout.sh                         # SQLite, 32 customers, 10 s
#   CUSTOMERS=64 DURATION_SECS=20 scripts/bench-checkout.sh
#   PG_URL=postgres://postgres@127.0.0.1:5432 scripts/bench-checkout.sh   # also PostgreSQL
#
# Bounded: fixed durations, loopback only. PostgreSQL runs use a scratch database
# agora_bench_checkout, dropped and recreated. Needs curl (and psql and pgbench
# for PostgreSQL). Prints loadgen's table per database; the POST /checkout row's
# req/s is confirmed orders per second when its errors are 0.
set -euo pipefail
cd "$(dirname "$0")/.."

CUSTOMERS="${CUSTOMERS:-32}"
DURATION_SECS="${DURATION_SECS:-10}"
PORT="${PORT:-18191}"
target_dir="${CARGO_TARGET_DIR:-target}"
ADMIN_EMAIL="bench-admin@agora.test"
ADMIN_PASSWORD="bench admin password 1"

cargo build --release -q -p agora --bin agora --example commit_ceiling
bin="$target_dir/release/agora"
ceiling="$target_dir/release/examples/commit_ceiling"

source scripts/bench-lib.sh

run() { # label, then env for the server
  local label=$1; shift
  echo "$ADMIN_PASSWORD" | env "$@" "$bin" --log-format json admin create-user --data-dir "$work/data-$label" \
    --email "$ADMIN_EMAIL" --name "Bench admin" --role admin --password-stdin >/dev/null
  env "$@" "$bin" serve --data-dir "$work/data-$label" --addr "127.0.0.1:$PORT" \
    2>>"$work/agora-$label.log" &
  local pid=$!; pids+=("$pid")
  wait_ready "http://127.0.0.1:$PORT/health/ready"
  echo "$label, $CUSTOMERS customers, ${DURATION_SECS}s:"
  AGORA_LOADGEN_ADMIN_PASSWORD="$ADMIN_PASSWORD" "$bin" loadgen --quiet \
    --target "http://127.0.0.1:$PORT" --scenario checkout-only --users "$CUSTOMERS" \
    --duration "${DURATION_SECS}s" --admin-email "$ADMIN_EMAIL" --seed 1
  echo "$label: RSS after the run: $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MB"
  kill -TERM "$pid"; wait "$pid" || true
}

echo "machine: $(machine)"
echo "sqlite commit ceiling: $("$ceiling" "$work/ceiling.db" 5000)"
run sqlite

if [[ -n "${PG_URL:-}" ]]; then
  psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS agora_bench_checkout WITH (FORCE)" \
    -c "CREATE DATABASE agora_bench_checkout"
  db="$PG_URL/agora_bench_checkout"
  psql -q "$db" -c "CREATE TABLE bench_commits (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL)"
  echo "INSERT INTO bench_commits (payload) VALUES (repeat('x', 200));" > "$work/insert.sql"
  tps=$(pgbench -n -c "$CUSTOMERS" -j 2 -T 5 -f "$work/insert.sql" "$db" 2>/dev/null \
    | awk '/^tps/ {printf "%.0f", $3}')
  echo "postgres commit ceiling (pgbench, $CUSTOMERS clients, one insert per transaction): $tps commits/s"
  run postgres AGORA_DATABASE__URL="$db" AGORA_DATABASE__MAX_CONNECTIONS="${PG_CONNECTIONS:-8}"
  psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS agora_bench_checkout WITH (FORCE)"
fi
