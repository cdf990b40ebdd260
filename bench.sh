#!/usr/bin/env bash
# hedgehog's benchmark: hedgehog, nats-server and the ceiling program, measured in
# the same run on this machine, written to benches/RESULTS.md as ratios.
#
#   bash bench.sh            full run
#   bash bench.sh --quick    daily development (17 minutes on the 2-core machine on
#                            2026-12-01: a release build and criterion took 12 of them)
#   bash bench.sh --smoke    tiny sizes, under a minute of steps after the build; CI runs it
#                            so the harness cannot rot
#   bash bench.sh --quick --baseline REV    (or --full --baseline REV)
#                            also measure hedgehog as built from git revision REV
#                            ("hedgehog-baseline"), each run right beside hedgehog's;
#                            RESULTS.md gains hedgehog/baseline ratios
#   bash bench.sh --quick --feed FILE       (any mode) the market mix replays FILE, a
#                            capture of the real feed (README: Record and replay), looped,
#                            instead of the generated market
#   bash bench.sh --quick --only scale_out,idle
#                            (any mode) only these steps (of fanout, access, metrics,
#                            tls_step, scale_out, market_mix, idle, storm, rest, micro);
#                            the report goes to stdout with the raw lines after it, and
#                            benches/ is left alone
#
# Access control (issue 13): one fan-out step is run with access control off
# ("hedgehog") and on ("hedgehog-access", a key of a class allowing everything),
# taking turns, then by a throttled class ("hedgehog-throttled") on `ticker`;
# RESULTS.md's "Access control" section compares them.
#
# Metrics (issue 14): the same kind of fan-out step is run by "hedgehog" and by
# "hedgehog-scraped" (the same binary, with curl fetching GET /metrics once a
# second from the load cores for the whole run), taking turns; RESULTS.md's
# "Metrics scraping" section compares them and counts the scrapes answered 200.
#
# TLS (issue 15): the same kind of fan-out step is run by "hedgehog" (plain),
# "hedgehog-tls" (the same binary serving wss:// and https:// with --tls-cert and
# --tls-key), "nats" (plain) and "nats-tls" (TLS on its WebSocket listener), in
# rounds that rotate who goes first; the clients speak TLS 1.3 (loadgen --ca),
# trusting a test CA made for the run (`loadgen certs`). RESULTS.md's "TLS"
# section gives deliveries per CPU-second and the ratios TLS/plain and hedgehog/nats.
#
# Scale-out (issue 17): the same kind of fan-out step is run by "hedgehog" (one
# process) and by "cluster": a nats-server with JetStream, one ingest fed by the
# simulator, and two edges, the clients split between the edges; taking turns.
# Then both serve two clients following many products at a high message rate,
# which prices a message rather than a delivery. RESULTS.md's "Scale-out" section
# gives deliveries per CPU-second of the edges, the latency the NATS hop adds and
# the CPU per message of each process; ANALYSIS.md scales them to N machines.
#
# Layout: every server (hedgehog with WEB_CONCURRENCY=1, nats-server, the ceiling)
# is pinned to core 0; the simulator, the NATS bridge and the load generator run on
# the other core(s); the scale-out step's cluster is laid out in start_cluster.
# Everything targets loopback only, bounded in time and count.
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")"

