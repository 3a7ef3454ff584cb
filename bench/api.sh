#!/usr/bin/env bash
# API benchmark (issue 3, first part): POST message and GET messages page at 32 connections on
# the embedded default (SQLite), with wrk as the external load generator, and beside it the bare
# reference (examples/bare_reference.rs) running the same SQL read, so GET throughput is reported
# as a ratio of it. Run by hand: `bash bench/api.sh` (needs wrk: apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10s}
CONNS=${CONNS:-32}
# BIN and REF_BIN measure other builds (an earlier commit's, say) with the same script.
BIN=${BIN:-./target/release/confab}
REF_BIN=${REF_BIN:-./target/release/examples/bare_reference}
[ -n "${NO_BUILD:-}" ] || cargo build --release --bin confab --example bare_reference >/dev/null
DIR=$(mktemp -d)
PORT=18181
REF_PORT=18182
CONFAB_RATE_LIMIT_ENABLED=false "$BIN" --data-dir "$DIR" serve --bind 127.0.0.1:$PORT >"$DIR/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER ${REF:-} 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do curl -sf localhost:$PORT/healthz >/dev/null && break; sleep 0.1; done

json() { python3 -c "import sys,json; print(json.load(sys.stdin)$1)"; }
SIGNUP=$(curl -sf -X POST localhost:$PORT/api/auth/signup -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"benchmark password","name":"Bench"}')
TOKEN=$(echo "$SIGNUP" | json '["token"]')
OWNER=$(echo "$SIGNUP" | json '["user"]["id"]')
CHAT=$(curl -sf -X POST localhost:$PORT/api/chats -H "authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"title":"bench"}' | json '["id"]')

cat >"$DIR/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"content":"a benchmark message of ordinary length, with a few words","type":"text"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
cat >"$DIR/get.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

echo "## POST /api/chats/{id}/messages, $CONNS connections, $DUR (includes read-your-writes)"
wrk -t2 -c"$CONNS" -d"$DUR" --latency -s "$DIR/post.lua" "http://127.0.0.1:$PORT/api/chats/$CHAT/messages" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"
echo "## GET /api/chats/{id}/messages?page=2&limit=50, $CONNS connections, $DUR"
wrk -t2 -c"$CONNS" -d"$DUR" --latency -s "$DIR/get.lua" "http://127.0.0.1:$PORT/api/chats/$CHAT/messages?page=2&limit=50" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"
"$REF_BIN" "$DIR/confab.db" $REF_PORT &
REF=$!
for _ in $(seq 1 100); do curl -sf "localhost:$REF_PORT/ref/chats/$CHAT/messages?owner=$OWNER" >/dev/null && break; sleep 0.1; done
echo "## reference: bare axum handler, same SQL read, $CONNS connections, $DUR"
wrk -t2 -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:$REF_PORT/ref/chats/$CHAT/messages?owner=$OWNER&page=2&limit=50" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"
echo "messages stored: $(curl -sf "localhost:$PORT/api/chats/$CHAT/messages?limit=1" -H "authorization: Bearer $TOKEN" | json '["total"]')"
