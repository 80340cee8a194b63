# Shared by the bench scripts (sourced, not run): a scratch directory removed at
# exit with every process started, readiness polling, and a wrk load as a
# Markdown table row.

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

machine() {
  echo "$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
}

# wrk with THREADS, CONNECTIONS and DURATION against url; sets wrk_rps, wrk_p50,
# wrk_p99 and wrk_errors (non-2xx answers plus socket errors).
wrk_load() { # url
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$1")
  wrk_rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  wrk_p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  wrk_p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local non2xx sock
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  sock=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
  wrk_errors=$(( ${non2xx:-0} + ${sock:-0} ))
}
