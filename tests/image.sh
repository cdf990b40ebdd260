#!/usr/bin/env bash
# The container image, built and run as far as this machine allows: it builds
# images (Debian's podman) but cannot run containers (no cgroups in the sandbox),
# and reaches no image registry. So:
#   1. deploy/compose.yaml through `docker-compose config` (Debian's Compose 1.29)
#      and checks of what it names; deploy/prometheus.yml through promtool;
#   2. local base images, made from Debian packages (debootstrap) and imported
#      under the names the Dockerfile's FROM lines use, so that the Dockerfile
#      stays standard and nothing is pulled: debian:bookworm-slim, and
#      rust:1-bookworm (the same base, gcc, make, git, and this machine's Rust
#      toolchain). Kept between runs, labelled (an image of either name without
#      the label, such as a pulled one, is replaced); --rebuild-bases makes them again;
#   3. `podman build` of the Dockerfile;
#   4. the image's metadata: a non-root user, the HEALTHCHECK, the settings in ENV,
#      the ports, SIGTERM;
#   5. the image's filesystem exported, and its entrypoint run from it under chroot
#      as the image's user, with the image's environment and the compose file's
#      (its command, offline), under deploy/seccomp-io-uring.json (libseccomp,
#      tests/seccomp_exec.py): /healthz answers 200, the image's HEALTHCHECK
#      command passes, a client receives BTC-USD data, /metrics passes promtool,
#      and SIGTERM ends it with status 0.
# Usage: bash tests/image.sh [--rebuild-bases]  (as root: apt-get, debootstrap, chroot, mount)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=localhost/hedgehog:ci
# The Dockerfile's FROM names, short: podman stores an imported image as
# localhost/NAME, which a FROM of NAME finds with --pull=never.
RUNTIME_BASE=debian:bookworm-slim
BUILDER_BASE=rust:1-bookworm
SUITE=bookworm
PY=/usr/bin/python3 # Debian's, with python3-seccomp
CACHE=/var/cache/hedgehog-image # debootstrap's downloaded packages, between runs
# The local bases carry this label; a change to how they are made bumps it, and
# bases with another are made again.
BASES_LABEL=io.hedgehog.ci-base
BASES_VERSION=2

say() { printf 'image: %s\n' "$*"; }
die() { printf 'image: FAILED: %s\n' "$*" >&2; exit 1; }
rebuild=false
[ "${1:-}" = --rebuild-bases ] && rebuild=true

need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v promtool >/dev/null || need+=(prometheus)
"$PY" -c 'import seccomp' 2>/dev/null || need+=(python3-seccomp)
"$PY" -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

WORK=$(mktemp -d /var/tmp/hedgehog-image.XXXXXX)
ROOT=$WORK/rootfs
PID=
CONTAINER=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    for m in dev sys proc; do mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m"; done
    [ -n "$CONTAINER" ] && podman rm -f "$CONTAINER" >/dev/null 2>&1
    # Untagged layers of earlier builds on these bases (they carry the bases' label);
    # the bases, the image and the build's cache mounts stay.
    podman image prune -f --filter "label=$BASES_LABEL" >/dev/null 2>&1
    # --one-file-system: never into a mount that is still there.
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# The Debian mirror this machine's apt uses (never a name written here).
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" 'BEGIN { RS = "" } {
            if (match($0, /(^|\n)Suites:[^\n]*/)) {
                n = split(substr($0, RSTART, RLENGTH), s, /[ \t\n]+/)
                for (i = 1; i <= n; i++) if (s[i] == suite && match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/)) {
                    u = substr($0, RSTART, RLENGTH); sub(/^\n?URIs:[ \t]*/, "", u); print u; exit
                }
            }
        }' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v suite="$SUITE" '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i + 1) == suite) print $i }' || true
}

