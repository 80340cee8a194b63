#!/usr/bin/env bash
# Benchmarks complete checkouts against the release build: virtual customers sign
# in once, then loop "3 of 30 products into the cart, check out with tok_visa", for a
# fixed time. Sets the result beside the database's own commit ceiling measured in
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
# for PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."

CUSTOMERS="${CUSTOMERS:-32}"
DURATION_SECS="${DURATION_SECS:-10}"
PORT="${PORT:-18191}"
target_dir="${CARGO_TARGET_DIR:-target}"
ADMIN_EMAIL="bench-admin@agora.test"
ADMIN_PASSWORD="bench admin password 1"

cargo build --release -q -p agora --bin agora --example checkout_bench --example commit_ceiling
bin="$target_dir/release/agora"
driver="$target_dir/release/examples/checkout_bench"
ceiling="$target_dir/release/examples/commit_ceiling"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_ready() { # url
  for _ in $(seq 1 1000); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    sleep 0.01
  done
  echo "not ready: $1" >&2; return 1
}

run() { # label, then env for the server
  local label=$1; shift
  echo "$ADMIN_PASSWORD" | env "$@" "$bin" --log-format json admin create-user --data-dir "$work/data-$label" \
    --email "$ADMIN_EMAIL" --name "Bench admin" --role admin --password-stdin >/dev/null
  env "$@" "$bin" serve --no-demo --data-dir "$work/data-$label" --addr "127.0.0.1:$PORT" \
    2>>"$work/agora-$label.log" &
  local pid=$!; pids+=("$pid")
  wait_ready "http://127.0.0.1:$PORT/health/ready"
  echo "$label: $("$driver" "http://127.0.0.1:$PORT" "$ADMIN_EMAIL" "$ADMIN_PASSWORD" "$CUSTOMERS" "$DURATION_SECS")"
  echo "$label: RSS after the run: $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MB"
  kill -TERM "$pid"; wait "$pid" || true
}

echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
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
