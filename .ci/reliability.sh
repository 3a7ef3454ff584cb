#!/usr/bin/env bash
# The quick scenarios of the reliability suite (docs/reliability.md), on the debug binaries the
# test suite built: kill -9 under writers on both databases, a PostgreSQL crash, a Redis kill
# (fail-open and fail-closed), and a misbehaving LLM upstream on both databases. Each exits
# non-zero naming the invariant it saw broken. The 10-minute soak runs by hand.
#
#   bash .ci/reliability.sh            # builds what it needs first
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-features --bin confab --bin reliability
run() { echo; echo "== reliability $*"; target/debug/reliability --confab target/debug/confab "$@"; }
run kill9 --db sqlite --rounds 1
run kill9 --db postgres --rounds 1
run postgres-restart
run redis-kill --fail-open true
run redis-kill --fail-open false
run upstream --db sqlite
run upstream --db postgres
