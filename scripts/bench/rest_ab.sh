#!/usr/bin/env bash
# Two builds of `instar serve` side by side on the Social REST benchmark (docs/benchmarks.md,
# "Social REST"): one seeded SQLite database (scripts/bench/seed_social.sql) copied for each build,
# then ROUNDS rounds, each build in turn (A, B, A, B, ...), of wrk on GET /api/feed and on
# GET /api/post/get/details_info (random posts). Prints req/s and p99 per build and the ratio
# B/A. For "no slowdown" checks of a change against the build before it.
#
#   scripts/bench/rest_ab.sh DIR_A DIR_B [ROUNDS] [SECONDS]     # DIR_*: folders holding `instar`
#
# Needs sqlite3, wrk (apt install wrk) and python3. Port 18280 must be free.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
A=${1:?usage: rest_ab.sh DIR_A DIR_B [ROUNDS] [SECONDS]}
B=${2:?usage: rest_ab.sh DIR_A DIR_B [ROUNDS] [SECONDS]}
ROUNDS=${3:-3}
SECS=${4:-10}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
SECRET=bench-secret-bench-secret-bench-secret
PORT=18280
work=$(mktemp -d /tmp/instar-rest-ab.XXXXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
up() { for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/health" -o /dev/null && return; sleep 0.1; done; echo "server did not start" >&2; exit 1; }
serve() { # dir data
  INSTAR_DATA_DIR="$2" INSTAR_LISTEN="127.0.0.1:$PORT" INSTAR_TCP_LISTEN=off INSTAR_LOG=warn \
    INSTAR_JWT_SECRET=$SECRET INSTAR_FEED_RECOMPUTE_AT=off "$1/instar" serve 2>>"$work/serve.log" &
  pid=$!
  up
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
# Migrate with A (the older build: B applies anything newer at its start), seed, copy.
serve "$A" "$work/seed"
stop
sqlite3 "$work/seed/instar.db" < "$ROOT/scripts/bench/seed_social.sql"
sqlite3 "$work/seed/instar.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
cp -a "$work/seed" "$work/a"
cp -a "$work/seed" "$work/b"
T=$(python3 "$ROOT/scripts/bench/token.py" "$SECRET" user00001 7200)
rate() { awk '/Requests\/sec/ {print $2}'; }
p99() { awk '$1 == "99%" {print $2}'; }
: >"$work/results"
for round in $(seq "$ROUNDS"); do
  for build in a b; do
    dir=$A; [ "$build" = b ] && dir=$B
    serve "$dir" "$work/$build"
    # Warm the read cache and the page cache the same way for both.
    wrk -t2 -c64 -d2s -H "Authorization: Bearer $T" "http://127.0.0.1:$PORT/api/feed" >/dev/null
    f=$(wrk -t2 -c64 -d"${SECS}s" --latency -H "Authorization: Bearer $T" "http://127.0.0.1:$PORT/api/feed")
    d=$(wrk -t2 -c64 -d"${SECS}s" --latency -s "$ROOT/scripts/bench/details.lua" "http://127.0.0.1:$PORT" -- "$T")
    echo "$round $build feed $(echo "$f" | rate) $(echo "$f" | p99)" | tee -a "$work/results"
    echo "$round $build details $(echo "$d" | rate) $(echo "$d" | p99)" | tee -a "$work/results"
    stop
  done
done
python3 - "$work/results" "$A" "$B" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
print(f"\nA = {sys.argv[2]}\nB = {sys.argv[3]}")
print("| route | A req/s (rounds) | B req/s (rounds) | B/A (means) | A p99 | B p99 |")
print("|---|---|---|---|---|---|")
for route in ("feed", "details"):
    a = [float(r[3]) for r in rows if r[1] == "a" and r[2] == route]
    b = [float(r[3]) for r in rows if r[1] == "b" and r[2] == route]
    ap = " ".join(r[4] for r in rows if r[1] == "a" and r[2] == route)
    bp = " ".join(r[4] for r in rows if r[1] == "b" and r[2] == route)
    print(f"| {route} | {' / '.join(f'{x:.0f}' for x in a)} | {' / '.join(f'{x:.0f}' for x in b)} "
          f"| {statistics.mean(b) / statistics.mean(a):.3f} | {ap} | {bp} |")
PY
