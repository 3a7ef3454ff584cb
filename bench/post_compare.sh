#!/usr/bin/env bash
# POST /api/chats/{id}/messages at 32 connections on SQLite, two builds alternated in one run, so
# a change is judged against its baseline on the same noisy machine. Each round starts each
# build on a fresh data directory, signs a user up, creates one chat, runs wrk for DUR against
# the POST route, then counts events and append batches (distinct commit times) in the file.
#
#   bash bench/post_compare.sh <baseline confab binary> <candidate confab binary>
#
# Build a baseline from an earlier commit with, for example:
#   git stash -u && cargo build --release --bin confab && cp target/release/confab /tmp/base-confab
#   git stash pop
# ROUNDS (3), DUR (8s) and CONNS (32) scale it. Needs wrk and sqlite3 (Debian packages).
set -euo pipefail
A=${1:?baseline binary}
B=${2:?candidate binary}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-8s}
CONNS=${CONNS:-32}
PORT=18192
json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
one() {
  local bin=$1 label=$2 dir server token chat out
  dir=$(mktemp -d)
  CONFAB_RATE_LIMIT_ENABLED=false "$bin" --data-dir "$dir" serve --bind 127.0.0.1:$PORT >"$dir/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.1; done
  token=$(curl -sf -X POST localhost:$PORT/api/auth/signup -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"benchmark password","name":"Bench"}' | json '["token"]')
  chat=$(curl -sf -X POST localhost:$PORT/api/chats -H "authorization: Bearer $token" \
    -H 'content-type: application/json' -d '{"title":"bench"}' | json '["id"]')
  cat >"$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"content":"a benchmark message of ordinary length, with a few words","type":"text"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
  out=$(wrk -t2 -c"$CONNS" -d"$DUR" --latency -s "$dir/post.lua" "http://127.0.0.1:$PORT/api/chats/$chat/messages")
  kill $server; wait $server 2>/dev/null || true
  printf '| %s | %s | %s | %s | %s | %s |\n' "$label" \
    "$(echo "$out" | awk '/Requests\/sec/{print $2}')" \
    "$(echo "$out" | awk '$1=="50%"{print $2}')" \
    "$(echo "$out" | awk '$1=="99%"{print $2}')" \
    "$(echo "$out" | awk '/Non-2xx/{print $NF}' | grep . || echo 0)" \
    "$(sqlite3 "$dir/confab.db" "SELECT count(*) || ' / ' || count(DISTINCT recorded_at) FROM events")"
  rm -rf "$dir"
}
echo "| build | requests/s | p50 | p99 | non-2xx | events / appends |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for _ in $(seq 1 "$ROUNDS"); do
  one "$A" baseline
  one "$B" candidate
done
