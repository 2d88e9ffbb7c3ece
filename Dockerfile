# bestofn container image: a release build in the Rust image, run from a distroless image as a
# non-root user. The eval features (parquet, plot) are left out unless asked for:
#   docker build -t bestofn .
#   docker build --build-arg FEATURES="parquet plot" -t bestofn:eval .
# The image's binary is exactly what `cargo build --release` gives.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
ARG FEATURES=""
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY src ./src
COPY benches ./benches
COPY crates ./crates
RUN cargo build --release --locked --bin bestofn --features "${FEATURES}"

# glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/bestofn /usr/local/bin/bestofn
COPY config/bestofn.toml /etc/bestofn/bestofn.toml
USER 65532:65532
EXPOSE 8080
# Probes: GET /healthz on the listen port (the image has no shell or curl for a HEALTHCHECK).
ENTRYPOINT ["/usr/local/bin/bestofn"]
CMD ["serve", "--config", "/etc/bestofn/bestofn.toml", "--listen", "0.0.0.0:8080"]
