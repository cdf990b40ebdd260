#!/usr/bin/env bash
# deploy/seccomp-io-uring.json, for real: libseccomp (Debian's python3-seccomp, through
# tests/seccomp_exec.py) loads the profile's rules as Docker's engine would for a
# container with the default capabilities, then execs the release binary under them.
#   1. a control: a call the profile refuses (unshare, CAP_SYS_ADMIN only) is refused;
#   2. under the profile, `hedgehog serve --simulate` starts, /healthz answers 200, a
#      stream of BTC-USD carries data, and SIGTERM stops it with status 0;
#   3. under the same profile less io_uring_setup/enter/register (Docker's default),
#      it exits 2 with preflight's one line naming the fix.
# Usage: bash tests/seccomp.sh  (as root on the CI machine: it may apt-get install)
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=deploy/seccomp-io-uring.json
PY=/usr/bin/python3 # Debian's, which has python3-seccomp (not a pyenv one)
IO_URING=io_uring_setup,io_uring_enter,io_uring_register

say() { printf 'seccomp: %s\n' "$*"; }
die() { printf 'seccomp: FAILED: %s\n' "$*" >&2; exit 1; }

if ! "$PY" -c 'import seccomp' 2>/dev/null || ! command -v curl >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-seccomp curl >/dev/null
fi
cargo build --release --locked --bin hedgehog
BIN=${CARGO_TARGET_DIR:-target}/release/hedgehog
WORK=$(mktemp -d)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# An array, not a function: started with `&`, $! is then the relay itself.
UNDER=("$PY" tests/seccomp_exec.py "$PROFILE")
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Polls until /healthz answers 200, while the relay lives (60 s at most).
wait_healthy() {
    local port=$1 pid=$2 log=$3 end=$((SECONDS + 60))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz")" = 200 ]; do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "the relay exited before /healthz answered"; }
        [ $SECONDS -lt $end ] || { cat "$log" >&2; die "/healthz did not answer 200 within 60 s"; }
        sleep 0.2
    done
}

# The first feed message of a BTC-USD stream (an NDJSON stream, 60 s at most).
first_ticker() {
    timeout 60 curl -sN "http://127.0.0.1:$1/api/v1/subscribe/BTC-USD" | grep -m1 '"type":"ticker"' || true
}

say "control: a call the profile refuses is refused (unshare needs CAP_SYS_ADMIN)"
if "${UNDER[@]}" -- unshare --user true 2>"$WORK/control"; then
    die "unshare ran under the profile: the filter is not in force"
fi
grep -q 'Operation not permitted' "$WORK/control" || { cat "$WORK/control" >&2; die "unshare failed, but not with EPERM"; }

say "the relay under $PROFILE"
port=$(free_port)
"${UNDER[@]}" -- "$BIN" serve --simulate --host 127.0.0.1 --port "$port" >"$WORK/serve.log" 2>&1 &
PID=$!
wait_healthy "$port" "$PID" "$WORK/serve.log"
line=$(first_ticker "$port")
case $line in *'"product_id":"BTC-USD"'*) ;; *) cat "$WORK/serve.log" >&2; die "no BTC-USD ticker on the stream";; esac
say "  /healthz 200; stream: ${line:0:90}..."
kill -TERM "$PID"
status=0
wait "$PID" || status=$?
PID=
[ "$status" = 0 ] || { cat "$WORK/serve.log" >&2; die "SIGTERM: exit status $status, not 0"; }
grep -q 'shut down cleanly' "$WORK/serve.log" || die "no clean shutdown in the log"
say "  SIGTERM: shut down cleanly, status 0"

say "the relay under the same profile less $IO_URING (Docker's default)"
status=0
"${UNDER[@]}" --without "$IO_URING" -- "$BIN" serve --simulate --host 127.0.0.1 --port "$(free_port)" \
    >"$WORK/refused.log" 2>&1 || status=$?
[ "$status" = 2 ] || { cat "$WORK/refused.log" >&2; die "exit status $status, not 2"; }
grep -v '^seccomp_exec: ' "$WORK/refused.log" >"$WORK/refused.lines"
[ "$(wc -l <"$WORK/refused.lines")" = 1 ] || { cat "$WORK/refused.log" >&2; die "not one line"; }
grep -q '^hedgehog: io_uring is refused by this system (Operation not permitted.*--security-opt seccomp=deploy/seccomp-io-uring.json' \
    "$WORK/refused.lines" || { cat "$WORK/refused.log" >&2; die "not preflight's io_uring line"; }
say "  exit 2: $(cut -c1-110 "$WORK/refused.lines")..."
say "ok"
