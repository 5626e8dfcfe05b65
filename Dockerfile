# syntax=docker/dockerfile:1
# The `switchyard` image: one binary (agent, operator, probe, cleanup, crd) plus the
# userspace tools its engines drive. Build from the repository root:
#   docker build -t switchyard:dev .

# ---- build ------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
# clang/llvm and libbpf's headers build the eBPF engine's bpf/*.c (build.rs); nothing
# else beyond the Rust image is needed (TLS is rustls + ring).
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache the registry and target dir across builds; copy the binary out of the cache
# mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p switchyard --bin switchyard \
 && install -D -m 0755 target/release/switchyard /out/switchyard

# ---- runtime ----------------------------------------------------------------------
FROM debian:bookworm-slim
# nftables: nft (nftables engine); iptables: iptables-restore/-save, nft and legacy
# backends (iptables engine, IPVS helper rules); ipset (IPVS engine); conntrack (the
# conntrack CLI for debugging; stale UDP flows are deleted over netlink); iproute2 (ip,
# for the IPVS dummy interface and debugging); bpftool (inspecting the eBPF engine's
# pinned maps); ca-certificates (API server TLS when not using the in-cluster CA).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      nftables iptables ipset conntrack iproute2 bpftool ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/switchyard /usr/local/bin/switchyard
# The agent runs as root with NET_ADMIN/NET_RAW (see the chart); the operator as 65532.
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["--help"]
