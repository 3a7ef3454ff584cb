#!/usr/bin/env bash
# Search benchmark (issue 3): GET /api/messages/search over 1,000,000 stored messages across
# 1,000 users, p50/p99 with wrk from outside the process. Users sign up through the API (real
# sessions); their chats and messages are seeded into the event log by examples/seed_messages.rs
# with the same domain commands the API runs, and the projections build the read models when
# the server restarts (that catch-up is timed too). Run by hand: `bash bench/search.sh`
# (needs wrk). DB=postgres runs it on PostgreSQL (a fresh database on 127.0.0.1) instead of the
# embedded SQLite default. USERS, CHATS (per user), PER_CHAT and DUR scale it down. KEEP=1
# keeps the data directory; REUSE=<that directory> measures again on it without seeding (SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-1000}
CHATS=${CHATS:-10}
PER_CHAT=${PER_CHAT:-100}
DUR=${DUR:-15s}
DB=${DB:-sqlite}
cargo build --release --bin confab --example seed_messages >/dev/null
DIR=${REUSE:-$(mktemp -d)}
PORT=18183
export CONFAB_DATA_DIR="$DIR"
if [ "$DB" = postgres ]; then
  NAME="confab_bench_search_$$"
  psql -h 127.0.0.1 -U postgres -d test -qc "CREATE DATABASE $NAME" >/dev/null
  export CONFAB_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$NAME"
  export CONFAB_ENCRYPTION_KEY="${CONFAB_ENCRYPTION_KEY:-$(head -c 32 /dev/urandom | base64)}"
  # A fresh database: let serve create the schema.
  export CONFAB_AUTO_MIGRATE=true
fi
cleanup() {
  kill ${SERVER:-} 2>/dev/null || true
  wait ${SERVER:-} 2>/dev/null || true
  [ -n "${KEEP:-}${REUSE:-}" ] && echo "kept $DIR" || rm -rf "$DIR"
  if [ "$DB" = postgres ]; then
    psql -h 127.0.0.1 -U postgres -d test -qc "DROP DATABASE IF EXISTS $NAME" >/dev/null || true
  fi
}
trap cleanup EXIT
serve() {
  CONFAB_RATE_LIMIT_ENABLED=false ./target/release/confab serve --bind 127.0.0.1:$PORT >>"$DIR/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 6000); do
    curl -sf localhost:$PORT/healthz >/dev/null && return
    kill -0 $SERVER 2>/dev/null || { echo "server exited; see $DIR/serve.log:" >&2; tail -3 "$DIR/serve.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "server did not start; see $DIR/serve.log" >&2; exit 1
}
stop() { kill $SERVER; wait $SERVER 2>/dev/null || true; }

if [ -z "${REUSE:-}" ]; then
serve
echo "signing up $USERS users through the API..."
seq 1 "$USERS" | xargs -P 4 -I{} curl -sf -X POST localhost:$PORT/api/auth/signup \
  -H 'content-type: application/json' \
  -d '{"email":"user{}@example.com","password":"benchmark password","name":"User {}"}' \
  -o "$DIR/signup-{}.json"
python3 - "$DIR" "$USERS" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
users = [json.load(open(f"{d}/signup-{i}.json")) for i in range(1, n + 1)]
open(f"{d}/users.txt", "w").write("".join(u["user"]["id"] + "\n" for u in users))
open(f"{d}/tokens.lua", "w").write(
    "tokens = {" + ",".join('"%s"' % u["token"] for u in users) + "}\n")
PY
stop
echo "seeding $USERS x $CHATS chats x $PER_CHAT messages into the event log..."
./target/release/examples/seed_messages "$DIR/users.txt" "$CHATS" "$PER_CHAT" >"$DIR/words.txt"
fi
WORDS=$(cat "$DIR/words.txt")
echo "$WORDS"
read -r COMMON MIDDLE1 MIDDLE2 RARE <<<"$(echo "$WORDS" | sed 's/[a-z]*=//g')"
echo "restarting: the projections build the read models from the log before serving..."
T0=$(date +%s.%N)
serve
T1=$(date +%s.%N)
echo "catch-up and start: $(python3 -c "print(round($T1 - $T0, 1))") s"

# Queries: one very common word (many matches per user, ranking does real work), two middling
# words in reversed order and mixed case, a rare word, and a common word spelled with accents.
ACCENTED=$(echo "$COMMON" | sed 's/a/á/; s/e/é/; s/o/ó/')
python3 - "$DIR" "$COMMON" "$MIDDLE1" "$MIDDLE2" "$RARE" "$ACCENTED" <<'PY'
import sys, urllib.parse
d, common, m1, m2, rare, accented = sys.argv[1:]
queries = [common, f"{m2.upper()} {m1.capitalize()}", rare, accented, f"{m1} {m2}"]
lua = open(f"{d}/tokens.lua").read()
lua += "queries = {" + ",".join('"%s"' % urllib.parse.quote(q) for q in queries) + "}\n"
lua += """
math.randomseed(42)
request = function()
  local t = tokens[math.random(#tokens)]
  local q = queries[math.random(#queries)]
  return wrk.format("GET", "/api/messages/search?q=" .. q .. "&limit=20",
    { ["Authorization"] = "Bearer " .. t })
end
"""
open(f"{d}/search.lua", "w").write(lua)
PY
TOKEN=$(python3 -c "import re,sys; print(re.findall(r'\"([^\"]+)\"', open('$DIR/tokens.lua').read())[0])")
echo "sample: '$COMMON' matches $(curl -sf "localhost:$PORT/api/messages/search?q=$COMMON&limit=1" -H "authorization: Bearer $TOKEN" | python3 -c 'import sys,json; print(json.load(sys.stdin)["total"])') of user 1's messages"
for C in 4 32; do
  echo "## GET /api/messages/search, $DB, $C connections, $DUR"
  wrk -t2 -c$C -d"$DUR" --latency -s "$DIR/search.lua" "http://127.0.0.1:$PORT" \
    | grep -E "Requests/sec|Latency  |50%|90%|99%|Non-2xx"
done
