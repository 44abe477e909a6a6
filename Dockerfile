# syntax=docker/dockerfile:1
# Outrigger sidecar image: a static-ish Rust binary on distroless, non-root.
#
#   docker build -t outrigger:dev .
#   docker run --rm -e OUTRIGGER_HTTP__ADDR=0.0.0.0:7480 -p 127.0.0.1:7480:7480 outrigger:dev
#
# The build stage compiles the protobuf definitions with a pure-Rust
# compiler (no protoc) and needs nothing beyond the Rust toolchain.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artefacts between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    rustup target add wasm32-wasip2 \
    && cargo build --release --locked -p outrigger --bin outrigger \
    && cargo build --release --locked --target wasm32-wasip2 \
        -p tenant-guard -p tiered-limits -p invalidate-rules -p envelope -p audit-log \
    && install -D target/release/outrigger /out/outrigger \
    && install -D -m 0644 -t /out/plugins target/wasm32-wasip2/release/*.wasm

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/outrigger /usr/local/bin/outrigger
# The shipped plugins (tenant-guard, tiered-limits, invalidate-rules,
# envelope, audit-log): name them in [[plugins]] by these paths.
COPY --from=build /out/plugins /usr/lib/outrigger/plugins
# In a pod the app reaches the API on localhost; kubelet reaches the ops
# listener (probes, metrics) on the pod IP.
ENV OUTRIGGER_HTTP__ADDR=127.0.0.1:7480 \
    OUTRIGGER_GRPC__ADDR=127.0.0.1:7481 \
    OUTRIGGER_OPS__ADDR=0.0.0.0:7482 \
    OUTRIGGER_LOG__FORMAT=json
EXPOSE 7482
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/outrigger"]
CMD ["serve"]
