#!/usr/bin/env bash
# hedgehog behind Debian's haproxy, as deploy/haproxy.cfg has it: TLS ended by
# the proxy, two relays (`--node a`, `--node b`) fed by one simulator, and the
# client-id routing. Through the proxy, over TLS checked against a CA made for
# the run: WebSocket clients land on both relays (their welcome ids begin `a.`
# and `b.`), each subscribes a pair by REST with its own id (by header, and by
# ?client_id=) and gets that pair's data on its socket, every such call reaches
# the client's own relay, an unsubscribe stops the data, and an admin's
# disconnect (the id in the path) closes each client. Straight to the other
# relay, a call is 421 `wrong_node`.
#
#   bash tests/haproxy.sh      # run by .ci/run; installs haproxy (Debian), websockets (pip)
#
# Loopback only, ports picked at run time; every wait has a deadline; about 10 s
# after the release build, and never past 2 minutes (a watchdog ends it).
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null && return
  echo "installing $2 (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null
}
need haproxy haproxy
need openssl openssl
need curl curl
python3 -c 'import websockets' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check "websockets==17.4"

cargo build --release --locked --quiet --bin hedgehog
STARTED=$SECONDS
BIN=${CARGO_TARGET_DIR:-target}/release/hedgehog
WORK=$(mktemp -d /tmp/hedgehog-haproxy.XXXXXX)
PIDS=() WATCHDOG=
cleanup() {
  [ -z "$WATCHDOG" ] || { pkill -P "$WATCHDOG" 2>/dev/null; kill "$WATCHDOG" 2>/dev/null; } || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
fail() {
  echo "haproxy.sh: $*" >&2
  for log in "$WORK"/*.log; do echo "--- $log" >&2; tail -n 20 "$log" >&2; done
  exit 1
}
# The watchdog: the whole test, builds excepted, within 2 minutes.
( sleep 120; echo "haproxy.sh: over 2 minutes, stopping" >&2; kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

# 1. A CA, and a certificate for 127.0.0.1 and localhost that it signs (with the
# extensions a strict verifier, such as Python 3.13's default, wants).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=hedgehog test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$WORK/site.key" -out "$WORK/site.csr" 2>/dev/null
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
  "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$WORK/site.ext"
openssl x509 -req -in "$WORK/site.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 1 \
  -extfile "$WORK/site.ext" -out "$WORK/site.crt" 2>/dev/null
cat "$WORK/site.crt" "$WORK/site.key" >"$WORK/site.pem"

# 2. One simulator, two relays on it, with access rules that let anonymous
# clients do everything and make `ops` (an API key) an admin, for the admin's
# disconnect, whose path names the client. Each logs the address it took.
"$BIN" hash-key >"$WORK/key.txt"
ADMIN_KEY=$(sed -n 's/^key: *//p' "$WORK/key.txt")
cat >"$WORK/access.toml" <<EOF
[classes.anonymous]
allow = ["*"]
allow_channels = ["*"]
[classes.ops]
allow = ["*"]
allow_channels = ["*"]
admin = true
[[keys]]
principal = "ops"
class = "ops"
hash = "$(sed -n 's/^hash: *//p' "$WORK/key.txt")"
EOF
listening() { # log pattern pid: waits (30 s at most) for "PATTERN <addr>" in LOG; prints addr
  for _ in $(seq 1 300); do
    local addr
    addr=$(sed -n "s|.*$2 \\([^ ,]*\\).*|\\1|p" "$1" | head -n1)
    [ -n "$addr" ] && { echo "${addr#ws://}"; return; }
    kill -0 "$3" 2>/dev/null || fail "$1: the process exited"
    sleep 0.1
  done
  fail "$1: nothing listening after 30 s"
}
RUST_LOG=info "$BIN" simulate --host 127.0.0.1 --port 0 --seed 1 --subscribe-timeout 0 >"$WORK/sim.log" 2>&1 &
PIDS+=($!)
SIM=$(listening "$WORK/sim.log" "simulator listening on" $!)
declare -A RELAY
for node in a b; do
  WEB_CONCURRENCY=2 RUST_LOG=info "$BIN" --node "$node" --host 127.0.0.1 --port 0 \
    --upstream-url "ws://$SIM" --config "$WORK/access.toml" >"$WORK/relay-$node.log" 2>&1 &
  PIDS+=($!)
  RELAY[$node]=$(listening "$WORK/relay-$node.log" "hedgehog listening on" $!)
done
echo "haproxy.sh: simulator $SIM, relay a ${RELAY[a]}, relay b ${RELAY[b]}"

# 3. haproxy on a free port, running deploy/haproxy.cfg with the test's
# certificate and addresses; in the foreground, as this user, logging to its log
# file, and with room for 1000 connections (100000 wants more open files than a
# CI machine gives).
LB_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -e "s|^\\(\\s*\\)log /dev/log local0$|\\1log stdout format raw local0|" \
    -e '/^\s*\(chroot\|user\|group\|daemon\)\b/d' \
    -e "s|^\\(\\s*maxconn\\) 100000$|\\1 1000|" \
    -e "s|^\\(\\s*bind\\) :443 ssl crt [^ ]*|\\1 127.0.0.1:$LB_PORT ssl crt $WORK/site.pem|" \
    -e "s|^\\(\\s*server a\\) [^ ]*|\\1 ${RELAY[a]}|" \
    -e "s|^\\(\\s*server b\\) [^ ]*|\\1 ${RELAY[b]}|" \
    deploy/haproxy.cfg >"$WORK/haproxy.cfg"
for want in "log stdout" "maxconn 1000" "bind 127.0.0.1:$LB_PORT ssl crt $WORK/site.pem alpn http/1.1" \
    "server a ${RELAY[a]}" "server b ${RELAY[b]}"; do
  grep -qF "$want" "$WORK/haproxy.cfg" || fail "deploy/haproxy.cfg changed shape: no '$want' in the test's copy"
done
! grep -qE '^\s*(chroot|user|group|daemon)\b' "$WORK/haproxy.cfg" || fail "the test's copy still daemonizes"
haproxy -c -q -f "$WORK/haproxy.cfg" || fail "haproxy -c refuses the test's copy of deploy/haproxy.cfg"
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
LB="127.0.0.1:$LB_PORT"
for _ in $(seq 1 300); do
  curl -s --cacert "$WORK/ca.pem" -o /dev/null "https://$LB/readyz" && break
  kill -0 "${PIDS[-1]}" 2>/dev/null || fail "haproxy exited"
  sleep 0.1
done
echo "haproxy.sh: haproxy $(haproxy -v | head -n1 | cut -d' ' -f3) on https://$LB"

# 4. The clients, in Python (websockets; http.client for REST), over TLS
# verified against the CA.
LB=$LB CA="$WORK/ca.pem" ADMIN_KEY=$ADMIN_KEY RELAY_A=${RELAY[a]} RELAY_B=${RELAY[b]} timeout 100 python3 - <<'PY' || fail "the client run failed"
import asyncio, http.client, json, os, ssl, time
import websockets

LB, CA, ADMIN_KEY = os.environ["LB"], os.environ["CA"], os.environ["ADMIN_KEY"]
DIRECT = {"a": os.environ["RELAY_A"], "b": os.environ["RELAY_B"]}
TLS = ssl.create_default_context(cafile=CA)
DEADLINE = 30.0


def rest(method, path, client_id=None, via_query=False, direct=None, admin=False):
    """One REST call through the proxy (https), or straight to a relay (http)."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"} if admin else {}
    if client_id and via_query:
        path += ("&" if "?" in path else "?") + "client_id=" + client_id
    elif client_id:
        headers["X-Client-Id"] = client_id
    host, port = (direct or LB).rsplit(":", 1)
    if direct:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    else:
        conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=TLS)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def until(ws, what, pred):
    """The first message on `ws` that satisfies `pred`, within the deadline."""
    end = time.monotonic() + DEADLINE
    while True:
        left = end - time.monotonic()
        assert left > 0, f"timed out waiting for {what}"
        m = json.loads(await asyncio.wait_for(ws.recv(), left))
        if pred(m):
            return m


def is_data(pair):
    return lambda m: m.get("product_id") == pair and m.get("type") in ("ticker", "match", "last_match")


async def main():
    # Clients through the proxy until both relays hold one: least connections
    # sends the second to the relay without one, once both pass their checks.
    clients, spare = {}, []
    end = time.monotonic() + DEADLINE
    while len(clients) < 2:
        assert time.monotonic() < end, f"clients reached only {sorted(clients)}"
        ws = await websockets.connect(f"wss://{LB}/ws", ssl=TLS, open_timeout=10)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome", welcome
        node = welcome["client_id"].split(".", 1)[0]
        assert node in ("a", "b"), welcome
        (spare if node in clients else clients.setdefault(node, [])).append((ws, welcome["client_id"]))
    print(f"  clients on both relays: {', '.join(c[0][1] for c in clients.values())}")

    pairs = {"a": "BTC-USD", "b": "ETH-USD"}
    for node, [(ws, cid)] in sorted(clients.items()):
        pair, via_query = pairs[node], node == "b"
        # Every call naming the client reaches its relay: ten in a row, never 421.
        for _ in range(10):
            status, body = rest("GET", "/api/v1/subscribe", cid, via_query)
            assert status == 200 and body["client_id"] == cid, (status, body)
        status, body = rest("POST", f"/api/v1/subscribe/{pair}?channels=ticker,matches", cid, via_query)
        assert status == 200 and body["subscribed"] is True and body["client_id"] == cid, (status, body)
        await until(ws, f"{cid}'s subscribed note", lambda m: m.get("type") == "subscribed" and m["product_id"] == pair)
        await until(ws, f"{pair} data on {cid}'s socket", is_data(pair))
        print(f"  {cid}: POST /api/v1/subscribe/{pair} ({'?client_id=' if via_query else 'X-Client-Id'}) "
              f"through the proxy, then {pair} data on its WebSocket")
        # Straight to the other relay, the same call is misdirected, naming both.
        other = "b" if node == "a" else "a"
        status, body = rest("GET", "/api/v1/subscribe", cid, direct=DIRECT[other])
        assert status == 421 and body["error"] == "wrong_node", (status, body)
        assert f"node `{node}`" in body["message"] and f"node `{other}`" in body["message"], body
    print(f"  straight to the other relay: 421 wrong_node ({body['message']})")

    # Unsubscribe a's client through the proxy: its note, then no more of its
    # pair, while b's client goes on receiving five more of its own.
    (ws_a, id_a), (ws_b, _) = clients["a"][0], clients["b"][0]
    status, body = rest("DELETE", f"/api/v1/subscribe/{pairs['a']}", id_a)
    assert status == 200 and body["subscribed"] is False, (status, body)
    await until(ws_a, "the unsubscribed note", lambda m: m.get("type") == "unsubscribed")
    late = []

    async def drain():
        while True:
            late.append(json.loads(await ws_a.recv()))

    drainer = asyncio.create_task(drain())
    for _ in range(5):
        await until(ws_b, f"{pairs['b']} data", is_data(pairs["b"]))
    drainer.cancel()
    stray = [m for m in late if m.get("product_id") == pairs["a"]]
    assert not stray, f"{pairs['a']} after the unsubscribe: {stray[:3]}"
    status, body = rest("GET", "/api/v1/subscribe", id_a)
    assert status == 200 and body["subscriptions"] == [], (status, body)
    print(f"  DELETE /api/v1/subscribe/{pairs['a']} through the proxy: {id_a} got nothing more of it "
          f"while the other client got 5 {pairs['b']} messages")

    # An admin disconnects both clients through the proxy, by the id in the
    # path: each call reaches the client's relay, and its socket is closed.
    for node, [(ws, cid)] in sorted(clients.items()):
        status, body = rest("DELETE", f"/api/v1/clients/{cid}", admin=True)
        assert status == 200 and body == {"client_id": cid, "disconnected": True}, (status, body)
        try:
            await until(ws, f"{cid}'s close", lambda m: False)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd.code == 1008 and "admin" in closed.rcvd.reason, closed
    print("  DELETE /api/v1/clients/{id} through the proxy (an admin key): each client's relay closed it (1008)")
    for ws, _ in spare:
        await ws.close()


asyncio.run(main())
PY
echo "haproxy.sh: passed in $((SECONDS - STARTED)) s"
