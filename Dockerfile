# syntax=docker/dockerfile:1
# Build stage: the official Rust image, dependencies cached in their own layer.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY sidecar/Cargo.toml sidecar/Cargo.toml
COPY actors/Cargo.toml actors/Cargo.toml
COPY config/Cargo.toml config/Cargo.toml
COPY integration-tests/Cargo.toml integration-tests/Cargo.toml
COPY examples/Cargo.toml examples/Cargo.toml
RUN for c in sidecar actors config integration-tests examples; do mkdir -p $c/src && echo '' > $c/src/lib.rs; done \
 && echo 'fn main() {}' > sidecar/src/main.rs \
 && mkdir -p examples/src/bin && echo 'fn main() {}' > examples/src/bin/echo_backend.rs && echo 'fn main() {}' > examples/src/bin/demo.rs \
 && cargo build --release -p tether || true
COPY . .
RUN touch sidecar/src/main.rs sidecar/src/lib.rs actors/src/lib.rs config/src/lib.rs \
 && cargo build --release -p tether --locked

# Runtime stage: slim Debian, CA certificates, the binary, a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home tether
COPY --from=build /src/target/release/tether /usr/local/bin/tether
USER 10001
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/tether"]