# debootstrap --variant=minbase into $1 (with the packages in $2), then cleaned of apt's downloads.
bootstrap() {
    local dir=$1 include=$2 mirror
    mirror=$(apt_mirror 2>/dev/null | head -n1 || true)
    [ -n "$mirror" ] || die "no $SUITE mirror in /etc/apt/sources.list*"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase --cache-dir="$CACHE" ${include:+--include="$include"} \
        "$SUITE" "$dir" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap $SUITE from $mirror"; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
}

# debian:bookworm-slim: Debian's minimal system, as the official image is made.
make_runtime_base() {
    bootstrap "$WORK/base" ""
    tar -C "$WORK/base" -c . | podman import --quiet --change "LABEL $BASES_LABEL=$BASES_VERSION" \
        --change 'CMD ["bash"]' - "$RUNTIME_BASE" >/dev/null
    rm -rf --one-file-system "$WORK/base"
}

# rust:1-bookworm: the same, what the official image has that a build here uses (a C
# toolchain, make, git: glommio builds liburing), and this machine's Rust
# toolchain (without its documentation) where the official image keeps its own
# (CARGO_HOME /usr/local/cargo).
make_builder_base() {
    local sysroot
    sysroot=$(rustc --print sysroot)
    bootstrap "$WORK/builder" "gcc,libc6-dev,make,git,ca-certificates"
    mkdir -p "$WORK/builder/usr/local/rust" "$WORK/builder/usr/local/cargo/bin"
    cp -a "$sysroot"/{bin,lib,libexec,etc} "$WORK/builder/usr/local/rust/" 2>/dev/null ||
        cp -a "$sysroot"/{bin,lib} "$WORK/builder/usr/local/rust/"
    ln -s ../../rust/bin/cargo ../../rust/bin/rustc ../../rust/bin/rustdoc "$WORK/builder/usr/local/cargo/bin/"
    # This machine's trust store too: it may reach the crate registry through a
    # TLS-inspecting proxy whose CA only the host trusts.
    cp /etc/ssl/certs/ca-certificates.crt "$WORK/builder/etc/ssl/certs/ca-certificates.crt"
    tar -C "$WORK/builder" -c . | podman import --quiet \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change "LABEL $BASES_LABEL=$BASES_VERSION" --change 'CMD ["bash"]' - "$BUILDER_BASE" >/dev/null
    rm -rf --one-file-system "$WORK/builder"
}

t0=$SECONDS
say "deploy/compose.yaml (docker-compose config) and deploy/prometheus.yml (promtool check config)"
# From deploy/: Debian's docker-compose (1.29) reads the seccomp profile relative to
# the working directory, Compose v2 relative to the file, which is deploy/ either way.
(cd deploy && HEDGEHOG_SIMULATE=true docker-compose -f compose.yaml config) >"$WORK/compose.yaml" 2>"$WORK/compose.err" ||
    { cat "$WORK/compose.err" >&2; die "docker-compose config"; }
promtool check config deploy/prometheus.yml >/dev/null || die "promtool check config deploy/prometheus.yml"
"$PY" - "$WORK" <<'EOF' || die "deploy/compose.yaml"
import os, sys, yaml
work = sys.argv[1]
svc = yaml.safe_load(open(f"{work}/compose.yaml"))["services"]
h, problems = svc["hedgehog"], []
env = {k: str(v) for k, v in (h.get("environment") or {}).items()}
seccomp = [o[len("seccomp") + 1:] for o in h.get("security_opt", []) if o.startswith("seccomp")]
if not seccomp or not os.path.exists(os.path.join("deploy", seccomp[0])):
    problems.append(f"security_opt names no seccomp profile next to it: {h.get('security_opt')}")
executors = int(env.get("WEB_CONCURRENCY", "1")) + 1
memlock = (h.get("ulimits") or {}).get("memlock") or {}
if min(memlock.get("soft", 0), memlock.get("hard", 0)) < executors << 20:
    problems.append(f"ulimits.memlock {memlock} is under 1 MiB for each of {executors} executors")
