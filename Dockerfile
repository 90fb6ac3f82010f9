# syntax=docker/dockerfile:1
#
# The four service images, one target each (auth-svc, gateway-svc,
# converter-svc, notify-svc), from the repository root:
#   docker build --target gateway-svc -t mp3converter/gateway-svc:dev .
#   minikube image build --build-opt=target=gateway-svc -t mp3converter/gateway-svc:dev .
#
# Stages: chef (toolchain + cargo-chef) -> planner (recipe.json from the
# manifests) -> builder (dependencies cooked in their own cached layer, then
# the four binaries in one build, shared by every target) -> runtime (debian
# slim, non-root user, health check) -> one small stage per service: its
# binary, its listen addresses and, for the converter, ffmpeg.

FROM rust:1.95-bookworm AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# The recipe only changes when a Cargo.toml or Cargo.lock changes, so the
# cooked dependency layer below survives edits to the sources.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# One build for the four services: they share most dependencies, so building
# them together costs little more than one, and every other image reuses it.
# (--build-arg SERVICES=gateway-svc builds just one.)
FROM chef AS builder
ARG SERVICES="auth-svc gateway-svc converter-svc notify-svc"
COPY --from=planner /src/recipe.json recipe.json
RUN set --; for s in ${SERVICES}; do set -- "$@" -p "$s"; done \
 && cargo chef cook --release --locked "$@" --recipe-path recipe.json
# The whole workspace (cargo needs every member's manifest; crates/proto's
# build.rs compiles ../../proto/*.proto with protox, so proto/ is in the context).
COPY . .
RUN set --; for s in ${SERVICES}; do set -- "$@" -p "$s"; done \
 && cargo build --release --locked "$@" \
 && for s in ${SERVICES}; do install -D -m 0755 "target/release/$s" "/out/$s"; done

FROM debian:bookworm-slim AS runtime
LABEL org.opencontainers.image.licenses="Apache-2.0"
# Debian stable's security updates keep the package versions moving, so they
# are not pinned (DL3008); the base image tag and the rebuild cadence pin them.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Numeric UID/GID so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
# Listen on all interfaces in a container (the binaries default to 127.0.0.1);
# each service's stage sets its own addresses.
ENV LOG_FORMAT=json
USER 10001:10001
# /readyz on the admin port (no curl in the image: bash's /dev/tcp).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${ADMIN_ADDR##*:} && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

FROM runtime AS auth-svc
LABEL org.opencontainers.image.title="auth-svc" \
      org.opencontainers.image.description="mp3converter auth-svc: users, login and token validation (gRPC AuthService)"
COPY --from=builder /out/auth-svc /usr/local/bin/auth-svc
ENV GRPC_ADDR=0.0.0.0:50051 \
    ADMIN_ADDR=0.0.0.0:9091
EXPOSE 50051 9091
ENTRYPOINT ["/usr/local/bin/auth-svc"]

FROM runtime AS gateway-svc
LABEL org.opencontainers.image.title="gateway-svc" \
      org.opencontainers.image.description="mp3converter gateway-svc: REST edge + gRPC MediaService"
COPY --from=builder /out/gateway-svc /usr/local/bin/gateway-svc
ENV HTTP_ADDR=0.0.0.0:8080 \
    GRPC_ADDR=0.0.0.0:50052 \
    ADMIN_ADDR=0.0.0.0:9092
EXPOSE 8080 50052 9092
ENTRYPOINT ["/usr/local/bin/gateway-svc"]

FROM runtime AS converter-svc
LABEL org.opencontainers.image.title="converter-svc" \
      org.opencontainers.image.description="mp3converter converter-svc: video -> MP3 worker (runs ffmpeg)"
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o 10001 -g 10001 -m 0750 /work
COPY --from=builder /out/converter-svc /usr/local/bin/converter-svc
ENV ADMIN_ADDR=0.0.0.0:9093 \
    WORK_DIR=/work
EXPOSE 9093
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/converter-svc"]

FROM runtime AS notify-svc
LABEL org.opencontainers.image.title="notify-svc" \
      org.opencontainers.image.description="mp3converter notify-svc: emails users when their MP3 is ready"
COPY --from=builder /out/notify-svc /usr/local/bin/notify-svc
ENV ADMIN_ADDR=0.0.0.0:9094
EXPOSE 9094
ENTRYPOINT ["/usr/local/bin/notify-svc"]
