#!/usr/bin/env bash
# Chat throughput with one and with two `instar social` processes, in the same run (docs/benchmarks.md,
# "Chat work over several `instar social` processes"). Starts PRIVATE RabbitMQ, Redis and MariaDB
# (scripts/bench/private_services.sh), then ROUNDS pairs of runs alternating one and two social
# processes, each on a fresh seeded database behind one `instar gateway`, each driven by
# `loadtest chat` at a send rate above what the deployment can take, so the delivery rate measures
# its capacity. Prints each run, the split of commands between the processes, and the ratio.
#
#   scripts/bench/social_scale.sh [RATE] [DURATION] [ROUNDS]      # defaults: 4000 15 2
#
# Build first: cargo build --release -p instar -p loadtest (BENCH_BIN=DIR takes the binaries from
# DIR). Reports go to $OUT (default /tmp/instar-social-scale-<pid>).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${BENCH_BIN:-$ROOT/target/release}"
RATE=${1:-4000}
DURATION=${2:-15}
ROUNDS=${3:-2}
ROOMS=${ROOMS:-100}
secret="scale-bench-secret-scale-bench-secret!"
W=$(mktemp -d /tmp/instar-social-scale.XXXXXX)
chmod 755 "$W"
OUT=${OUT:-/tmp/instar-social-scale-$$}
mkdir -p "$OUT"
BENCH_NAME=socialscale
source "$ROOT/scripts/bench/private_services.sh"
ulimit -n 20000 2>/dev/null || true

handled() { # port: commands this social process handled
  curl -fs "http://127.0.0.1:$1/metrics" | awk '$1 == "instar_bus_commands_handled_total" {print $2}'
}

run=0
for round in $(seq "$ROUNDS"); do
  for socials in 1 2; do
    run=$((run + 1))
    db="scale_$$_$run"
    "${M[@]}" -e "CREATE DATABASE $db CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    url="mysql://bench:bench@127.0.0.1:$MP/$db"
    common=(env INSTAR_AMQP_URL="amqp://guest:guest@127.0.0.1:$AP/%2f"
      INSTAR_REDIS_URL="redis://127.0.0.1:$RP" INSTAR_BUS_PREFIX="scale$$r$run"
      INSTAR_JWT_SECRET="$secret" INSTAR_DATABASE_URL="$url" INSTAR_TCP_LISTEN=off
      INSTAR_LOG="${INSTAR_LOG:-warn}" INSTAR_SEND_RATE=0 INSTAR_DATA_DIR="$W/data")
    sp=()
    for n in $(seq "$socials"); do
      p=$(free_port)
      "${common[@]}" INSTAR_LISTEN="127.0.0.1:$p" INSTAR_PUBLIC_URL="http://127.0.0.1:$p" \
        "$BIN/instar" social 2>>"$OUT/run$run.social-$n.log" &
      pids+=($!)
      sp+=("$p")
      # The first one migrates the fresh database before the others start.
      [ "$n" = 1 ] && wait_port 127.0.0.1 "$p" 60
    done
    gp=$(free_port)
    "${common[@]}" INSTAR_NODE_ID="gw" INSTAR_LISTEN="127.0.0.1:$gp" "$BIN/instar" gateway \
      2>>"$OUT/run$run.gw.log" &
    pids+=($!)
    for p in "$gp" "${sp[@]}"; do wait_port 127.0.0.1 "$p" 60; done
    "${M[@]}" "$db" <"$ROOT/scripts/bench/seed_chat.mysql.sql"
    # Let the workers' leases settle so the shards are split before the load starts.
    sleep 3
    log "run $run: $socials social process(es), $RATE msg/s offered for $DURATION s"
    "$BIN/loadtest" chat --url "ws://127.0.0.1:$gp/stomp" --api "http://127.0.0.1:${sp[0]}" \
      --jwt-secret "$secret" --rooms "$ROOMS" --rate "$RATE" --duration "$DURATION" \
      --max-messages 1000000 --quiet --json "$OUT/run$run.json" >"$OUT/run$run.txt"
    split=""
    for p in "${sp[@]}"; do split="$split $(handled "$p")"; done
    echo "$socials $split" >"$OUT/run$run.split"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
    "${M[@]}" -e "DROP DATABASE IF EXISTS $db" || true
  done
done

python3 - "$OUT" "$run" <<'PY'
import json, sys
out, runs = sys.argv[1], int(sys.argv[2])
print("| run | social processes | offered msg/s | sent msg/s | delivered/s | p50 ms | p99 ms | commands handled per process |")
print("|---|---|---|---|---|---|---|---|")
by = {1: [], 2: []}
for i in range(1, runs + 1):
    r = json.load(open(f"{out}/run{i}.json"))
    t = r["throughput"]
    n, *split = open(f"{out}/run{i}.split").read().split()
    lat = r.get("latency") or {}
    ms = lambda k: f"{lat[k]:.1f}" if isinstance(lat.get(k), (int, float)) else "?"
    by[int(n)].append(t["deliveries_per_second"])
    print(f"| {i} | {n} | {t['target_publish_rate']:.0f} | {t['publish_rate']:.0f} "
          f"| {t['deliveries_per_second']:.0f} | {ms('p50_ms')} | {ms('p99_ms')} | {' / '.join(split)} |")
a, b = sum(by[1]) / len(by[1]), sum(by[2]) / len(by[2])
print(f"\nmean delivered/s: one process {a:.0f}, two processes {b:.0f}: ratio {b / a:.2f}")
PY
