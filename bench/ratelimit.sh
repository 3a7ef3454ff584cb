#!/usr/bin/env bash
# Rate limiter overhead (issue 6): the same authenticated route (GET /api/models: session lookup,
# catalogue filter) served with limiting off, with the in-process backend, and with the Redis
# backend (both budgets, per IP and per user, checked and recorded by one Lua script per
# request), at 32 connections with wrk. Budgets are set far above the load so nothing is
# refused: what is measured is the cost of counting. The three servers run in turn in one run;
# the report gives each throughput as a ratio of the unlimited one.
# Run by hand: `bash bench/ratelimit.sh` (needs wrk and a Redis at CONFAB_REDIS_URL, default
# redis://127.0.0.1:6379; it uses keys under confab:rl:).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10s}
CONNS=${CONNS:-32}
REDIS=${CONFAB_REDIS_URL:-redis://127.0.0.1:6379}
cargo build --release --bin confab >/dev/null
PORT=18191
run() { # name, then env assignments for the server
  local name=$1; shift
  local dir; dir=$(mktemp -d)
  env "$@" CONFAB_REDIS_URL="$REDIS" ./target/release/confab --data-dir "$dir" serve \
    --bind 127.0.0.1:$PORT >"$dir/serve.log" 2>&1 &
  local server=$!
  for _ in $(seq 1 100); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.1; done
  local token
  token=$(curl -sf -X POST localhost:$PORT/api/auth/signup -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"benchmark password","name":"Bench"}' |
    python3 -c "import sys,json; print(json.load(sys.stdin)['token'])")
  printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$token" >"$dir/auth.lua"
  # Warm up, then measure.
  wrk -t2 -c"$CONNS" -d3s -s "$dir/auth.lua" "http://127.0.0.1:$PORT/api/models" >/dev/null
  local out
  out=$(wrk -t2 -c"$CONNS" -d"$DUR" --latency -s "$dir/auth.lua" "http://127.0.0.1:$PORT/api/models")
  local rps p50 p99 non2xx
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  echo "$name $rps $p50 $p99 ${non2xx:-0}" >>"$RESULTS"
  kill $server; wait $server 2>/dev/null || true
  rm -rf "$dir"
}
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
HIGH=100000000/1s
run off CONFAB_RATE_LIMIT_ENABLED=false
run memory CONFAB_RATE_LIMIT_BACKEND=memory CONFAB_RATE_LIMIT_PER_IP=$HIGH CONFAB_RATE_LIMIT_PER_USER=$HIGH
run redis CONFAB_RATE_LIMIT_BACKEND=redis CONFAB_RATE_LIMIT_PER_IP=$HIGH CONFAB_RATE_LIMIT_PER_USER=$HIGH
echo "| limiting | requests/s | ratio to off | p50 | p99 | non-2xx |"
echo "| --- | --- | --- | --- | --- | --- |"
awk 'NR==1 {base=$2} {printf "| %s | %s | %.2f | %s | %s | %s |\n", $1, $2, $2/base, $3, $4, $5}' "$RESULTS"
