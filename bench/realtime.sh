#!/usr/bin/env bash
# Realtime fan-out benchmark (issue 6): 1,000 WebSocket clients speaking the Pusher protocol
# (100 users x 10 connections, each subscribed to its user's private channel), a message posted
# every 10 ms, delivery latency from the write's response to receipt. The server is the release
# binary with its defaults (SQLite); DB=postgres runs it on a fresh PostgreSQL database instead.
# Run by hand: `bash bench/realtime.sh` (USERS, CONNS, SECS, INTERVAL_MS scale it).
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${DB:-sqlite}
cargo build --release --bin confab --example ws_fanout >/dev/null
DIR=$(mktemp -d)
PORT=18190
export CONFAB_DATA_DIR="$DIR"
export CONFAB_PUSHER_KEY=bench-key
export CONFAB_PUSHER_SECRET=bench-secret
if [ "$DB" = postgres ]; then
  NAME="confab_bench_realtime_$$"
  psql -h 127.0.0.1 -U postgres -d test -qc "CREATE DATABASE $NAME" >/dev/null
  export CONFAB_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$NAME"
  export CONFAB_ENCRYPTION_KEY="${CONFAB_ENCRYPTION_KEY:-$(head -c 32 /dev/urandom | base64)}"
  export CONFAB_AUTO_MIGRATE=true
fi
cleanup() {
  kill ${SERVER:-} 2>/dev/null || true
  wait ${SERVER:-} 2>/dev/null || true
  rm -rf "$DIR"
  if [ "$DB" = postgres ]; then
    psql -h 127.0.0.1 -U postgres -d test -qc "DROP DATABASE IF EXISTS $NAME" >/dev/null || true
  fi
}
trap cleanup EXIT
./target/release/confab serve --bind 127.0.0.1:$PORT >"$DIR/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.1; done
CONFAB_BENCH_URL="http://127.0.0.1:$PORT" ./target/release/examples/ws_fanout
