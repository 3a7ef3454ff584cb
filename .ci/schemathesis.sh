#!/usr/bin/env bash
# Runs schemathesis (`st run --checks all`) against `confab serve` on the embedded default,
# signed in, with local stand-ins for Stripe and the LLM provider: every operation of
# /openapi.json, positive and negative cases, stateful links. Fails on any failure.
#
#   bash .ci/schemathesis.sh [--max-examples N] [ST_RUN_OPTIONS...]
#
# e.g. `bash .ci/schemathesis.sh --max-examples 50 --include-path /api/profile/image` runs one
# operation (the sign-out run is skipped when options are given).
#
# Needs `pip install schemathesis` (CI installs it) and builds the binaries it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-25}
if [ "${1:-}" = "--max-examples" ]; then MAX_EXAMPLES=$2; shift 2; fi

cargo build --workspace --all-features --bins --quiet
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Starts a stand-in and reads the base URL it prints.
stand_in() {
  local name=$1 port; port=$(free_port)
  "$bin/$name" --port "$port" > "$work/$name.url" &
  pids+=($!)
  for _ in $(seq 1 50); do [ -s "$work/$name.url" ] && break; sleep 0.1; done
  head -n1 "$work/$name.url"
}
stripe_url=$(stand_in stripe-stand-in)
openai_url=$(stand_in openai-stand-in)

port=$(free_port)
export CONFAB_ST_BASE="http://127.0.0.1:$port"
export STRIPE_WEBHOOK_SECRET="whsec_schemathesis"
export CRON_SECRET="cron-schemathesis"
CONFAB_BIND="127.0.0.1:$port" \
CONFAB_RATE_LIMIT_ENABLED=false \
CONFAB_PUSHER_KEY=st-key CONFAB_PUSHER_SECRET=st-secret \
STRIPE_SECRET_KEY=sk_test_confab_4242 CONFAB_STRIPE_API_BASE="$stripe_url" \
OPENAI_BASE_URL="$openai_url" OPENAI_API_KEY=sk-stand-in \
ANTHROPIC_BASE_URL="$openai_url" ANTHROPIC_API_KEY=sk-stand-in \
  "$bin/confab" --config .ci/schemathesis/confab.toml --data-dir "$work/data" serve \
  > "$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "$CONFAB_ST_BASE/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "$CONFAB_ST_BASE/readyz" >/dev/null || { cat "$work/serve.log"; echo "confab serve did not start"; exit 1; }

token=$(curl -sf -X POST "$CONFAB_ST_BASE/api/auth/signup" -H 'content-type: application/json' \
  -d '{"email":"schemathesis@example.com","password":"password123","name":"Schemathesis"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# Sign-out ends the session it is called with, so it runs apart, each call with a session of
# its own (hooks.py), while every other operation shares one.
status=0
st_run() {
  PYTHONPATH=.ci/schemathesis SCHEMATHESIS_HOOKS=hooks st --config-file .ci/schemathesis/schemathesis.toml \
    run "$CONFAB_ST_BASE/openapi.json" --checks all --max-examples "$MAX_EXAMPLES" --seed 1 "$@"
}
if [ $# -gt 0 ]; then
  st_run -H "Authorization: Bearer $token" "$@" || status=$?
  exit "$status"
fi
st_run -H "Authorization: Bearer $token" --exclude-path /api/auth/signout || status=$?
other=$(curl -sf -X POST "$CONFAB_ST_BASE/api/auth/signup" -H 'content-type: application/json' \
  -d '{"email":"schemathesis-signout@example.com","password":"password123","name":"Signout"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
st_run -H "Authorization: Bearer $other" --include-path /api/auth/signout || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- server log (errors) ---"; grep -iE "error|panic" "$work/serve.log" | tail -n 40 || true
fi
exit "$status"
