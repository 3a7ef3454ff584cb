#!/usr/bin/env bash
# Webhook benchmark (issue 5): throughput and latency of the 200 answer of
# POST /api/webhooks/stripe under 50 concurrent deliveries of distinct, validly signed Stripe
# events, with GET /healthz at the same concurrency in the same run as the baseline, on the
# embedded default (SQLite), release build. Each event is a paid one-time top-up for one user,
# so the worker grants credits for every one; the load generator (examples/webhook_load.rs)
# also reports how long the worker took to apply them all. Run by hand:
# `bash bench/webhooks.sh` (REQUESTS, CONCURRENCY scale it; WORKERS sets the Stripe events
# applied at once, [billing] worker_concurrency, default 8; DB=postgres runs on a fresh
# PostgreSQL database on 127.0.0.1 instead).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-5000}
CONCURRENCY=${CONCURRENCY:-50}
WORKERS=${WORKERS:-8}
DB=${DB:-sqlite}
cargo build --release --bin confab --example webhook_load >/dev/null
DIR=$(mktemp -d)
PORT=18184
SECRET=whsec_bench_secret
cat >"$DIR/confab.toml" <<TOML
[billing]
worker_concurrency = $WORKERS

[[billing.prices]]
id = "price_bench_topup"
credits = 10
TOML
export CONFAB_DATA_DIR="$DIR" STRIPE_WEBHOOK_SECRET="$SECRET"
if [ "$DB" = postgres ]; then
  NAME="confab_bench_webhooks_$$"
  psql -h 127.0.0.1 -U postgres -d test -qc "CREATE DATABASE $NAME" >/dev/null
  export CONFAB_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$NAME"
  export CONFAB_ENCRYPTION_KEY="${CONFAB_ENCRYPTION_KEY:-$(head -c 32 /dev/urandom | base64)}" CONFAB_AUTO_MIGRATE=true
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
./target/release/confab --config "$DIR/confab.toml" serve --bind 127.0.0.1:$PORT >"$DIR/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.1; done

json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
SIGNUP=$(curl -sf -X POST localhost:$PORT/api/auth/signup -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"benchmark password","name":"Bench"}')
TOKEN=$(echo "$SIGNUP" | json '["token"]')
USER_ID=$(echo "$SIGNUP" | json '["user"]["id"]')

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average before: $(cut -d' ' -f1-3 /proc/loadavg), database: $DB, Stripe workers: $WORKERS"
./target/release/examples/webhook_load "http://127.0.0.1:$PORT" "$SECRET" "$TOKEN" "$USER_ID" \
  price_bench_topup 10 "$REQUESTS" "$CONCURRENCY"
