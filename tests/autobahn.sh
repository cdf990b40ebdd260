#!/usr/bin/env bash
# WebSocket conformance: the Autobahn TestSuite's cases (sections 1-10; the suite
# has no section 8 or 11, and 12-13 need permessage-deflate, which hedgehog does
# not offer), driven offline by kosoku against hedgehog's `/echo` test endpoint.
#
#   bash tests/autobahn.sh            # needs `pip install kosoku` and a release build
#
# Exits non-zero if any case fails; reports land in target/autobahn/.
set -euo pipefail
cd "$(dirname "$0")/.."

# The console script, or the same entry point through python3 when pip put its
# scripts directory off PATH.
if command -v kosoku >/dev/null; then
    kosoku=(kosoku)
elif python3 -c "import kosoku" 2>/dev/null; then
    kosoku=(python3 -c "import sys; from kosoku._cli import main; sys.argv[0] = 'kosoku'; main()")
else
    echo "autobahn: kosoku is not installed (pip install kosoku)" >&2
    exit 2
fi
cargo build --release --locked --quiet --bin hedgehog

out=target/autobahn
mkdir -p "$out"
log="$out/hedgehog.log"
# Section 9 sends messages of up to 16 MiB and expects them back: the echo
# endpoint is given room for them. The upstream is the built-in simulator, so
# nothing leaves the machine.
RUST_LOG=info WEB_CONCURRENCY=2 ./target/release/hedgehog --simulate --echo --host 127.0.0.1 --port 0 \
    --max-message-bytes 16777216 --client-queue-bytes 67108864 --max-request-rate 0 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT

# The port it got is in its first log line; wait for it (generously).
addr=""
for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*hedgehog listening on \([0-9.:]*\) .*/\1/p' "$log" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "autobahn: hedgehog exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { cat "$log" >&2; echo "autobahn: hedgehog did not start" >&2; exit 1; }

echo "autobahn: cases 1-10 against ws://$addr/echo"
cases=()
for s in 1 2 3 4 5 6 7 9 10; do cases+=(-i "$s.*"); done
"${kosoku[@]}" "${cases[@]}" -p 4 -o "$out/reports" "ws://$addr/echo"
