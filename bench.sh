#!/usr/bin/env bash
# hedgehog's benchmark: hedgehog, nats-server and the ceiling program, measured in
# the same run on this machine, written to benches/RESULTS.md as ratios.
#
#   bash bench.sh            full run (under 20 minutes)
#   bash bench.sh --quick    daily development (under 2 minutes)
#   bash bench.sh --smoke    a few seconds, tiny sizes; CI runs it so the harness cannot rot
#
# Layout: every server (hedgehog with WEB_CONCURRENCY=1, nats-server, the ceiling)
# is pinned to core 0; the simulator, the NATS bridge and the load generator run on
# the other core(s). Everything targets loopback only, bounded in time and count.
set -euo pipefail
cd "$(dirname "$0")"
MODE=${1:---full}
case "$MODE" in --full|--quick|--smoke) ;; *) echo "usage: bash bench.sh [--quick|--smoke]" >&2; exit 2 ;; esac

SERVER_CORE=0
HOLD=0
LOAD_CORES=$(( $(nproc) > 1 ? 1 : 0 ))-$(( $(nproc) - 1 ))
SIM_PORT=${SIM_PORT:-18765}
HH_PORT=${HH_PORT:-18080}
NATS_PORT=${NATS_PORT:-14222}
NATS_WS_PORT=${NATS_WS_PORT:-14223}
CEIL_PORT=${CEIL_PORT:-19100}
WORK=$(mktemp -d /tmp/hedgehog-bench.XXXXXX)
RAW="$WORK/raw.jsonl"
: > "$RAW"
PIDS=()
trap 'stop_all; rm -rf "$WORK"' EXIT

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

install() {
  local missing=()
  command -v nats-server >/dev/null || missing+=(nats-server)
  command -v wrk >/dev/null || missing+=(wrk)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  log "building (release)"
  cargo build --release --quiet -p hedgehog -p hedgehog-loadgen
}

BIN=target/release
stop_all() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}

wait_port() { # host:port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.05
  done
  log "nothing listens on $1"; return 1
}

# A fresh third octet for each run's client source addresses, so ports left in
# TIME_WAIT by one run never starve the next.
OCTET=0
next_source() { OCTET=$(( OCTET % 250 + 1 )); echo "127.0.$OCTET"; }

start_sim() { # rate products [hold seconds]
  taskset -c "$LOAD_CORES" "$BIN/hedgehog" simulate --port "$SIM_PORT" --rate "$1" --products "$2" \
    --subscribe-timeout 0 --seed 1 --hold "${3:-0}" >"$WORK/sim.log" 2>&1 &
  PIDS+=($!)
  wait_port "127.0.0.1:$SIM_PORT"
}

# Starts TARGET's server for RATE msg/s per product over PRODUCTS; sets SERVER_PID, ADDR.
start_target() { # target rate products
  case "$1" in
    hedgehog)
      start_sim "$2" "$3" "$HOLD"
      # The load comes from a few 127.0.0.x addresses (up to 9,000 clients each) and
      # the idle step holds 19,000 connections: lift the per-address and total
      # connection budgets (a quarter and 95% of the file limit by default) to the
      # file limit itself, as an operator load-testing from few hosts would.
      WEB_CONCURRENCY=1 RUST_LOG=warn taskset -c "$SERVER_CORE" "$BIN/hedgehog" --host 127.0.0.1 --port "$HH_PORT" \
        --upstream-url "ws://127.0.0.1:$SIM_PORT" --max-connections-per-ip "$(ulimit -n)" --max-connections "$(ulimit -n)" \
        >"$WORK/hedgehog.log" 2>&1 &
      SERVER_PID=$!; PIDS+=($SERVER_PID); ADDR="127.0.0.1:$HH_PORT"
      ;;
    nats)
      start_sim "$2" "$3" "$HOLD"
      printf 'port: %s\nwebsocket { listen: "127.0.0.1:%s", no_tls: true }\n' "$NATS_PORT" "$NATS_WS_PORT" >"$WORK/nats.conf"
      taskset -c "$SERVER_CORE" nats-server -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
      SERVER_PID=$!; PIDS+=($SERVER_PID); ADDR="127.0.0.1:$NATS_WS_PORT"
      wait_port "127.0.0.1:$NATS_PORT"
      taskset -c "$LOAD_CORES" "$BIN/loadgen" bridge --sim "ws://127.0.0.1:$SIM_PORT" --nats "127.0.0.1:$NATS_PORT" \
        --products "$3" --channel matches >"$WORK/bridge.log" 2>&1 &
      PIDS+=($!)
      ;;
    ceiling)
      taskset -c "$SERVER_CORE" "$BIN/loadgen" ceiling --listen "127.0.0.1:$CEIL_PORT" --rate "$2" --products "$3" --hold "$HOLD" \
        >"$WORK/ceiling.log" 2>&1 &
      SERVER_PID=$!; PIDS+=($SERVER_PID); ADDR="127.0.0.1:$CEIL_PORT"
      ;;
  esac
  wait_port "$ADDR"
}

