#!/usr/bin/env bash
# The personalised feed's benchmark (docs/benchmarks.md, "Personalised feed"): seeds 10,000 users,
# 100,000 posts and about 1,000,000 likes, comments and views (seed_feed.*.sql), then runs
# feed_bench.py: the full recompute's time and peak memory, the cost of an interaction, the time
# from an interaction to the feed that shows it, and (embedded only) cached-mode GET /api/feed
# next to a bare warp hello world.
#
#   scripts/bench/feed.sh sqlite          # embedded: instar serve, SQLite, state in process
#   scripts/bench/feed.sh mysql           # scale-out: instar social, MariaDB, state in Redis
#
# Environment: BIN (default target/release/instar), HELLO (default
# target/release/examples/hello_warp), MYSQL_URL (mysql://USER:PASS@HOST:PORT, for mysql),
# REDIS_URL (default redis://127.0.0.1:6379), AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
# ROUNDS and SECONDS_PER_ROUND of the req/s rounds (3 and 3). Ports 18180 and 18190 must be free.
# Build first: cargo build --release -p instar && cargo build --release -p social --example hello_warp
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN=${BIN:-$ROOT/target/release/instar}
HELLO=${HELLO:-$ROOT/target/release/examples/hello_warp}
MODE=${1:-sqlite}
if [ "$MODE" = sqlite ] && ! command -v wrk >/dev/null; then
  echo "wrk is missing (the cached-mode req/s rounds need it): apt-get install wrk" >&2
  exit 2
fi
SECRET=bench-secret-bench-secret-bench-secret
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
work=$(mktemp -d /tmp/instar-feed-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_up() { for _ in $(seq 600); do curl -fs "http://127.0.0.1:18180/health" -o /dev/null && return; sleep 0.1; done; echo "server did not start" >&2; exit 1; }
common=(INSTAR_LISTEN=127.0.0.1:18180 INSTAR_JWT_SECRET=$SECRET INSTAR_FEED_RECOMPUTE_AT=off
        INSTAR_READ_CACHE_ENTRIES=250000 INSTAR_READ_CACHE_TTL_SECS=3600 INSTAR_LOG=warn
        INSTAR_HTTP_IDLE_TIMEOUT_SECS=3600)
# (The idle timeout is raised for builds before d2d6f9b, which counted the synchronous
# run_scheduler's own work against it and cut the recompute's request after 120 s.)
case "$MODE" in
  sqlite)
    env "${common[@]}" INSTAR_DATA_DIR="$work" INSTAR_TCP_LISTEN=off "$BIN" serve 2>"$work/migrate.log" &
    p=$!; wait_up; kill $p; wait $p 2>/dev/null || true
    s=$(date +%s.%N)
    sqlite3 "$work/instar.db" < "$ROOT/scripts/bench/seed_feed.sqlite.sql"
    echo "seeded in $(echo "$(date +%s.%N) - $s" | bc) s"
    env "${common[@]}" INSTAR_DATA_DIR="$work" INSTAR_TCP_LISTEN=off "$BIN" serve 2>"$work/serve.log" &
    pid=$!; pids+=($pid); wait_up
    "$HELLO" 127.0.0.1:18190 >/dev/null 2>&1 &
    pids+=($!)
    python3 "$ROOT/scripts/bench/feed_bench.py" --base http://127.0.0.1:18180 --pid "$pid" --secret "$SECRET" \
      --hello http://127.0.0.1:18190/hello --rounds "${ROUNDS:-3}" --seconds "${SECONDS_PER_ROUND:-3}"
    ;;
  mysql)
    : "${MYSQL_URL:?set MYSQL_URL=mysql://USER:PASS@HOST:PORT}"
    db="benchfeed$$"
    read -r host port user pass < <(python3 -c 'import sys,urllib.parse as u; x=u.urlparse(sys.argv[1]); print(x.hostname, x.port or 3306, x.username or "root", x.password or "")' "$MYSQL_URL")
    my=(mariadb -h "$host" -P "$port" -u "$user")
    [ -n "$pass" ] && my+=(-p"$pass")
    "${my[@]}" -e "CREATE DATABASE $db"
    prefix="benchfeed$$:"
    scale=(INSTAR_DATABASE_URL="${MYSQL_URL%/}/$db" INSTAR_REDIS_URL="$REDIS_URL" INSTAR_REDIS_PREFIX="$prefix"
           INSTAR_AMQP_URL="$AMQP_URL" INSTAR_BUS_PREFIX="benchfeed$$" INSTAR_MEDIA_DIR="$work/media")
    env "${common[@]}" "${scale[@]}" "$BIN" social 2>"$work/migrate.log" &
    p=$!; wait_up; kill $p; wait $p 2>/dev/null || true
    s=$(date +%s.%N)
    "${my[@]}" "$db" < "$ROOT/scripts/bench/seed_feed.mysql.sql"
    echo "seeded in $(echo "$(date +%s.%N) - $s" | bc) s"
    env "${common[@]}" "${scale[@]}" "$BIN" social 2>"$work/social.log" &
    pid=$!; pids+=($pid); wait_up
    python3 "$ROOT/scripts/bench/feed_bench.py" --base http://127.0.0.1:18180 --pid "$pid" --secret "$SECRET" \
      --redis "$REDIS_URL"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    "${my[@]}" -e "DROP DATABASE $db"
    redis-cli -u "$REDIS_URL" --scan --pattern "${prefix}*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null
    ;;
  *) echo "usage: $0 sqlite|mysql" >&2; exit 2 ;;
esac
