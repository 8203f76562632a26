# syntax=docker/dockerfile:1
# Tether in a container: a build stage on the official Rust image with the dependencies cached
# in a layer of their own, and a minimal runtime stage (debian-slim: CA certificates, the binary,
# a non-root user). Configuration: /etc/tether/*.toml (every file there, in name order) and
# TETHER_* variables.
#
#   docker build -t tether .
#   docker run -p 8080:8080 -v "$PWD/tether.toml:/etc/tether/tether.toml:ro" tether

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependency layer: the manifests with stub sources, built once and cached until a manifest or
# the lock file changes.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY sidecar/Cargo.toml sidecar/Cargo.toml
COPY actors/Cargo.toml actors/Cargo.toml
COPY config/Cargo.toml config/Cargo.toml
COPY integration-tests/Cargo.toml integration-tests/Cargo.toml
COPY examples/Cargo.toml examples/Cargo.toml
# The stub build may fail on a crate whose build needs real sources; the dependencies it has
# compiled by then stay cached, which is all this layer is for.
RUN for c in sidecar actors config integration-tests examples; do mkdir -p "$c/src" && echo '' > "$c/src/lib.rs"; done \
 && echo 'fn main() {}' > sidecar/src/main.rs \
 && mkdir -p examples/src/bin integration-tests/src/bin \
 && for b in examples/src/bin/echo_backend.rs examples/src/bin/demo.rs examples/src/bin/chat.rs integration-tests/src/bin/pool_scale.rs integration-tests/src/bin/browser_fixture.rs; do echo 'fn main() {}' > "$b"; done \
 && (cargo build --release --locked -p tether || true)
COPY . .
# The build context has no .git: pass the commit for `tether --version`, e.g.
# docker build --build-arg TETHER_BUILD_COMMIT="$(git rev-parse --short=12 HEAD)" .
ARG TETHER_BUILD_COMMIT=unknown
RUN touch sidecar/src/main.rs sidecar/src/lib.rs actors/src/lib.rs config/src/lib.rs \
 && cargo build --release --locked -p tether \
 && install -D -m 0755 target/release/tether /out/tether

FROM debian:bookworm-slim
# DL3008 ignored on purpose: ca-certificates stays unpinned so that every build gets the
# current CA bundle of the bookworm release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tether \
 && mkdir -p /etc/tether
COPY --from=build /out/tether /usr/local/bin/tether
COPY examples/docker/tether.toml /etc/tether/tether.toml
USER 10001
# 8080: the listener of the bundled configuration. The admin endpoint stays on the container's
# loopback (127.0.0.1:9901, where HEALTHCHECK reaches it): exposing it is a deliberate act,
# TETHER_ADMIN__BIND=0.0.0.0:9901 together with TETHER_ADMIN__TOKEN (see the README).
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/tether", "health", "--config-dir", "/etc/tether"]
ENTRYPOINT ["/usr/local/bin/tether", "--config-dir", "/etc/tether"]