# One measured run; appends a JSON line tagged with the scenario to $RAW and
# leaves the loadgen's result in $WORK/last.json.
run() { # scenario target clients rate products subs extra-loadgen-args...
  local scenario=$1 target=$2 clients=$3 rate=$4 products=$5 subs=$6; shift 6
  start_target "$target" "$rate" "$products"
  local out
  if out=$(timeout 300 taskset -c "$LOAD_CORES" "$BIN/loadgen" clients --target "$target" --addr "$ADDR" --clients "$clients" \
      --products "$products" --subs "$subs" --channel matches --server-pid "$SERVER_PID" --server-core "$SERVER_CORE" \
      --source "$(next_source)" --warmup "$WARMUP" --duration "$DURATION" "$@" 2>>"$WORK/loadgen.log"); then
    printf '{"scenario":"%s","target":"%s","rate":%s,"subs":%s,"result":%s}\n' "$scenario" "$target" "$rate" "$subs" "$out" >>"$RAW"
  else
    log "$scenario/$target/$clients/$rate failed: $(tail -1 "$WORK/loadgen.log")"
    out='{}'
  fi
  stop_all
  echo "$out" >"$WORK/last.json"
}

# True when a run kept up: zero loss, p99 under 100 ms, loadgen not saturated.
kept_up() {
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r.get("ready",0)>0 and r.get("lost",1)==0 and r.get("errors",1)==0 and r.get("p99_ms",1e9)<100 and not r.get("loadgen_saturated") and r.get("deliveries",0)>0 else 1)' "$1"
}

fanout() {
  local clients rate target
  for clients in $FANOUT_CLIENTS; do
    for target in hedgehog nats ceiling; do
      for rate in $FANOUT_RATES; do
        log "fan-out: $target, $clients clients, $rate msg/s"
        run fanout "$target" "$clients" "$rate" BTC-USD 1
        kept_up "$(cat "$WORK/last.json")" || break
      done
    done
  done
}

market_mix() {
  local products target
  products=$(python3 -c 'print(",".join("C%02d-USD" % i for i in range(50)))')
  # 1.2 million deliveries a second are asked of one core: every server falls
  # behind, and clients subscribing during the flood would wait behind it. So the
  # simulator holds trading until all have subscribed, and the window starts after.
  HOLD=$MIX_HOLD
  for target in hedgehog nats ceiling; do
    log "market mix: $target, $MIX_CLIENTS clients x 3 of 50 products (Zipf), 2,000 msg/s in total"
    run mix "$target" "$MIX_CLIENTS" 40 "$products" 3 --zipf 1.0 --warmup "$MIX_HOLD"
  done
  HOLD=0
}

# Connections that only connect and get greeted: idle capacity (RSS per connection)
# and the connect storm (time to greet them all) are the same run at two sizes.
connect_only() { # scenario clients what
  local target
  for target in hedgehog nats ceiling; do
    log "$3: $target, $2 connections"
    run "$1" "$target" "$2" 1 BTC-USD 1 --idle --warmup 0 --duration 0.5
  done
}
idle() { connect_only idle "$IDLE_CLIENTS" "idle capacity"; }
storm() { connect_only storm "$STORM_CLIENTS" "connect storm"; }

