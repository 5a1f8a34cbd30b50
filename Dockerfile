# syntax=docker/dockerfile:1
# The meshlimit image: one binary, every command (control-plane, dataplane, agent, apply, ...).
#   docker build -t meshlimit:0.1.0 .
#   docker run --rm meshlimit:0.1.0 validate -f - < policy.yaml
# It runs as an unprivileged user (65532); only the kernel agent needs root, with CAP_BPF,
# CAP_NET_ADMIN and CAP_PERFMON (see deploy/kubernetes/20-agent.yaml).

# Build: the toolchain rust-toolchain.toml pins, with clang and the libbpf headers for the BPF
# program the binary embeds.
FROM rust:1.95.0-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p meshlimit-cli --bin meshlimit \
 && install -D -m 0755 target/release/meshlimit /out/meshlimit

# Run: the same Debian release as the build (the binary links its glibc), nothing else.
FROM debian:bookworm-slim AS runtime
RUN install -d -o 65532 -g 65532 -m 0700 /var/lib/meshlimit
COPY --from=build /out/meshlimit /usr/local/bin/meshlimit
COPY LICENSE /usr/share/doc/meshlimit/LICENSE
# The control plane's default store is then /var/lib/meshlimit/store.redb.
ENV XDG_DATA_HOME=/var/lib
WORKDIR /var/lib/meshlimit
USER 65532:65532
EXPOSE 5681
ENTRYPOINT ["/usr/local/bin/meshlimit"]
CMD ["--help"]
