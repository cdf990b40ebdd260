#!/usr/bin/env bash
# deploy/hedgehog.service against systemd's own tools (no systemd needs to run):
# `systemd-analyze verify` finds nothing to say about it, its SystemCallFilter
# allows io_uring, and every system call the relay makes (traced by strace while
# it starts two shards and the simulator, serves requests and stops on SIGTERM)
# is one the filter allows. Run by .ci/run; loopback only, bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
UNIT=deploy/hedgehog.service

need() {
  command -v "$1" >/dev/null && return
  echo "installing $2 (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null
}
need systemd-analyze systemd
need strace strace
need curl curl

cargo build --quiet --locked --bin hedgehog
BIN=${CARGO_TARGET_DIR:-target}/debug/hedgehog
WORK=$(mktemp -d /tmp/hedgehog-systemd.XXXXXX)
PID= RELAY=
trap '[ -z "$RELAY" ] || kill "$RELAY" 2>/dev/null || true; [ -z "$PID" ] || kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
fail() { echo "systemd.sh: $*"; exit 1; }

# 1. verify. It checks that ExecStart's binary exists and is executable, so the
# unit is verified as a copy whose ExecStart names a copy of the built binary
# (nothing is installed on this machine); every other line is the unit's own.
grep -q '^ExecStart=/usr/local/bin/hedgehog$' "$UNIT" || fail "ExecStart is not /usr/local/bin/hedgehog"
mkdir -p "$WORK/bin"
cp "$BIN" "$WORK/bin/hedgehog"
sed "s|^ExecStart=/usr/local/bin/hedgehog$|ExecStart=$WORK/bin/hedgehog|" "$UNIT" >"$WORK/hedgehog.service"
if ! systemd-analyze verify "$WORK/hedgehog.service" >"$WORK/verify" 2>&1; then
  cat "$WORK/verify"; fail "systemd-analyze verify failed"
fi
[ ! -s "$WORK/verify" ] || { cat "$WORK/verify"; fail "systemd-analyze verify has something to say"; }
echo "systemd-analyze verify: no warnings"

# 2. The filter, expanded as systemd does: the allow lines' sets and names, less
# the deny (~) lines'. Sets nest (@system-service names @basic-io, ...).
expand() {
  local item
  for item in "$@"; do
    case "$item" in
      @*) systemd-analyze syscall-filter "$item" | sed -n 's/^    \([@a-z0-9_-]*\)$/\1/p' | while read -r x; do expand "$x"; done ;;
      *) echo "$item" ;;
    esac
  done
}
allow=() deny=()
while IFS= read -r line; do
  value=${line#SystemCallFilter=}
  case "$value" in
    "~"*) read -ra words <<<"${value#\~}"; deny+=("${words[@]}") ;;
    *) read -ra words <<<"$value"; allow+=("${words[@]}") ;;
  esac
done < <(grep '^SystemCallFilter=' "$UNIT")
expand "${allow[@]}" | sort -u >"$WORK/allow"
expand "${deny[@]}" | sort -u >"$WORK/deny"
comm -23 "$WORK/allow" "$WORK/deny" >"$WORK/allowed"
for call in io_uring_setup io_uring_enter io_uring_register; do
  grep -qx "$call" "$WORK/allowed" || fail "SystemCallFilter does not allow $call"
done
echo "SystemCallFilter allows io_uring_setup, io_uring_enter, io_uring_register ($(wc -l <"$WORK/allowed") calls in all)"

# 3. The calls the relay makes: two shards and the simulator start, requests are
# served (HTTP, a stream, /metrics), SIGTERM stops it.
WEB_CONCURRENCY=2 strace -f -qq -o "$WORK/trace" "$BIN" --simulate --host 127.0.0.1 --port 0 \
  --metrics-addr 127.0.0.1:0 2>"$WORK/log" &
PID=$!
for _ in $(seq 1 300); do
  grep -q "hedgehog listening on " "$WORK/log" && grep -q "metrics on http://" "$WORK/log" && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/log"; fail "the relay exited"; }
  sleep 0.1
done
ADDR=$(sed -n 's/.*hedgehog listening on \([^ ]*\).*/\1/p' "$WORK/log" | head -1)
METRICS=$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' "$WORK/log" | head -1)
[ -n "$ADDR" ] && [ -n "$METRICS" ] || { cat "$WORK/log"; fail "no address in the log"; }
# strace's child is the relay (a SIGTERM to strace would only detach it).
RELAY=$(cat "/proc/$PID/task/$PID/children")
[ -n "$RELAY" ] || fail "no relay under strace"
curl -sf "http://$ADDR/healthz" >/dev/null
curl -sN --max-time 2 -H 'Accept: application/x-ndjson' "http://$ADDR/api/v1/subscribe/BTC-USD" >/dev/null || true
curl -sf "http://$METRICS/metrics" >/dev/null
kill -TERM "$RELAY"
wait "$PID" || fail "the relay did not exit 0 on SIGTERM"  # strace exits as its child did
PID= RELAY=
# Lines are "PID name(args) = result" (or "<... name resumed>"): the names.
sed -n 's/^[0-9]\+ \+\([a-z0-9_]\+\)(.*/\1/p' "$WORK/trace" | sort -u >"$WORK/used"
for call in io_uring_setup io_uring_enter sched_setaffinity; do
  grep -qx "$call" "$WORK/used" || fail "strace did not see $call: the trace is not of the relay"
done
# execve is strace starting the binary (systemd makes it before the filter applies).
missing=$(comm -23 "$WORK/used" "$WORK/allowed" | grep -vx execve || true)
[ -z "$missing" ] || fail "the relay makes calls the SystemCallFilter refuses: $(echo $missing)"
echo "the relay's $(wc -l <"$WORK/used") distinct system calls are all allowed by SystemCallFilter"
echo "systemd.sh: ok"
