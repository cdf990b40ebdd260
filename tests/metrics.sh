#!/usr/bin/env bash
# The metrics against real tools: promtool (Debian's prometheus package) checks
# the exposition of a running relay, and every metric the Grafana dashboard's
# queries name exists in it. Run by .ci/run; loopback only, bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
  echo "installing promtool (Debian's prometheus package)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null
fi
cargo build --quiet --locked --bin hedgehog
BIN=${CARGO_TARGET_DIR:-target}/debug/hedgehog
WORK=$(mktemp -d /tmp/hedgehog-metrics.XXXXXX)
PID=
trap '[ -z "$PID" ] || kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

WEB_CONCURRENCY=2 RUST_LOG=info "$BIN" --simulate --host 127.0.0.1 --port 0 --metrics-addr 127.0.0.1:0 \
  2>"$WORK/log" &
PID=$!
# The log names both addresses once the relay listens (30 s at most).
for _ in $(seq 1 300); do
  grep -q "hedgehog listening on " "$WORK/log" && grep -q "metrics on http://" "$WORK/log" && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/log"; echo "metrics.sh: the relay exited"; exit 1; }
  sleep 0.1
done
ADDR=$(sed -n 's/.*hedgehog listening on \([^ ]*\).*/\1/p' "$WORK/log" | head -1)
METRICS=$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' "$WORK/log" | head -1)
[ -n "$ADDR" ] && [ -n "$METRICS" ] || { cat "$WORK/log"; echo "metrics.sh: no address in the log"; exit 1; }

# Some traffic, so that every family has samples: a stream for 3 s, a 404, a 405.
curl -sN --max-time 3 -H 'Accept: application/x-ndjson' "http://$ADDR/api/v1/subscribe/BTC-USD" >/dev/null || true
curl -s "http://$ADDR/nowhere" >/dev/null
curl -s -X POST "http://$ADDR/healthz" >/dev/null
curl -sf "http://$METRICS/metrics" >"$WORK/metrics.txt"
curl -sf "http://$ADDR/metrics" >"$WORK/main.txt"

echo "promtool check metrics (--metrics-addr, then the main port):"
promtool check metrics <"$WORK/metrics.txt"
promtool check metrics <"$WORK/main.txt"

echo "an ingest and an edge on NATS (their cluster families too):"
command -v nats-server >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server >/dev/null
nats-server -a 127.0.0.1 -p -1 -js -sd "$WORK/js" --ports_file_dir "$WORK" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
trap '[ -z "$PID" ] || kill "$PID" 2>/dev/null || true; kill $NATS_PID ${CLUSTER_PIDS:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 300); do ls "$WORK"/*.ports >/dev/null 2>&1 && break; sleep 0.1; done
NATS=$(python3 -c 'import json,glob,sys; print(json.load(open(glob.glob(sys.argv[1]+"/*.ports")[0]))["nats"][0])' "$WORK")
CLUSTER_PIDS=
for role in ingest edge; do
  WEB_CONCURRENCY=1 RUST_LOG=info "$BIN" --simulate --role $role --node "m_$role" --nats "$NATS" \
    --host 127.0.0.1 --port 0 2>"$WORK/$role.log" &
  CLUSTER_PIDS="$CLUSTER_PIDS $!"
done
for role in ingest edge; do
  for _ in $(seq 1 300); do grep -q "hedgehog listening on " "$WORK/$role.log" && break; sleep 0.1; done
done
INGEST=$(sed -n 's/.*hedgehog listening on \([^ ]*\).*/\1/p' "$WORK/ingest.log" | head -1)
EDGE=$(sed -n 's/.*hedgehog listening on \([^ ]*\).*/\1/p' "$WORK/edge.log" | head -1)
# Data through the edge (so that the ingest publishes), for up to 30 s.
for _ in $(seq 1 30); do
  curl -sN --max-time 1 "http://$EDGE/api/v1/subscribe/BTC-USD" | grep -q '"type":"match"' && break || true
done
for node in "$INGEST" "$EDGE"; do
  curl -sf "http://$node/metrics" >"$WORK/node.txt"
  promtool check metrics <"$WORK/node.txt"
  grep -E '^hedgehog_(nats_messages_total|nats_connected|cluster_role)' "$WORK/node.txt"
done
grep -q '^hedgehog_ingest_lease_active 1' <(curl -sf "http://$INGEST/metrics") || { echo "the ingest holds no lease"; exit 1; }

echo "the dashboard's queries name metrics that exist:"
python3 - deploy/grafana-dashboard.json "$WORK/metrics.txt" <<'PY'
import json, re, sys
dash = json.load(open(sys.argv[1]))
exposed = set()
for line in open(sys.argv[2]):
    if line.startswith("# TYPE "):
        name, kind = line.split()[2:4]
        exposed.add(name)
        if kind == "histogram":
            exposed.update(name + s for s in ("_bucket", "_sum", "_count"))
functions = {"sum", "rate", "increase", "histogram_quantile", "max", "min", "avg", "by", "le", "time", "without", "irate"}
missing, queries = [], 0
for panel in dash["panels"]:
    for target in panel.get("targets", []):
        queries += 1
        expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', "", target["expr"])
        for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
            if name in functions or name in ("channel", "transport", "state", "reason", "route", "status", "shard"):
                continue
            if name not in exposed:
                missing.append((panel["title"], name))
if missing:
    sys.exit(f"metrics the dashboard names but hedgehog does not expose: {missing}")
print(f"{queries} queries in {len(dash['panels'])} panels: every metric they name is exposed")
PY
