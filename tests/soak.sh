#!/usr/bin/env bash
# Soak: the release binary under a small, steady load for SECONDS (default 720, as
# CI runs it), past the ~655 s at which glommio 0.9 used to end a task whose
# pending accept had been re-polled 32,768 times (a shard or the simulator that
# accepted no connection for that long). The driver is tests/soak.rs, an ignored
# test (`cargo test` skips it); its header says what it asserts. Beside it, at
# the same time and for as long, tests/soak/cluster.rs soaks a cluster (two
# ingests, two edges, Debian's nats-server: apt-get install nats-server).
#
#   bash tests/soak.sh [SECONDS]      # at least 30; logs in target/tmp/soak/
#
# Exits non-zero if any check fails, after showing the end of each process's log.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-720}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds < 30)); then
    echo "soak: SECONDS must be a whole number, at least 30 (got '$seconds')" >&2
    exit 2
fi

# Builds the release binary and the driver first, so the build is not in the run.
cargo test --release --locked --test soak --no-run

logs="${CARGO_TARGET_DIR:-target}/tmp/soak"
echo "soak: ${seconds} s against the release binary"
if ! SOAK_SECONDS="$seconds" cargo test --release --locked --test soak -- --ignored --nocapture --test-threads 2; then
    for log in "$logs"/*.log; do
        [ -f "$log" ] || continue
        echo "== the end of $log" >&2
        tail -n 20 "$log" >&2
    done
    exit 1
fi
