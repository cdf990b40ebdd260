#!/usr/bin/env bash
# The REST API against its description: openapi.yaml is valid OpenAPI 3.1, the
# relay serves it, and a property-based tester (schemathesis) finds, against a
# running `hedgehog --simulate`, no 5xx and no answer that the document does not
# describe (status, content type, headers, body schema; wrong methods 405 with
# `Allow`; bad input refused). What such a tester cannot take, a WebSocket's 101
# and the never-ending stream forms, is checked here with curl.
#
#   bash tests/openapi.sh                 # access control off
#   bash tests/openapi.sh --access        # also with access control on (an anonymous class)
#
# Installs its Python tools with pip (pinned). Bounded: about 3 minutes a run on
# a 2-core machine. Reports land in target/openapi/.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
# Per operation, and per schemathesis run (fuzzing repeats until the time is
# spent): each run takes about MAX_TIME + 15 s, so both runs under 3.5 minutes.
MAX_EXAMPLES=${OPENAPI_MAX_EXAMPLES:-40}
MAX_TIME=${OPENAPI_MAX_TIME:-80}

python3 -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$VALIDATOR_VERSION"

out=target/openapi
mkdir -p "$out"

echo "openapi: validating openapi.yaml"
python3 -m openapi_spec_validator openapi.yaml

cargo build --locked --quiet --bin hedgehog
bin="${CARGO_TARGET_DIR:-target}/debug/hedgehog"

pid=""
stop() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
trap stop EXIT

# Starts the relay with "$@" and sets $addr from its "hedgehog listening on ADDR" line.
start() {
    local log=$1
    shift
    RUST_LOG=info WEB_CONCURRENCY=2 "$bin" --simulate --host 127.0.0.1 --port 0 "$@" >"$log" 2>&1 &
    pid=$!
    addr=""
    for _ in $(seq 1 600); do
        addr=$(sed -n 's/.*hedgehog listening on \([0-9.:]*\).*/\1/p' "$log" | head -n1)
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "openapi: hedgehog exited" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$addr" ] || { cat "$log" >&2; echo "openapi: hedgehog did not start" >&2; exit 1; }
    # The simulator lists its products within moments; wait for them (history
    # and streams of a listed pair are then 200, not a 404 of an unknown list).
    for _ in $(seq 1 200); do
        curl -fsS "http://$addr/healthz" | grep -q '"products":[1-9]' && return
        sleep 0.1
    done
    echo "openapi: the simulator listed no products" >&2
    exit 1
}

# What a request/response tester cannot check: the answers that do not end.
check_streams() {
    local head
    curl -fsS "http://$addr/api/v1/openapi.yaml" | cmp -s - openapi.yaml \
        || { echo "openapi: /api/v1/openapi.yaml is not openapi.yaml" >&2; exit 1; }
    for accept in text/event-stream application/x-ndjson; do
        head=$(curl -s -o "$out/stream.body" -D - --max-time 2 -H "Accept: $accept" \
            "http://$addr/api/v1/subscribe/BTC-USD?channels=ticker" || true)
        for want in "HTTP/1.1 200" "Content-Type: $accept" "X-Client-Id: " "X-Hedgehog-Shard: "; do
            grep -q "^$want" <<<"$head" || { echo "openapi: $accept stream lacks '$want': $head" >&2; exit 1; }
        done
        first=$(head -n1 "$out/stream.body")
        [ "$accept" = text/event-stream ] && first=${first#data: }
        python3 -c 'import json,sys; m=json.loads(sys.argv[1]); assert m["type"]=="subscribed", m' "$first" \
            || { echo "openapi: $accept stream's first message: $first" >&2; exit 1; }
    done
    head=$(curl -s -D - -o /dev/null --max-time 2 -H "Connection: Upgrade" -H "Upgrade: websocket" \
        -H "Sec-WebSocket-Version: 13" -H "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" "http://$addr/ws" || true)
    for want in "HTTP/1.1 101" "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" "X-Hedgehog-Shard: "; do
        grep -q "^$want" <<<"$head" || { echo "openapi: the upgrade lacks '$want': $head" >&2; exit 1; }
    done
    echo "openapi: the document is served; SSE, NDJSON and the 101 answer as described"
}

# One schemathesis run against the relay at $addr; fails on any failed check.
fuzz() {
    local name=$1
    shift
    echo "openapi: schemathesis ($name) against http://$addr"
    HEDGEHOG_ADDR=$addr HEDGEHOG_BAD_KEYS=${HEDGEHOG_BAD_KEYS:-} SCHEMATHESIS_HOOKS=tests/openapi_hooks.py schemathesis run openapi.yaml \
        --url "http://$addr" \
        --checks all --exclude-checks positive_data_acceptance \
        --phases examples,coverage,fuzzing,stateful \
        --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --seed 1 \
        --request-timeout 10 --workers 2 \
        --suppress-health-check all \
        --report junit --report-junit-path "$out/$name.xml" \
        "$@"
}

start "$out/relay.log"
check_streams
fuzz open
stop

if [ "${1:-}" = "--access" ]; then
    config="$out/access.toml"
    cat >"$config" <<'EOF'
# Anonymous clients may have some pairs and channels and a little history, so
# that 403 `forbidden` is among the answers; the hooks add a bad key to some
# requests (401 with its challenge).
[classes.anonymous]
allow = ["BTC-*", "ETH-*"]
deny = ["*-EUR"]
allow_channels = ["ticker", "matches", "heartbeat"]
history = true
history_max_limit = 50
EOF
    start "$out/relay-access.log" --config "$config"
    check_streams
    HEDGEHOG_BAD_KEYS=1 fuzz access
    stop
fi
echo "openapi: passed"
