#!/usr/bin/env bash
# What the gateway costs: GET /api/v1/products/{id} (memory cache) of the
# release monolith, with wrk, called directly and through `agora gateway`
# (one route, one instance), in the same run, beside the bare axum ceiling;
# then the same through the gateway with two instances (round-robin). The
# issue's target: through the gateway, added p50 latency < 0.3 ms and
# throughput >= 60 % of calling the service directly.
#
#   scripts/bench-gateway.sh
#   DURATION=5s scripts/bench-gateway.sh
#
# Bounded: fixed durations, loopback only. Needs wrk (apt-get install wrk) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
PORT="${PORT:-18271}"
PORT2="${PORT2:-18272}"
GATEWAY_PORT="${GATEWAY_PORT:-18273}"
CEILING_PORT="${CEILING_PORT:-18274}"
target_dir="${CARGO_TARGET_DIR:-target}"

command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p agora --bin agora --example ceiling
bin="$target_dir/release/agora"
ceiling="$target_dir/release/examples/ceiling"
source scripts/bench-lib.sh

serve() { # port
  "$bin" serve --data-dir "$work/data" --addr "127.0.0.1:$1" 2>>"$work/agora.log" &
  pids+=("$!")
  wait_ready "http://127.0.0.1:$1/health/ready"
}
gateway() { # instance addresses…
  local addresses="" a
  for a in "$@"; do addresses+="\"http://$a\", "; done
  cat > "$work/gateway.toml" <<TOML
listen = "127.0.0.1:$GATEWAY_PORT"
${GATEWAY_EXTRA:-}
[[routes]]
prefix = "/"
upstream = "agora"
[upstreams.agora]
addresses = [${addresses%, }]
TOML
  "$bin" --config "$work/gateway.toml" gateway 2>>"$work/gateway.log" &
  gateway_pid=$!; pids+=("$gateway_pid")
  wait_ready "http://127.0.0.1:$GATEWAY_PORT/health/ready"
}

serve "$PORT"
id=$(curl -fs "http://127.0.0.1:$PORT/api/v1/products?limit=1" | sed -E 's/.*"id":"(prod_[0-9a-f]{32})".*/\1/')
curl -fs "http://127.0.0.1:$PORT/api/v1/products/$id" > "$work/product.json"
"$ceiling" "127.0.0.1:$CEILING_PORT" "$work/product.json" &
pids+=("$!")
wait_ready "http://127.0.0.1:$CEILING_PORT/"
path="/api/v1/products/$id"

echo
echo "machine: $(machine); at $(git rev-parse --short HEAD 2>/dev/null || echo '?'); wrk -t$THREADS -c$CONNECTIONS -d$DURATION; same machine, loopback"
echo
echo "| load | req/s | p50 | p99 | errors | of direct |"
echo "|---|---|---|---|---|---|"
direct=0
row() { # load, req/s, p50, p99, errors
  local ratio="—"
  [[ "$direct" -gt 0 && "$2" =~ ^[0-9]+$ ]] && ratio="$(( 100 * $2 / direct )) %"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" "$ratio"
}
wrk_load "http://127.0.0.1:$CEILING_PORT/"
row "ceiling: bare axum, the same product JSON" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
wrk_load "http://127.0.0.1:$PORT$path"
direct=$wrk_rps
row "GET /api/v1/products/{id}, directly" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
gateway "127.0.0.1:$PORT"
wrk_load "http://127.0.0.1:$GATEWAY_PORT$path"
row "the same through the gateway (one instance)" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
kill -TERM "$gateway_pid"; wait "$gateway_pid" || true
# The same with the edge duties on: tokens checked against the JWKS (these
# requests carry none) and a per-client bucket too large to refuse anything,
# in the gateway's memory, then in Redis when one answers on 6379.
GATEWAY_EXTRA="[auth]
jwks_url = \"http://127.0.0.1:$PORT/.well-known/jwks.json\"
[rate_limit]
per_client = { per_second = 1000000, burst = 1000000 }"
gateway "127.0.0.1:$PORT"
wrk_load "http://127.0.0.1:$GATEWAY_PORT$path"
row "through the gateway, [auth] and per-client limit in memory" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
kill -TERM "$gateway_pid"; wait "$gateway_pid" || true
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  GATEWAY_EXTRA="$GATEWAY_EXTRA
redis_url = \"redis://127.0.0.1:6379\"
key_prefix = \"agora-bench:$$\""
  gateway "127.0.0.1:$PORT"
  wrk_load "http://127.0.0.1:$GATEWAY_PORT$path"
  row "through the gateway, [auth] and per-client limit in Redis" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
  kill -TERM "$gateway_pid"; wait "$gateway_pid" || true
fi
GATEWAY_EXTRA=""
# A second instance of the monolith on the same database, behind the gateway.
serve "$PORT2"
gateway "127.0.0.1:$PORT" "127.0.0.1:$PORT2"
wrk_load "http://127.0.0.1:$GATEWAY_PORT$path"
row "through the gateway, two instances (round-robin)" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"

# One connection, one request at a time: the latency the gateway adds.
CONNECTIONS=1 THREADS=1
wrk_load "http://127.0.0.1:$PORT$path"
direct=$wrk_rps
row "one connection, directly" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
wrk_load "http://127.0.0.1:$GATEWAY_PORT$path"
row "one connection, through the gateway" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$wrk_errors"
