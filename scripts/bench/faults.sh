#!/usr/bin/env bash
# The fault table of docs/benchmarks.md. Starts PRIVATE RabbitMQ, Redis and MariaDB instances on
# free ports under a scratch directory (never the machine's own services), then for each fault a
# fresh scale-out deployment on them (two `instar gateway` nodes, two `instar social` processes,
# a new database seeded with scripts/bench/seed_chat.mysql.sql) and one `loadtest faults` run
# that injects the fault FAULT_AT seconds in:
#
#   none        no fault (the baseline of the same run)
#   gateway     SIGKILL of gateway node A (its clients fail over to node B)
#   social      SIGKILL of social process A (B takes its command shards)
#   rabbitmq    RabbitMQ stopped and started again (stop_app / start_app: every connection is cut,
#               durable queues survive)
#   redis       Redis shut down without saving and started again, empty
#   mariadb     MariaDB shut down and started again
#   mariadb-long  MariaDB shut down, started again 15 s later (longer than the bus's handler
#               retries once were)
#
#   scripts/bench/faults.sh [RATE] [DURATION] [FAULT_AT] [FAULTS...]
#   e.g. scripts/bench/faults.sh 500 35 10                       # the whole table
#        scripts/bench/faults.sh 200 20 6 none redis             # two runs
#
# Build first: cargo build --release -p instar -p loadtest (BENCH_BIN=DIR takes the binaries from
# DIR). Needs redis-server, mariadb-install-db/mariadbd and rabbitmq-server (run as the rabbitmq
# user, as scripts/test installs them). Reports go to $OUT (default /tmp/instar-faults-<pid>).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${BENCH_BIN:-$ROOT/target/release}"
RATE=${1:-500}
DURATION=${2:-35}
FAULT_AT=${3:-10}
shift $(($# < 3 ? $# : 3))
FAULTS=("$@")
[ ${#FAULTS[@]} -eq 0 ] && FAULTS=(none gateway social rabbitmq redis mariadb)
ROOMS=${ROOMS:-50}
# Senders per room (1 or 2: with 2 both members of each DM send, from sessions on the two
# gateways, and the report counts messages delivered out of message-id order).
SENDERS=${SENDERS:-1}
secret="faults-bench-secret-faults-bench-secret"
W=$(mktemp -d /tmp/instar-faults.XXXXXX)
chmod 755 "$W"
OUT=${OUT:-/tmp/instar-faults-$$}
mkdir -p "$OUT"
BENCH_NAME=faults
source "$ROOT/scripts/bench/private_services.sh"

# The fault commands (run by loadtest through sh at FAULT_AT).
cat >"$W/fault.sh" <<EOF
#!/usr/bin/env bash
set -u
case "\$1" in
  none) ;;
  gateway) kill -9 "\$(cat $W/gw-a.pid)" ;;
  social) kill -9 "\$(cat $W/social-a.pid)" ;;
  rabbitmq)
    su rabbitmq -s /bin/bash -c "HOME=/var/lib/rabbitmq rabbitmqctl -n $NODE stop_app" >/dev/null
    su rabbitmq -s /bin/bash -c "HOME=/var/lib/rabbitmq rabbitmqctl -n $NODE start_app" >/dev/null ;;
  redis)
    redis-cli -p $RP shutdown nosave >/dev/null 2>&1
    redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no --dir $W/redis \
      --daemonize yes --pidfile $W/redis/redis.pid --logfile $W/redis/redis.log ;;
  mariadb)
    mariadb --no-defaults -S $MSOCK -u root -e SHUTDOWN
    while [ -e $W/mysql/mysqld.pid ]; do sleep 0.1; done
    (mariadbd --no-defaults --datadir=$W/mysql/data --port=$MP --bind-address=127.0.0.1 \
      --socket=$MSOCK --pid-file=$W/mysql/mysqld.pid --user=$(id -un) \
      --innodb-buffer-pool-size=256M --log-error=$W/mysql/error.log >/dev/null 2>&1 &) ;;
  mariadb-long)
    mariadb --no-defaults -S $MSOCK -u root -e SHUTDOWN
    while [ -e $W/mysql/mysqld.pid ]; do sleep 0.1; done
    sleep 15
    (mariadbd --no-defaults --datadir=$W/mysql/data --port=$MP --bind-address=127.0.0.1 \
      --socket=$MSOCK --pid-file=$W/mysql/mysqld.pid --user=$(id -un) \
      --innodb-buffer-pool-size=256M --log-error=$W/mysql/error.log >/dev/null 2>&1 &) ;;
  *) echo "unknown fault \$1" >&2; exit 2 ;;