if h.get("healthcheck", {}).get("test", [])[1:] != ["/usr/local/bin/hedgehog", "healthcheck"]:
    problems.append(f"healthcheck is {h.get('healthcheck')}")
if h.get("command") != ["serve"] or env.get("HEDGEHOG_SIMULATE") != "true":
    problems.append(f"HEDGEHOG_SIMULATE=true does not reach hedgehog: {h.get('command')}, {env}")
prom = yaml.safe_load(open("deploy/prometheus.yml"))
targets = [t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
metrics_port = env.get("HEDGEHOG_METRICS_ADDR", "").rpartition(":")[2]
if f"hedgehog:{metrics_port}" not in targets:
    problems.append(f"Prometheus scrapes {targets}, not hedgehog:{metrics_port} (HEDGEHOG_METRICS_ADDR)")
for p in problems:
    print("image:   " + p, file=sys.stderr)
open(f"{work}/compose.cmd", "w").write("".join(a + "\n" for a in h["command"]))
open(f"{work}/compose.env", "w").write("".join(f"{k}={v}\n" for k, v in env.items()))
print(f"image:   hedgehog: {' '.join(h['command'])}, memlock {memlock.get('soft')}, Prometheus scrapes {', '.join(targets)}")
sys.exit(1 if problems else 0)
EOF

for base in "$RUNTIME_BASE" "$BUILDER_BASE"; do
    made=$(podman image inspect --format "{{index .Config.Labels \"$BASES_LABEL\"}}" "$base" 2>/dev/null || true)
    if $rebuild || [ "$made" != "$BASES_VERSION" ]; then
        say "making $base from Debian packages (debootstrap)"
        case $base in "$RUNTIME_BASE") make_runtime_base ;; *) make_builder_base ;; esac
    else
        say "$base: kept from an earlier run (--rebuild-bases makes it again)"
    fi
done
say "base images ready ($((SECONDS - t0)) s)"

t1=$SECONDS
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# chroot isolation: the sandbox has no cgroups for a runtime; docker format: OCI
# images have no HEALTHCHECK; never pull: the bases are the local ones.
podman build --isolation=chroot --network=host --pull=never --format docker \
    --build-arg HEDGEHOG_COMMIT="$commit" -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
    { tail -40 "$WORK/build.log" >&2; die "podman build"; }
say "built $IMAGE ($((SECONDS - t1)) s; $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"

say "metadata: non-root user, HEALTHCHECK, settings in ENV, ports, SIGTERM"
podman image inspect "$IMAGE" >"$WORK/inspect.json"
"$PY" - "$WORK/inspect.json" <<'EOF' || die "the image's metadata"
import json, sys
image = json.load(open(sys.argv[1]))[0]
c = image["Config"]
env = dict(e.split("=", 1) for e in c.get("Env", []))
problems = []
user = c.get("User", "")
if user.split(":")[0] in ("", "0", "root"):
    problems.append(f"runs as root (User {user!r})")
# Docker keeps it in Config, podman beside it.
hc = (c.get("Healthcheck") or image.get("Healthcheck") or {}).get("Test") or []
if hc[1:] != ["/usr/local/bin/hedgehog", "healthcheck"]:
    problems.append(f"HEALTHCHECK is {hc!r}")
for k in ("HOST", "PORT", "WEB_CONCURRENCY", "COINBASE_WS_URL", "COINBASE_CHANNELS", "HEDGEHOG_LOG_FORMAT"):
    if k not in env:
        problems.append(f"ENV has no {k}")
if "8080/tcp" not in (c.get("ExposedPorts") or {}):
    problems.append("8080 is not exposed")
if c.get("StopSignal") not in ("SIGTERM", "15"):
    problems.append(f"STOPSIGNAL is {c.get('StopSignal')!r}")
