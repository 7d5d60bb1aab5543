# Sourced by the scale-out benchmarks (faults.sh, social_scale.sh): starts PRIVATE Redis, MariaDB
# and RabbitMQ instances on free ports under the scratch directory $W (never the machine's own
# services) and defines RP, MP, MSOCK, M (a mariadb client as root), AP, NODE, rabbitmqctl,
# free_port, wait_port and log, plus a cleanup trap that stops them and removes $W. The caller
# sets W (a directory) and BENCH_NAME (the log prefix) first, and may append pids to `pids`.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
log() { echo "[${BENCH_NAME:-bench} $(date -u +%H:%M:%S)] $*" >&2; }
wait_port() { # host port seconds
  for _ in $(seq $(($3 * 5))); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "nothing answers on $1:$2" >&2
  return 1
}

# ---- private Redis ----------------------------------------------------------------------------
RP=$(free_port)
mkdir -p "$W/redis"
redis_start() {
  redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --dir "$W/redis" \
    --daemonize yes --pidfile "$W/redis/redis.pid" --logfile "$W/redis/redis.log"
  wait_port 127.0.0.1 "$RP" 20
}
redis_start

# ---- private MariaDB --------------------------------------------------------------------------
MP=$(free_port)
MSOCK="$W/mysql/mysql.sock"
mkdir -p "$W/mysql"
mariadb-install-db --no-defaults --datadir="$W/mysql/data" --user="$(id -un)" \
  --auth-root-authentication-method=normal >"$W/mysql/install.log" 2>&1
mariadb_start() {
  mariadbd --no-defaults --datadir="$W/mysql/data" --port="$MP" --bind-address=127.0.0.1 \
    --socket="$MSOCK" --pid-file="$W/mysql/mysqld.pid" --user="$(id -un)" \
    --innodb-buffer-pool-size=256M --log-error="$W/mysql/error.log" &
  wait_port 127.0.0.1 "$MP" 60
}
mariadb_start
M=(mariadb --no-defaults -S "$MSOCK" -u root)
"${M[@]}" -e "CREATE USER IF NOT EXISTS 'bench'@'127.0.0.1' IDENTIFIED BY 'bench';
              GRANT ALL ON *.* TO 'bench'@'127.0.0.1';"

# ---- private RabbitMQ -------------------------------------------------------------------------
AP=$(free_port)
NODE="${BENCH_NAME:-bench}$$@localhost"
mkdir -p "$W/rabbit/mnesia" "$W/rabbit/log"
printf '%s\n' "listeners.tcp.local = 127.0.0.1:$AP" 'loopback_users.guest = false' \
  >"$W/rabbit/rabbitmq.conf"
echo '[].' >"$W/rabbit/enabled_plugins"
chown -R rabbitmq:rabbitmq "$W/rabbit"
rabbit_env="HOME=/var/lib/rabbitmq RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_PORT=$AP \
  RABBITMQ_DIST_PORT=$(free_port) RABBITMQ_CONFIG_FILE=$W/rabbit/rabbitmq.conf \
  RABBITMQ_ENABLED_PLUGINS_FILE=$W/rabbit/enabled_plugins RABBITMQ_MNESIA_BASE=$W/rabbit/mnesia \
  RABBITMQ_LOG_BASE=$W/rabbit/log"
su rabbitmq -s /bin/bash -c "$rabbit_env /usr/lib/rabbitmq/bin/rabbitmq-server" \
  >"$W/rabbit/stdout.log" 2>&1 &
wait_port 127.0.0.1 "$AP" 120
rabbitmqctl() { su rabbitmq -s /bin/bash -c "HOME=/var/lib/rabbitmq rabbitmqctl -n $NODE $*"; }
rabbitmqctl await_startup >/dev/null

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Only our processes: a bare `wait` would also wait for the RabbitMQ server, stopped below.
  if [ ${#pids[@]} -gt 0 ]; then wait "${pids[@]}" 2>/dev/null || true; fi
  rabbitmqctl stop >/dev/null 2>&1 || true
  redis-cli -p "$RP" shutdown nosave >/dev/null 2>&1 || true
  "${M[@]}" -e "SHUTDOWN" >/dev/null 2>&1 || true
  sleep 1
  # A server a fault restarted is not among `pids`: stop it by its pid file too.
  [ -e "$W/mysql/mysqld.pid" ] && kill "$(cat "$W/mysql/mysqld.pid")" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

