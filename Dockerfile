# hedgehog in a container: built from the official Rust image, shipped on Debian's
# slim image as a non-root user. The README's "In a container" says how to run it:
# io_uring needs --security-opt seccomp=deploy/seccomp-io-uring.json (Docker's
# default profile refuses it) and a --ulimit memlock of 1 MiB per executor.
#
#   docker build -t hedgehog .
#   docker run --rm -p 8080:8080 --security-opt seccomp=deploy/seccomp-io-uring.json \
#       --ulimit memlock=67108864 hedgehog --simulate
#
# (podman keeps the HEALTHCHECK only with `podman build --format docker`.)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The commit, for hedgehog_build_info (.git is not in the build context).
ARG HEDGEHOG_COMMIT=unknown
# The caches keep downloaded crates and compiled dependencies between builds; the
# binary is copied out of the target cache within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    HEDGEHOG_COMMIT="$HEDGEHOG_COMMIT" cargo build --release --locked --bin hedgehog \
 && install -m 755 target/release/hedgehog /usr/local/bin/hedgehog

FROM debian:bookworm-slim
# CA certificates: rustls trusts its compiled-in Mozilla roots for the feed, and
# COINBASE_CA_FILE may name a CA of this store (or a mounted one).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed, non-root uid, so that `runAsNonRoot` and volume ownership can name it.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/hedgehog --create-home \
        --shell /usr/sbin/nologin hedgehog
COPY --from=build /usr/local/bin/hedgehog /usr/local/bin/hedgehog

# Every setting with an environment variable, at its default (README: Settings);
# the others are flags (after the image name) or the file HEDGEHOG_CONFIG names.
# WEB_CONCURRENCY: the shards; give the container as many CPUs, and 1 MiB of
# locked memory per shard (plus one for --simulate).
ENV HOST=0.0.0.0 \
    PORT=8080 \
    WEB_CONCURRENCY=2 \
    COINBASE_WS_URL=wss://ws-feed.exchange.coinbase.com \
    COINBASE_CHANNELS=ticker,matches \
    HEDGEHOG_LOG_FORMAT=json \
    RUST_LOG=info
# Unset by default, set them to use them:
#   HEDGEHOG_METRICS_ADDR=0.0.0.0:9100  GET /metrics, open, on a port of its own
#   HEDGEHOG_CONFIG=/etc/hedgehog/hedgehog.toml  settings and access rules (mount it)
#   COINBASE_CA_FILE=/path/ca.pem  an extra CA for the feed
#   HEDGEHOG_RECORD_DIR=/var/lib/hedgehog/rec  record the feed (mount a volume)
#   HEDGEHOG_TLS_CERT, HEDGEHOG_TLS_KEY  https/wss for clients (mounted PEM files), with
#   HEDGEHOG_TLS_PORT=8443 so that PORT stays plain for the HEALTHCHECK

USER 10001:10001
WORKDIR /var/lib/hedgehog
EXPOSE 8080 9100
# SIGTERM: Close 1001 to every client, exit 0 within 10 s (12 s if a shard is stuck);
# give `docker stop` more than that (--stop-timeout 15, compose's stop_grace_period).
STOPSIGNAL SIGTERM
# GET /healthz on PORT: 200 healthy; 503 (feed lost past --ready-grace) unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/hedgehog", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/hedgehog"]
CMD ["serve"]