if c.get("Entrypoint") != ["/usr/local/bin/hedgehog"]:
    problems.append(f"ENTRYPOINT is {c.get('Entrypoint')!r}")
for p in problems:
    print("image:   " + p, file=sys.stderr)
print(f"image:   User {user}, HEALTHCHECK {' '.join(hc[1:])}, ENV {' '.join(sorted(env))}")
sys.exit(1 if problems else 0)
EOF

say "exporting the image's filesystem"
CONTAINER=$(podman create --no-healthcheck "$IMAGE") # only to export its filesystem
mkdir -p "$ROOT"
podman export "$CONTAINER" | tar -C "$ROOT" -x
podman rm -f "$CONTAINER" >/dev/null
CONTAINER=
[ -s "$ROOT/etc/ssl/certs/ca-certificates.crt" ] || die "no CA certificates in the image"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
mount -t proc proc "$ROOT/proc"
mount --bind /sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"

# The compose file's hedgehog, in offline mode: its command and environment, on
# free loopback ports (this machine is shared).
mapfile -t compose_cmd <"$WORK/compose.cmd"
mapfile -t compose_env <"$WORK/compose.env"
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
mport=$(free_port)
run_env=("${image_env[@]}" "${compose_env[@]}" HOST=127.0.0.1 PORT="$port" HEDGEHOG_METRICS_ADDR="127.0.0.1:$mport")
# A command of the image, as it would run in the container: its user, that environment only.
in_image() { env -i "${run_env[@]}" chroot --userspec="$user" "$ROOT" "$@"; }

say "running the image's entrypoint with compose's command (${compose_cmd[*]}), under chroot as $user, under deploy/seccomp-io-uring.json"
"$PY" tests/seccomp_exec.py deploy/seccomp-io-uring.json -- \
    env -i "${run_env[@]}" chroot --userspec="$user" "$ROOT" /usr/local/bin/hedgehog "${compose_cmd[@]}" \
    >"$WORK/serve.log" 2>&1 &
PID=$!
end=$((SECONDS + 90))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz")" = 200 ]; do
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; die "hedgehog exited before /healthz answered"; }
    [ $SECONDS -lt $end ] || { cat "$WORK/serve.log" >&2; die "/healthz did not answer 200 within 90 s"; }
    sleep 0.2
done
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$PID/status")
[ "$uid" = "${user%%:*}" ] || die "hedgehog runs as uid $uid, not the image's user $user"
say "  /healthz 200 on :$port; hedgehog runs as uid $uid"

health=$(in_image /usr/local/bin/hedgehog healthcheck) || die "the HEALTHCHECK command failed"
say "  the HEALTHCHECK command: $health"

line=$(timeout 60 curl -sN "http://127.0.0.1:$port/api/v1/subscribe/BTC-USD" | grep -m1 '"type":"ticker"' || true)
case $line in *'"product_id":"BTC-USD"'*) ;; *) cat "$WORK/serve.log" >&2; die "no BTC-USD ticker on the stream";; esac
say "  a client received: ${line:0:90}..."

curl -sf "http://127.0.0.1:$mport/metrics" >"$WORK/metrics.txt" || die "no /metrics on HEDGEHOG_METRICS_ADDR"
promtool check metrics <"$WORK/metrics.txt" || die "promtool check metrics"
say "  /metrics on :$mport (what Prometheus scrapes): $(grep -c '^hedgehog_' "$WORK/metrics.txt") samples, promtool: ok"
grep -q '"event":"listening"' "$WORK/serve.log" || { head -5 "$WORK/serve.log" >&2; die "the log is not JSON lines"; }

kill -TERM "$PID"
status=0
wait "$PID" || status=$?
PID=
[ "$status" = 0 ] || { cat "$WORK/serve.log" >&2; die "SIGTERM: exit status $status, not 0"; }
say "  SIGTERM: exit 0"
say "ok ($SECONDS s in all)"