rest() {
  start_target hedgehog 1 BTC-USD
  taskset -c "$LOAD_CORES" "$BIN/loadgen" client-id --addr "$ADDR" >"$WORK/id" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 1 100); do [ -s "$WORK/id" ] && break; sleep 0.05; done
  local id method
  id=$(head -1 "$WORK/id")
  for method in POST DELETE; do
    log "REST: wrk $method /api/v1/subscribe/BTC-USD"
    printf 'wrk.method = "%s"\nwrk.headers["X-Client-Id"] = "%s"\n' "$method" "$id" >"$WORK/$method.lua"
    taskset -c "$LOAD_CORES" wrk -t1 -c16 -d"${REST_SECONDS}s" --latency -s "$WORK/$method.lua" \
      "http://$ADDR/api/v1/subscribe/BTC-USD" >"$WORK/wrk-$method.txt" 2>&1 || true
    python3 - "$WORK/wrk-$method.txt" "$method" >>"$RAW" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", text, re.M)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(json.dumps({"scenario": "rest", "target": "hedgehog", "method": sys.argv[2], "result": {
    "rps": float(rps.group(1)) if rps else 0.0,
    "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else None,
    "non_2xx": int(non2xx.group(1)) if non2xx else 0}}))
PY
  done
  stop_all
}

micro() {
  log "micro-benchmarks (criterion)"
  if [ "$MODE" = --smoke ]; then
    cargo bench --quiet --bench micro -- --test >"$WORK/micro.txt" 2>&1
    echo '{"scenario":"micro","target":"hedgehog","result":{"ready":1,"smoke":true}}' >>"$RAW"
    return
  fi
  cargo bench --quiet --bench micro -- --warm-up-time 1 --measurement-time 3 >"$WORK/micro.txt" 2>&1
  python3 - "$WORK/micro.txt" >>"$RAW" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
for name, mid, unit in re.findall(r"^(\S[^\n]*?)\s*\n?\s+time:\s+\[[\d.]+ \S+ ([\d.]+) (\S+) [\d.]+ \S+\]", text, re.M):
    ns = float(mid) * {"ps": 0.001, "ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}[unit]
    print(json.dumps({"scenario": "micro", "target": "hedgehog", "name": name.strip(), "result": {"ns": ns}}))
PY
}

case "$MODE" in
  --smoke)
    WARMUP=0.2; DURATION=0.5; FANOUT_CLIENTS="20"; FANOUT_RATES="10"; MIX_CLIENTS=30; MIX_HOLD=1; IDLE_CLIENTS=50; STORM_CLIENTS=50; REST_SECONDS=1 ;;
  --quick)
    WARMUP=1; DURATION=2; FANOUT_CLIENTS="1000"; FANOUT_RATES="10 50 200 800"; MIX_CLIENTS=2000; MIX_HOLD=6; IDLE_CLIENTS=5000; STORM_CLIENTS=2000; REST_SECONDS=3 ;;
  --full)
    WARMUP=1; DURATION=4; FANOUT_CLIENTS="1000 5000 15000"; FANOUT_RATES="10 50 100 200 400 800 1600"; MIX_CLIENTS=10000; MIX_HOLD=15; IDLE_CLIENTS=19000; STORM_CLIENTS=10000; REST_SECONDS=8 ;;
esac

started=$(date +%s)
install
fanout
market_mix
idle
storm
rest
micro
elapsed=$(( $(date +%s) - started ))
if [ "$MODE" = --smoke ]; then
  python3 benches/report.py "$RAW" "$MODE" "$elapsed" >"$WORK/RESULTS.md"
  python3 benches/report.py --check "$RAW"
  log "smoke run passed in ${elapsed}s (results not written)"
else
  python3 benches/report.py "$RAW" "$MODE" "$elapsed" >benches/RESULTS.md
  cp "$RAW" benches/raw-latest.jsonl
  cat benches/RESULTS.md
  log "wrote benches/RESULTS.md in ${elapsed}s"
fi
