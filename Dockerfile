# bestofn container image: a release build in the Rust image, run from a distroless image as a
# non-root user. The eval features (parquet, plot) are left out unless asked for:
#   docker build -t bestofn .
#   docker build --build-arg FEATURES="parquet plot" -t bestofn:eval .
# The production build, laid out from a profile of the load harness's traffic (PGO and BOLT,
# scripts/pgo-build.sh: about a third less CPU a light-load request, BENCHMARKS.md, issue #17);
# it runs the harness inside the build stage and takes ~15 minutes on two cores:
#   docker build --build-arg OPTIMISE=pgo -t bestofn .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
ARG FEATURES=""
ARG OPTIMISE=""
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY src ./src
COPY benches ./benches
COPY assets ./assets
COPY scripts ./scripts
# With OPTIMISE=pgo: nginx is the harness's pass-through origin, llvm-19 merges the PGO profile
# (rustc's LLVM writes a raw format LLVM 19 reads), bolt-19 rewrites the linked binary. Not pinned
# to versions: bookworm-security replaces nginx's, and a pinned one would vanish from the mirror.
# hadolint ignore=DL3008
RUN if [ "${OPTIMISE}" = "pgo" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends nginx-light llvm-19 bolt-19 \
        && rm -rf /var/lib/apt/lists/* \
        && scripts/pgo-build.sh --locked --features "${FEATURES}"; \
    else \
        cargo build --release --locked --bin bestofn --features "${FEATURES}"; \
    fi

# glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/bestofn /usr/local/bin/bestofn
COPY config/bestofn.toml /etc/bestofn/bestofn.toml
USER 65532:65532
EXPOSE 8080
# Probes: GET /healthz on the listen port (the image has no shell or curl for a HEALTHCHECK).
ENTRYPOINT ["/usr/local/bin/bestofn"]
CMD ["serve", "--config", "/etc/bestofn/bestofn.toml", "--listen", "0.0.0.0:8080"]
