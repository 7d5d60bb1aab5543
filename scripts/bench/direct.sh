#!/usr/bin/env bash
# The scale-out benchmark of docs/benchmarks.md: two `instar gateway` nodes (release) on RabbitMQ and
# Redis, nginx in front with two entry points that each prefer one node, then `loadtest direct` with
# the given arguments, so that every pair's sender and receiver sit on different nodes and every
# frame goes through nginx.
#
#   scripts/bench/direct.sh [LOADTEST DIRECT ARGS...]     e.g. -p 1000 --rate 4000 --duration 10
#
# Environment: INSTAR_AMQP_URL, INSTAR_REDIS_URL (local defaults), BIN (the instar binary,
# default target/release/instar). Ports 18000-18002 (nginx) and 18081-18082 (nodes) must be free.
# Each run uses its own bus prefix (bench<pid>). Build first: cargo build --release -p instar -p loadtest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN=${BIN:-$ROOT/target/release/instar}
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
ulimit -n 20000 2>/dev/null || true
command -v nginx >/dev/null || { echo "direct.sh: nginx not found (apt-get install nginx)" >&2; exit 1; }
work=$(mktemp -d /tmp/instar-direct-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export INSTAR_AMQP_URL=${INSTAR_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export INSTAR_REDIS_URL=${INSTAR_REDIS_URL:-redis://127.0.0.1:6379}
for n in a:18081 b:18082; do
  INSTAR_BUS_PREFIX="bench$$" INSTAR_NODE_ID="gw${n%%:*}" INSTAR_LISTEN="127.0.0.1:${n##*:}" \
    INSTAR_JWT_SECRET=bench INSTAR_BENCH_ECHO=1 INSTAR_OUTBOUND_QUEUE=4096 INSTAR_SEND_RATE=0 INSTAR_LOG=warn \
    "$BIN" gateway 2>"$work/gw-${n%%:*}.log" &
  pids+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:${n##*:}/health" -o /dev/null && break; sleep 0.1; done
done
"$ROOT/deploy/nginx/render.sh" --standalone "$work/ngx" 127.0.0.1:18000 127.0.0.1:18081 127.0.0.1:18082 >/dev/null
cat >> "$work/ngx/instar.conf" <<'NGX'
upstream bench_a { server 127.0.0.1:18081; server 127.0.0.1:18082 backup; keepalive 32; }
upstream bench_b { server 127.0.0.1:18082; server 127.0.0.1:18081 backup; keepalive 32; }
server { listen 127.0.0.1:18001; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;
         proxy_set_header Connection $instar_connection; proxy_read_timeout 1h;
         location / { proxy_pass http://bench_a; } }
server { listen 127.0.0.1:18002; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;
         proxy_set_header Connection $instar_connection; proxy_read_timeout 1h;
         location / { proxy_pass http://bench_b; } }
NGX
nginx -p "$work/ngx" -c "$work/ngx/nginx.conf" &
pids+=($!)
for _ in $(seq 50); do curl -fs http://127.0.0.1:18001/health -o /dev/null && break; sleep 0.1; done
"$ROOT/target/release/loadtest" direct --url ws://127.0.0.1:18001/stomp --url ws://127.0.0.1:18002/stomp \
  --jwt-secret bench "$@"
for port in 18081 18082; do
  curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^instar_bus_(published|broker_messages|commands_handled)_total' |
    sed "s/^/node :$port  /" || true
done