STEPS="fanout access metrics tls_step scale_out market_mix idle storm rest micro"
usage() { echo "usage: bash bench.sh [--full|--quick|--smoke] [--baseline REV] [--feed FILE] [--only STEP,...]" >&2; exit 2; }
MODE=--full
BASELINE=
BASELINE_COMMIT=
FEED=
ONLY=
while [ $# -gt 0 ]; do
  case "$1" in
    --full|--quick|--smoke) MODE=$1 ;;
    --baseline) [ $# -ge 2 ] || usage; BASELINE=$2; shift ;;
    --baseline=*) BASELINE=${1#--baseline=} ;;
    --feed) [ $# -ge 2 ] || usage; FEED=$2; shift ;;
    --feed=*) FEED=${1#--feed=} ;;
    --only) [ $# -ge 2 ] || usage; ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    *) usage ;;
  esac
  shift
done
for step in ${ONLY//,/ }; do
  [[ " $STEPS " == *" $step "* ]] || { echo "bench: --only $step: the steps are $STEPS" >&2; exit 2; }
done
if [ -n "$BASELINE" ] && ! BASELINE_COMMIT=$(git rev-parse --verify --quiet "$BASELINE^{commit}"); then
  echo "bench: --baseline $BASELINE is not a commit in this repository" >&2; exit 2
fi
# The capture's products, busiest first (the market mix's Zipf popularity then
# follows real activity), at most 50: read from its product ids, whatever its format.
FEED_PRODUCTS=
if [ -n "$FEED" ]; then
  case "$FEED" in /*) ;; *) FEED=$CALLER_DIR/$FEED ;; esac
  [ -r "$FEED" ] || { echo "bench: --feed $FEED is not a readable file" >&2; exit 2; }
  FEED_PRODUCTS=$(python3 - "$FEED" <<'PY'
import collections, gzip, re, sys
with open(sys.argv[1], "rb") as f:
    gz = f.read(2) == b"\x1f\x8b"
text = (gzip.open if gz or sys.argv[1].endswith(".gz") else open)(sys.argv[1], "rb").read()
ids = collections.Counter(re.findall(rb'"product_id"\s*:\s*"([A-Za-z0-9]+-[A-Za-z0-9]+)"', text))
print(",".join(p.decode() for p, _ in ids.most_common(50)))
PY
  ) || FEED_PRODUCTS=
  [ -n "$FEED_PRODUCTS" ] || { echo "bench: --feed $FEED holds no product's messages" >&2; exit 2; }
fi
# Set while the market mix runs on the capture.
REPLAYING=
# Set while start_target is to wait for a hedgehog to have the feed (wait_feed).
WAIT_FEED=

SERVER_CORE=0
HOLD=0
LOAD_CORES=$(( $(nproc) > 1 ? 1 : 0 ))-$(( $(nproc) - 1 ))
SIM_PORT=${SIM_PORT:-18765}
HH_PORT=${HH_PORT:-18080}
NATS_PORT=${NATS_PORT:-14222}
NATS_WS_PORT=${NATS_WS_PORT:-14223}
CEIL_PORT=${CEIL_PORT:-19100}
# The scale-out step's cluster: the ingest's and the two edges' ports, nats-server's
# monitoring port (its /connz counts each node's messages and bytes).
INGEST_PORT=${INGEST_PORT:-18081}
EDGE_PORTS=${EDGE_PORTS:-"18082 18083"}
NATS_MON_PORT=${NATS_MON_PORT:-18222}
WORK=$(mktemp -d /tmp/hedgehog-bench.XXXXXX)
# The TLS step's test CA and server certificate (see tls_step).
TLS_DIR="$WORK/tls"
RAW="$WORK/raw.jsonl"
: > "$RAW"
PIDS=()
# The hedgehog targets: this tree's, then (with --baseline) REV's.
HEDGEHOGS=(hedgehog)
BASE_TREE="$WORK/baseline"
trap 'stop_all; remove_baseline_tree; rm -rf "$WORK"' EXIT

# The fixed ports must be free: the simulator binds with SO_REUSEPORT (glommio's
# listeners do), so a second simulator on a taken port is not refused, and the
# kernel shares this run's connections with whatever listens there already
# (another bench.sh, a test's simulator) without a word.
ports_free() {
  local port taken=()
  for port in "$SIM_PORT" "$HH_PORT" "$NATS_PORT" "$NATS_WS_PORT" "$CEIL_PORT" "$INGEST_PORT" $EDGE_PORTS "$NATS_MON_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then taken+=("$port"); fi
  done
  [ ${#taken[@]} -eq 0 ] && return 0
  echo "bench: something already listens on 127.0.0.1 port(s) ${taken[*]} (another bench.sh?); stop it, or move" \
    "this run with SIM_PORT, HH_PORT, NATS_PORT, NATS_WS_PORT, CEIL_PORT, INGEST_PORT, EDGE_PORTS, NATS_MON_PORT" >&2
  exit 2
}

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

# Where `cargo build` put the binaries (CARGO_TARGET_DIR, if set, moves them).
BIN=${CARGO_TARGET_DIR:-target}/release
# REV's release build: its own target dir, so the dependencies built once are reused
# by later runs (and this tree's target/release is left alone), and the binary kept
# per commit, so comparing against the same REV again builds nothing.
BASE_TARGET=$PWD/target/baseline
BASE_BIN="$BASE_TARGET/hedgehog-$BASELINE_COMMIT"
build_baseline() {
  python3 -c 'import json,sys; print(json.dumps({"scenario": "baseline", "target": "hedgehog-baseline",
    "result": {"commit": sys.argv[1], "subject": sys.argv[2]}}))' \
    "$(git log -1 --format=%h "$BASELINE_COMMIT")" "$(git log -1 --format=%s "$BASELINE_COMMIT")" >>"$RAW"
  HEDGEHOGS+=(hedgehog-baseline)
  if [ -x "$BASE_BIN" ]; then
    log "baseline: $(git log -1 --format='%h %s' "$BASELINE_COMMIT") (built before)"
    return
  fi
  log "building the baseline, $(git log -1 --format='%h %s' "$BASELINE_COMMIT") (release)"
  mkdir -p "$BASE_TARGET"
  git worktree add --quiet --detach "$BASE_TREE" "$BASELINE_COMMIT"
  if ! (cd "$BASE_TREE" && CARGO_TARGET_DIR=$BASE_TARGET cargo build --release -p hedgehog) >"$BASE_TARGET/build.log" 2>&1; then
    log "the baseline ($BASELINE) does not build; cargo's output: $BASE_TARGET/build.log"
    exit 1
  fi
  rm -f "$BASE_TARGET"/hedgehog-*
  cp "$BASE_TARGET/release/hedgehog" "$BASE_BIN"
  remove_baseline_tree
}
remove_baseline_tree() {
  [ -d "$BASE_TREE" ] || return 0
  git worktree remove --force "$BASE_TREE" 2>/dev/null || true
}

# Options the baseline may predate are passed only to a binary whose --help lists them.
supports() { # binary option
  local help
  help=$("$1" --help 2>/dev/null) || true
  [[ $help == *"$2 "* ]]
}

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
  local source=(--rate "$1" --products "$2" --seed 1)
  [ -z "$REPLAYING" ] || source=(--replay "$FEED" --loop)
  taskset -c "$LOAD_CORES" "$BIN/hedgehog" simulate --port "$SIM_PORT" "${source[@]}" \
    --subscribe-timeout 0 --hold "${3:-0}" >"$WORK/sim.log" 2>&1 &
  PIDS+=($!)
  wait_port "127.0.0.1:$SIM_PORT"
}

# Starts TARGET's server for RATE msg/s per product over PRODUCTS; sets SERVER_PID, ADDR.
start_target() { # target rate products
  case "$1" in
    hedgehog|hedgehog-baseline|hedgehog-access|hedgehog-throttled|hedgehog-scraped|hedgehog-tls)
      # Both hedgehogs are fed by this tree's simulator, so they see the same feed.
      start_sim "$2" "$3" "$HOLD"
      local bin=$BIN/hedgehog config=()
      [ "$1" != hedgehog-baseline ] || bin=$BASE_BIN
      # The same binary, with access rules (see write_access_configs), or serving TLS.
      case "$1" in
        hedgehog-access|hedgehog-throttled) config=(--config "$WORK/$1.toml") ;;
        hedgehog-tls) config=(--tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key") ;;
      esac
      start_hedgehog "$bin" "$1" "$SERVER_CORE" "$HH_PORT" --upstream-url "ws://127.0.0.1:$SIM_PORT" "${config[@]}"
      SERVER_PID=$!; ADDR="127.0.0.1:$HH_PORT"
      [ -z "$WAIT_FEED" ] || wait_feed "$ADDR" "${3%%,*}"
      ;;
    cluster)
      start_sim "$2" "$3" "$HOLD"
      start_cluster "${3%%,*}"
      return
      ;;
    nats|nats-tls)
      start_sim "$2" "$3" "$HOLD"
      local tls='no_tls: true'
      [ "$1" != nats-tls ] || tls="tls { cert_file: \"$TLS_DIR/server.pem\", key_file: \"$TLS_DIR/server.key\" }"
      printf 'port: %s\nwebsocket { listen: "127.0.0.1:%s", %s }\n' "$NATS_PORT" "$NATS_WS_PORT" "$tls" >"$WORK/nats.conf"
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

# One hedgehog process (WEB_CONCURRENCY=1) pinned to CORE, listening on PORT,
# logging to $WORK/NAME.log; its pid is $!. The load comes from a few 127.0.0.x
# addresses (up to 9,000 clients each) and the idle step holds 19,000 connections:
# lift the per-address and total connection budgets (a quarter and 95% of the file
# limit by default) to the file limit itself, as an operator load-testing from few
# hosts would.
start_hedgehog() { # binary name core port serve-args...
  local bin=$1 name=$2 core=$3 port=$4 budget=() option
  shift 4
  for option in --max-connections-per-ip --max-connections; do
    if supports "$bin" "$option"; then budget+=("$option" "$(ulimit -n)"); fi
  done
  WEB_CONCURRENCY=1 RUST_LOG=warn taskset -c "$core" "$bin" --host 127.0.0.1 --port "$port" \
    "${budget[@]}" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}

# Issue 17's cluster on loopback, beside the simulator start_target started: a
# nats-server with JetStream (`-js -sd`, its store fresh for each run, so no lease
# outlives its run) and the ingest, both on the load cores; edge a pinned to core
# 0, edge b to the last core (on 2 cores there is no core of its own left for b:
# it shares the load core). Each edge is waited for until it has the feed (see
# wait_feed). Sets SERVER_PID and ADDR to both edges' (comma-separated,
# as `loadgen clients` takes them) and SIDE_PIDS to the ingest's and nats-server's.
start_cluster() { # a product of the feed
  local js="$WORK/jetstream" nats="nats://127.0.0.1:$NATS_PORT" cores=("$SERVER_CORE" "${LOAD_CORES##*-}")
  local node=(a b) i=0 port pids=() addrs=() nats_pid ingest_pid
  rm -rf "$js"
  taskset -c "$LOAD_CORES" nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT" -js -sd "$js" \
    >"$WORK/nats-js.log" 2>&1 &
  nats_pid=$!; PIDS+=($nats_pid)
  wait_port "127.0.0.1:$NATS_PORT"
  start_hedgehog "$BIN/hedgehog" ingest "$LOAD_CORES" "$INGEST_PORT" --role ingest --nats "$nats" --node i \
    --upstream-url "ws://127.0.0.1:$SIM_PORT"
  ingest_pid=$!
  for port in $EDGE_PORTS; do
    start_hedgehog "$BIN/hedgehog" "edge-${node[i]}" "${cores[i]}" "$port" --role edge --nats "$nats" --node "${node[i]}"
    pids+=($!); addrs+=("127.0.0.1:$port"); i=$((i + 1))
  done
  for port in $EDGE_PORTS; do wait_feed "127.0.0.1:$port" "$1"; done
  SERVER_PID=$(IFS=,; echo "${pids[*]}"); ADDR=$(IFS=,; echo "${addrs[*]}")
  SIDE_PIDS="ingest:$ingest_pid,nats:$nats_pid"
}

# Waits until the hedgehog at ADDR has the feed: its /api/v1/products lists
# PRODUCT, which it learns from the simulator (an edge: from the ingest, over
# NATS). Until then it lists a built-in default, and a subscribe to a product it
# has not heard of is a 404 (/readyz answers 200 from the start, within its grace).
wait_feed() { # host:port product
  for _ in $(seq 1 300); do
    [[ $(curl -s -m 1 "http://$1/api/v1/products") == *'"id":"'$2'"'* ]] && return 0
    sleep 0.05
  done
  log "$1 does not list $2 (/api/v1/products)"; return 1
}

# RESULT, the loadgen's JSON, with nats-server's counts (its /connz, since the
# start) of what it sent the edges and took from the ingest, for bytes per message.
with_nats_counts() { # result
  python3 - "$1" "http://127.0.0.1:$NATS_MON_PORT/connz?limit=1024" <<'PY'
import json, sys, urllib.request
r = json.loads(sys.argv[1])
try:
    conns = json.load(urllib.request.urlopen(sys.argv[2], timeout=2)).get("connections", [])
except OSError:
    conns = []
count = lambda role, way: sum(c.get(way, 0) for c in conns if c.get("name", "").startswith("hedgehog " + role))
r["nats"] = {"edges": sum(1 for c in conns if c.get("name", "").startswith("hedgehog edge")),
             "edge_msgs": count("edge", "out_msgs"), "edge_bytes": count("edge", "out_bytes"),
             "ingest_msgs": count("ingest", "in_msgs"), "ingest_bytes": count("ingest", "in_bytes")}
print(json.dumps(r))
PY
}

# One measured run; appends a JSON line tagged with the scenario to $RAW and
# leaves the loadgen's result in $WORK/last.json. The extra arguments come last
# and win (`--channel ticker` replaces `matches`).
run() { # scenario target clients rate products subs extra-loadgen-args...
  local scenario=$1 target=$2 clients=$3 rate=$4 products=$5 subs=$6; shift 6
  start_target "$target" "$rate" "$products"
  [ "$target" != hedgehog-scraped ] || start_scraper
  local out protocol=$target extra=() core=(--server-core "$SERVER_CORE")
  # The load generator speaks hedgehog's protocol to every hedgehog and NATS to
  # every nats-server, presents the key to the hedgehogs with access control on,
  # and speaks TLS, trusting the run's test CA, to the targets serving it.
  case "$target" in hedgehog-*) protocol=hedgehog ;; nats-*) protocol=nats ;; esac
  case "$target" in hedgehog-access|hedgehog-throttled) extra=(--bearer "$BENCH_KEY") ;; esac
  case "$target" in *-tls) extra+=(--ca "$TLS_DIR/ca.pem") ;; esac
  # The cluster's clients are split between the edges; their CPU is summed, and
  # the ingest's and nats-server's are read over the same window.
  [ "$target" != cluster ] || { protocol=hedgehog; extra+=(--side-pid "$SIDE_PIDS"); core=(); }
  if out=$(timeout 300 taskset -c "$LOAD_CORES" "$BIN/loadgen" clients --target "$protocol" --addr "$ADDR" --clients "$clients" \
      --products "$products" --subs "$subs" --channel matches --server-pid "$SERVER_PID" "${core[@]}" \
      --source "$(next_source)" --warmup "$WARMUP" --duration "$DURATION" "${extra[@]}" "$@" 2>>"$WORK/loadgen.log"); then
    [ "$target" != hedgehog-scraped ] || { stop_scraper; out=$(with_scrapes "$out"); }
    [ "$target" != cluster ] || out=$(with_nats_counts "$out")
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

# Steps the rate up for TARGETS together: each step is run by every target still
# climbing, one after the other and taking turns at going first, so targets
# compared with each other see the machine at the same moments. A target stops
# at its first step that falls behind.
ladder() { # clients targets...
  local clients=$1 rate target
  shift
  local live=("$@") kept
  for rate in $FANOUT_RATES; do
    kept=()
    for target in "${live[@]}"; do
      log "fan-out: $target, $clients clients, $rate msg/s"
      run fanout "$target" "$clients" "$rate" BTC-USD 1
      if kept_up "$(cat "$WORK/last.json")"; then kept+=("$target"); fi
    done
    [ ${#kept[@]} -gt 0 ] || break
    live=("${kept[@]:1}" "${kept[0]}")
  done
}

fanout() {
  local clients
  for clients in $FANOUT_CLIENTS; do
    ladder "$clients" "${HEDGEHOGS[@]}"
    ladder "$clients" nats
    ladder "$clients" ceiling
  done
}

# The throttled class's interval. The access step publishes a ticker every 20 ms
# (50/s) in --quick and --full: 100 ms lets about one in five through, about 10 a
# second per client, so most tickers are thinned (held in the client's slot and
# replaced) rather than sent, and the thinned stream is still several deliveries
# per client in each measuring second. (--smoke's 10/s is barely thinned: it only
# proves the harness works.)
THROTTLE_MS=100

# One principal's key (`hedgehog hash-key`), and two config files naming its hash:
# hedgehog-access.toml with a class allowing every pair and channel at full
# delivery, hedgehog-throttled.toml with the same class throttled. Each is checked
# as `serve` would check it, so a mistake stops the run here.
write_access_configs() {
  local out hash class
  out=$("$BIN/hedgehog" hash-key)
  BENCH_KEY=$(awk '$1 == "key:" {print $2}' <<<"$out")
  hash=$(awk '$1 == "hash:" {print $2}' <<<"$out")
  for class in access throttled; do
    {
      printf '[classes.%s]\nallow = ["*"]\nallow_channels = ["*"]\n' "$class"
      [ "$class" = access ] || printf 'throttle_ms = %s\n' "$THROTTLE_MS"
      printf '\n[[keys]]\nprincipal = "bench"\nclass = "%s"\nhash = "%s"\n' "$class" "$hash"
    } >"$WORK/hedgehog-$class.toml"
    "$BIN/hedgehog" check-config "$WORK/hedgehog-$class.toml" >/dev/null
  done
  printf '{"scenario":"access-config","target":"-","result":{"throttle_ms":%s}}\n' "$THROTTLE_MS" >>"$RAW"
}

# Access control's cost: the first fan-out size at ACCESS_RATE, on `ticker` (the
# channel a throttle thins; full-tier tickers carry consecutive trade ids, so loss
# is still checked), with access control off and on, ACCESS_ROUNDS rounds taking
# turns at going first (off, on; on, off; ...); then the throttled class once, its
# trade-id gaps counted as skipped, not lost (--thinned).
# Runs SCENARIO (said as WHAT in the log) with the first fan-out size at RATE on
# one product, ROUNDS rounds over the TARGETS after `--`, each round's order the
# last one's rotated by one, so that every target goes first in turn; the
# arguments between ROUNDS and `--` go to every run.
in_turns() {
  local scenario=$1 what=$2 rate=$3 rounds=$4 clients=${FANOUT_CLIENTS%% *} round target extra=() order
  shift 4
  while [ "$1" != -- ]; do extra+=("$1"); shift; done
  shift
  order=("$@")
  for round in $(seq 1 "$rounds"); do
    for target in "${order[@]}"; do
      log "$what: $target, $clients clients, $rate msg/s (round $round)"
      run "$scenario" "$target" "$clients" "$rate" BTC-USD 1 "${extra[@]}"
    done
    order=("${order[@]:1}" "${order[0]}")
  done
}

access() {
  local clients=${FANOUT_CLIENTS%% *}
  write_access_configs
  in_turns access "access control (tickers)" "$ACCESS_RATE" "$ACCESS_ROUNDS" --channel ticker -- hedgehog hedgehog-access
  log "access control: hedgehog-throttled (throttle_ms = $THROTTLE_MS), $clients clients, $ACCESS_RATE tickers/s"
  run access hedgehog-throttled "$clients" "$ACCESS_RATE" BTC-USD 1 --channel ticker --thinned
}

# A Prometheus-style scraper: curl fetches the main port's GET /metrics once a
# second, from the load cores, until stop_scraper; one line per request (status,
# bytes) in $WORK/scrapes. The main port, not --metrics-addr: then the two targets
# run the same command line and the scraper is the only difference between them.
start_scraper() {
  : >"$WORK/scrapes"
  touch "$WORK/scraping"
  taskset -c "$LOAD_CORES" bash -c 'while [ -e "$1" ]; do
      curl -s -o /dev/null -m 1 -w "%{http_code} %{size_download}\n" "$2" >>"$3" || echo "000 0" >>"$3"
      sleep 1
    done' scraper "$WORK/scraping" "http://$ADDR/metrics" "$WORK/scrapes" &
  SCRAPER_PID=$!; PIDS+=($SCRAPER_PID)
}

# Stops the scraper after its current request (in this shell: it is our child).
stop_scraper() {
  rm -f "$WORK/scraping"
  wait "$SCRAPER_PID" 2>/dev/null || true
}

# RESULT, the loadgen's JSON, with the scrapes made, those answered 200 and their
# mean size added.
with_scrapes() { # result
  python3 - "$1" "$WORK/scrapes" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
lines = [l.split() for l in open(sys.argv[2]) if l.strip()]
ok = [int(size) for code, size in lines if code == "200"]
r.update(scrapes=len(lines), scrapes_ok=len(ok), scrape_bytes=sum(ok) / len(ok) if ok else 0)
print(json.dumps(r))
PY
}

# Scraping's cost: the first fan-out size at METRICS_RATE on one product's
# `matches`, unscraped and scraped, METRICS_ROUNDS rounds taking turns at going
# first (as the access step does).
metrics() {
  in_turns metrics "metrics scraping" "$METRICS_RATE" "$METRICS_ROUNDS" -- hedgehog hedgehog-scraped
}

# TLS's cost: the first fan-out size at TLS_RATE on one product's `matches`, by
# hedgehog and nats-server each plain and over TLS, TLS_ROUNDS rounds, each
# round's order the last one's rotated by one (so every target goes first in
# turn). The certificates are made here, for this run only: a test CA and a
# server certificate for 127.0.0.1 and localhost (ECDSA P-256), the chain in
# server.pem. A hedgehog built without --tls-cert sits the TLS runs out, said
# in RESULTS.md.
tls_step() {
  local order=(hedgehog hedgehog-tls nats nats-tls) served=true
  "$BIN/loadgen" certs --dir "$TLS_DIR"
  if ! supports "$BIN/hedgehog" --tls-cert; then
    log "TLS: this hedgehog has no --tls-cert; hedgehog-tls is left out"
    order=(hedgehog nats nats-tls); served=false
  fi
  printf '{"scenario":"tls-config","target":"-","result":{"hedgehog_tls":%s}}\n' "$served" >>"$RAW"
  in_turns tls TLS "$TLS_RATE" "$TLS_ROUNDS" -- "${order[@]}"
}

# Issue 17's scale-out, on loopback: one process ("hedgehog", core 0) against
# the cluster (1 ingest + 2 edges, see start_cluster), the clients split between
# the two edges, in both cases over two load generator processes (--procs 2).
# First the fan-out: the first fan-out size at SCALE_RATE on one product's
# `matches`, SCALE_ROUNDS rounds taking turns: deliveries per CPU-second (of the
# edges, summed) and latency, whose difference is what the NATS hop adds. Then the
# price of a message: two clients (one per edge) each following SCALE_PRODUCTS
# products at SCALE_MSG_RATE msg/s each, so each process's CPU is per message, not
# per delivery, and nats-server's /connz gives the bytes each message costs an edge.
# Its window is SCALE_MSG_SECONDS: a process's CPU is read in 10 ms ticks, and a
# few percent of a core over the usual 2 s would price a message to 2.5 us only.
# A topic new to the cluster takes most of a second to reach an edge's clients (the
# edge declares its interest, the ingest subscribes upstream and seeds the edge), so
# both targets wait SCALE_WARMUP before the window, not the other steps' WARMUP.
scale_out() {
  local products round target order=(hedgehog cluster)
  WAIT_FEED=1
  in_turns scaleout scale-out "$SCALE_RATE" "$SCALE_ROUNDS" --procs 2 --warmup "$SCALE_WARMUP" -- "${order[@]}"
  products=$(python3 -c 'import sys; print(",".join("C%02d-USD" % i for i in range(int(sys.argv[1]))))' "$SCALE_PRODUCTS")
  for round in $(seq 1 "$SCALE_ROUNDS"); do
    for target in "${order[@]}"; do
      log "scale-out, per message: $target, 2 clients x $SCALE_PRODUCTS products x $SCALE_MSG_RATE msg/s (round $round)"
      run scaleout-msgs "$target" 2 "$SCALE_MSG_RATE" "$products" "$SCALE_PRODUCTS" --procs 2 --warmup "$SCALE_WARMUP" \
        --duration "$SCALE_MSG_SECONDS"
    done
    order=("${order[@]:1}" "${order[0]}")
  done
  WAIT_FEED=
}

market_mix() {
  local products target targets=("${HEDGEHOGS[@]}" nats ceiling) what="50 products (Zipf), 2,000 msg/s in total"
  products=$(python3 -c 'print(",".join("C%02d-USD" % i for i in range(50)))')
  if [ -n "$FEED" ]; then
    # The capture, looped at its own pace; the ceiling program cannot replay one.
    REPLAYING=1; products=$FEED_PRODUCTS; targets=("${HEDGEHOGS[@]}" nats)
    what="$(tr ',' '\n' <<<"$products" | wc -l) products of $(basename "$FEED") (Zipf, busiest first)"
    python3 -c 'import json,sys; print(json.dumps({"scenario": "feed", "target": "-",
      "result": {"file": sys.argv[1], "products": len(sys.argv[2].split(","))}}))' "$(basename "$FEED")" "$products" >>"$RAW"
  fi
  # 1.2 million deliveries a second are asked of one core: every server falls
  # behind, and clients subscribing during the flood would wait behind it. So the
  # simulator holds trading until all have subscribed, and the window starts after.
  HOLD=$MIX_HOLD
  for target in "${targets[@]}"; do
    log "market mix: $target, $MIX_CLIENTS clients x 3 of $what"
    run mix "$target" "$MIX_CLIENTS" 40 "$products" 3 --zipf 1.0 --warmup "$MIX_HOLD"
  done
  HOLD=0
  REPLAYING=
}

# Connections that only connect and get greeted: idle capacity (RSS per connection)
# and the connect storm (time to greet them all) are the same run at two sizes.
connect_only() { # scenario clients what
  local target
  for target in "${HEDGEHOGS[@]}" nats ceiling; do
    log "$3: $target, $2 connections"
    run "$1" "$target" "$2" 1 BTC-USD 1 --idle --warmup 0 --duration 0.5
  done
}
idle() { connect_only idle "$IDLE_CLIENTS" "idle capacity"; }
storm() { connect_only storm "$STORM_CLIENTS" "connect storm"; }

rest() {
  local target
  for target in "${HEDGEHOGS[@]}"; do rest_one "$target"; done
}

rest_one() { # target
  start_target "$1" 1 BTC-USD
  taskset -c "$LOAD_CORES" "$BIN/loadgen" client-id --addr "$ADDR" >"$WORK/id" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 1 100); do [ -s "$WORK/id" ] && break; sleep 0.05; done
  local id method
  id=$(head -1 "$WORK/id")
  for method in POST DELETE; do
    log "REST: $1, wrk $method /api/v1/subscribe/BTC-USD"
    printf 'wrk.method = "%s"\nwrk.headers["X-Client-Id"] = "%s"\n' "$method" "$id" >"$WORK/$method.lua"
    taskset -c "$LOAD_CORES" wrk -t1 -c16 -d"${REST_SECONDS}s" --latency -s "$WORK/$method.lua" \
      "http://$ADDR/api/v1/subscribe/BTC-USD" >"$WORK/wrk-$method.txt" 2>&1 || true
    python3 - "$WORK/wrk-$method.txt" "$method" "$1" >>"$RAW" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", text, re.M)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(json.dumps({"scenario": "rest", "target": sys.argv[3], "method": sys.argv[2], "result": {
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
    WARMUP=0.2; DURATION=0.5; FANOUT_CLIENTS="20"; FANOUT_RATES="10"; MIX_CLIENTS=30; MIX_HOLD=1; IDLE_CLIENTS=50; STORM_CLIENTS=50; REST_SECONDS=1
    ACCESS_RATE=10; ACCESS_ROUNDS=1; SCALE_PRODUCTS=5; SCALE_MSG_RATE=20; SCALE_WARMUP=1.5
    SCALE_MSG_SECONDS=$DURATION ;;
  --quick)
    WARMUP=1; DURATION=2; FANOUT_CLIENTS="1000"; FANOUT_RATES="10 50 200 800"; MIX_CLIENTS=2000; MIX_HOLD=6; IDLE_CLIENTS=5000; STORM_CLIENTS=2000; REST_SECONDS=3
    ACCESS_RATE=50; ACCESS_ROUNDS=2; SCALE_PRODUCTS=50; SCALE_MSG_RATE=40; SCALE_WARMUP=2
    SCALE_MSG_SECONDS=8 ;;
  --full)
    WARMUP=1; DURATION=4; FANOUT_CLIENTS="1000 5000 15000"; FANOUT_RATES="10 50 100 200 400 800 1600"; MIX_CLIENTS=10000; MIX_HOLD=15; IDLE_CLIENTS=19000; STORM_CLIENTS=10000; REST_SECONDS=8
    ACCESS_RATE=50; ACCESS_ROUNDS=3; SCALE_PRODUCTS=50; SCALE_MSG_RATE=40; SCALE_WARMUP=2
    SCALE_MSG_SECONDS=10 ;;
esac
# The metrics step runs where the access step does, so the two compare: 50 msg/s
# to 1,000 clients is 50,000 deliveries a second, a real load for the server core
# yet half what saturates the load generator (the sweep's knee is bound there at
# 100); at 10 msg/s a run is a fraction of a CPU-second, the noisiest ratio.
METRICS_RATE=$ACCESS_RATE; METRICS_ROUNDS=$ACCESS_ROUNDS
# The TLS step too: issue 15's step is 1,000 clients x 50 msg/s.
TLS_RATE=$ACCESS_RATE; TLS_ROUNDS=$ACCESS_ROUNDS
# The scale-out step too (its fan-out half); its per-message half is the market
# mix's upstream, 2,000 msg/s over 50 products, every one followed by both clients.
SCALE_RATE=$ACCESS_RATE; SCALE_ROUNDS=$ACCESS_ROUNDS

ports_free
started=$(date +%s)
install
[ -z "$BASELINE" ] || build_baseline
# The machine's load average (1 min) as each step starts and as the run ends:
# other work on a shared machine moves every figure, and RESULTS.md says how much
# there was.
load_row() { # step
  printf '{"scenario":"load","target":"-","step":"%s","result":{"load1":%s}}\n' "$1" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RAW"
}
for step in $STEPS; do
  [ -z "$ONLY" ] || [[ ",$ONLY," == *",$step,"* ]] || continue
  load_row "$step"
  "$step"
done
load_row end
elapsed=$(( $(date +%s) - started ))
if [ -n "$ONLY" ]; then
  python3 benches/report.py "$RAW" "$MODE --only $ONLY" "$elapsed"
  printf '\n## Raw results\n\n'
  cat "$RAW"
  log "ran $ONLY in ${elapsed}s (benches/ left alone)"
elif [ "$MODE" = --smoke ]; then
  python3 benches/report.py "$RAW" "$MODE" "$elapsed" >"$WORK/RESULTS.md"
  python3 benches/report.py --check "$RAW"
  log "smoke run passed in ${elapsed}s (results not written)"
else
  python3 benches/report.py "$RAW" "$MODE" "$elapsed" >benches/RESULTS.md
  cp "$RAW" benches/raw-latest.jsonl
  cat benches/RESULTS.md
  log "wrote benches/RESULTS.md in ${elapsed}s"
fi
