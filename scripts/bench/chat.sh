#!/usr/bin/env bash
# The chat benchmark of docs/benchmarks.md: `instar serve` (release) on a fresh database, the
# chat00001.. members seeded, then `loadtest chat` with the given arguments.
#
#   scripts/bench/chat.sh sqlite [LOADTEST CHAT ARGS...]
#   scripts/bench/chat.sh mysql://user:pass@127.0.0.1:3306 [LOADTEST CHAT ARGS...]
#
# With a MySQL/MariaDB base URL a database named instar_bench_chat_<pid> is created and dropped.
# Build first: cargo build --release -p instar -p loadtest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# BENCH_BIN=DIR: take instar and loadtest from DIR (to compare two builds).
BIN="${BENCH_BIN:-$ROOT/target/release}"
db=${1:?usage: chat.sh sqlite|mysql://... [loadtest chat args]}
shift
secret="chat-bench-secret-chat-bench-secret!"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d /tmp/instar-chat-bench.XXXXXX)
export INSTAR_JWT_SECRET="$secret" INSTAR_DATA_DIR="$data" INSTAR_LISTEN="127.0.0.1:$port" \
  INSTAR_TCP_LISTEN=off INSTAR_LOG="${INSTAR_LOG:-warn}" INSTAR_SEND_RATE="${INSTAR_SEND_RATE:-0}"
dbname=""
if [ "$db" != sqlite ]; then
  dbname="instar_bench_chat_$$"
  hostport=${db#*@}; hostport=${hostport%%/*}
  creds=${db#mysql://}; creds=${creds%%@*}
  myargs=(-h "${hostport%%:*}" -P "${hostport##*:}" -u "${creds%%:*}" "-p${creds#*:}")
  mariadb "${myargs[@]}" -e "CREATE DATABASE $dbname CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  export INSTAR_DATABASE_URL="${db%/}/$dbname"
fi
dirty_pct=""
cleanup() {
  [ -n "$dirty_pct" ] && mariadb "${myargs[@]}" -e "SET GLOBAL innodb_max_dirty_pages_pct=$dirty_pct" || true
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -n "$dbname" ] && mariadb "${myargs[@]}" -e "DROP DATABASE IF EXISTS $dbname" || true
  rm -rf "$data"
}
trap cleanup EXIT
"$BIN/instar" serve &
pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/api/auth/checkId?id=x" -o /dev/null -X POST -H 'Content-Type: application/json' -d '{"id":"x"}' && break
  curl -fs "http://127.0.0.1:$port/ws/info" -o /dev/null && break
  sleep 0.2
done
if [ -z "$dbname" ]; then
  sqlite3 "$data/instar.db" < "$ROOT/scripts/bench/seed_chat.sqlite.sql"
else
  mariadb "${myargs[@]}" "$dbname" < "$ROOT/scripts/bench/seed_chat.mysql.sql"
fi
# FLUSH=1 (the default with MySQL/MariaDB; FLUSH=0 skips it): start from a checkpointed server.
# MariaDB 10.5+ does not flush dirty pages while idle, so the redo written by earlier runs stays
# in the log and each run starts closer to the point where InnoDB must flush during the run
# (its commits then stall for tens of ms); measured run after run, the figures drift upwards.
# The script lowers innodb_max_dirty_pages_pct to 0 until the buffer pool has no dirty page
# (at most 60 s; the instar user has the privilege in scripts/test's set-up) and sets it back.
myvar() { mariadb "${myargs[@]}" -N -e "SHOW GLOBAL STATUS LIKE '$1'" | awk '{print $2}'; }
if [ -n "$dbname" ] && [ "${FLUSH:-1}" = 1 ]; then
  dirty_pct=$(mariadb "${myargs[@]}" -N -e "SELECT @@innodb_max_dirty_pages_pct")
  age=$(myvar Innodb_checkpoint_age)
  mariadb "${myargs[@]}" -e "SET GLOBAL innodb_max_dirty_pages_pct=0"
  for _ in $(seq 120); do
    [ "$(myvar Innodb_buffer_pool_pages_dirty)" -le 0 ] && break
    sleep 0.5
  done
  mariadb "${myargs[@]}" -e "SET GLOBAL innodb_max_dirty_pages_pct=$dirty_pct"
  dirty_pct=""
  echo "mariadb: checkpoint age $age bytes before the flush, $(myvar Innodb_checkpoint_age) after"
fi
# A rough speed index of the machine just before the load: the same build's figures move with it
# (on this 2-core VM kind the loop below has taken from 210 to 370 ms on an idle machine).
speed=$(python3 -c 'import time
t = time.perf_counter(); s = 0
for i in range(3_000_000): s += i
print(round((time.perf_counter() - t) * 1000))')
echo "machine: a 3M-step Python loop took $speed ms (about 210 ms on a quiet machine of this kind)"
# SETTLE=N: wait N seconds before sending, so that a previous run's dropped database and page
# flushing are over (back-to-back runs on MariaDB see their commits stall; docs/benchmarks.md).
sleep "${SETTLE:-0}"
# RUNS=N: run the load N times against the same server and database (each run after the first
# finds the messages of the runs before it, as a service that has been up a while would).
for run in $(seq "${RUNS:-1}"); do
  [ "$run" -gt 1 ] && echo "== run $run of ${RUNS} (same server and database)" && sleep "${SETTLE:-0}"
  "$BIN/loadtest" chat --url "ws://127.0.0.1:$port/stomp" --jwt-secret "$secret" --pid "$pid" "$@"
done
# The writers' own view (cumulative over the runs): batches, their size, commit time and the wait
# of each batch's oldest send (docs/chat.md, "Metrics").
metrics=$(curl -fs "http://127.0.0.1:$port/metrics" || true)
metric() { echo "$metrics" | awk -v n="$1" '$1 == n {print $2}'; }
batches=$(metric instar_chat_batches_total)
if [ -n "$batches" ] && [ "$batches" != 0 ]; then
  python3 -c "b, m, c, w = $batches, $(metric instar_chat_messages_total), $(metric instar_chat_batch_commit_seconds_sum), $(metric instar_chat_batch_wait_seconds_sum)
print('writers      %d batches, %.1f messages a batch; per batch %.2f ms to commit, oldest send waited %.2f ms' % (b, m / b, c * 1e3 / b, w * 1e3 / b))"
fi