esac
EOF
chmod +x "$W/fault.sh"

ulimit -n 20000 2>/dev/null || true
for fault in "${FAULTS[@]}"; do
  db="faults_$$_${fault//-/_}"
  "${M[@]}" -e "CREATE DATABASE $db CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  url="mysql://bench:bench@127.0.0.1:$MP/$db"
  prefix="faults$$${fault//-/}"
  common=(env INSTAR_AMQP_URL="amqp://guest:guest@127.0.0.1:$AP/%2f"
    INSTAR_REDIS_URL="redis://127.0.0.1:$RP" INSTAR_BUS_PREFIX="$prefix"
    INSTAR_JWT_SECRET="$secret" INSTAR_DATABASE_URL="$url" INSTAR_TCP_LISTEN=off
    INSTAR_LOG="${INSTAR_LOG:-warn}" INSTAR_SEND_RATE=0 INSTAR_DATA_DIR="$W/data")
  run=()
  # Social process a first: it migrates the fresh database (builds before 276baf9 had no working
  # migration lock on MariaDB, so processes started together could fail).
  social_ports=()
  for n in a b; do
    p=$(free_port)
    "${common[@]}" INSTAR_LISTEN="127.0.0.1:$p" INSTAR_PUBLIC_URL="http://127.0.0.1:$p" \
      "$BIN/instar" social 2>>"$OUT/$fault.social-$n.log" &
    echo $! >"$W/social-$n.pid"
    pids+=($!)
    social_ports+=("$p")
    [ "$n" = a ] && wait_port 127.0.0.1 "$p" 60
  done
  gw_ports=()
  for n in a b; do
    p=$(free_port)
    "${common[@]}" INSTAR_NODE_ID="gw$n" INSTAR_LISTEN="127.0.0.1:$p" "$BIN/instar" gateway \
      2>>"$OUT/$fault.gw-$n.log" &
    echo $! >"$W/gw-$n.pid"
    pids+=($!)
    gw_ports+=("$p")
  done
  for p in "${gw_ports[@]}" "${social_ports[@]}"; do wait_port 127.0.0.1 "$p" 60; done
  "${M[@]}" "$db" <"$ROOT/scripts/bench/seed_chat.mysql.sql"
  log "$fault: ${RATE} msg/s for ${DURATION} s, fault at ${FAULT_AT} s"
  "$BIN/loadtest" faults --url "ws://127.0.0.1:${gw_ports[0]}/stomp" \
    --url "ws://127.0.0.1:${gw_ports[1]}/stomp" --api "http://127.0.0.1:${social_ports[1]}" \
    --jwt-secret "$secret" --rooms "$ROOMS" --senders-per-room "$SENDERS" --rate "$RATE" --duration "$DURATION" \
    --database-url "$url" --fault "$FAULT_AT:$W/fault.sh $fault" --quiet \
    --json "$OUT/$fault.json" | tee "$OUT/$fault.txt"
  for f in gw-a gw-b social-a social-b; do kill "$(cat "$W/$f.pid")" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
  "${M[@]}" -e "DROP DATABASE IF EXISTS $db" || true
done

# The table (docs/benchmarks.md).
python3 - "$OUT" "${FAULTS[@]}" <<'EOF'
import json, sys
out, faults = sys.argv[1], sys.argv[2:]
print("| fault | attempted | accepted | stored | delivered | lost | stored twice | duplicated | out of id order | not sent / unanswered | s until accepting | s until delivering |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for f in faults:
    r = json.load(open(f"{out}/{f}.json"))
    t = r["faults"]["tally"]
    o = (r["faults"]["faults"] or [{}])[0]
    s = lambda v: "never" if v is None else f"{v:.2f}"
    print(f"| {f} | {t['attempted']} | {t['accepted']} | {t['stored']} | {t['delivered']} | {t['lost']} "
          f"| {t['stored_twice']} | {t['duplicated']} | {r['faults'].get('out_of_order', '-')} "
          f"| {t['not_sent']} / {t['unanswered']} "
          f"| {s(o.get('accepting_again_s'))} | {s(o.get('delivering_again_s'))} |")
EOF
