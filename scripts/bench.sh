#!/usr/bin/env bash
# Runs the benchmarks behind BENCHMARKS.md (root: they program a kernel inside private
# network namespaces) and prints their markdown tables. Extra arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "bench: run as root" >&2; exit 1; fi
bench=target/release/switchyard-bench
"$bench" --engines nftables --sizes 1000,10000,50000 --runs 3 --conn-rate-services 0 \
  --agent target/release/switchyard "$@"
"$bench" --engines iptables-legacy,iptables-nft --sizes 1000,10000 --runs 3 --conn-rate-services 0 "$@"
"$bench" --engines iptables-legacy,iptables-nft --sizes 50000 --runs 3 --conn-rate-services 0 "$@"
"$bench" --engines ebpf --sizes 1000,10000,50000 --runs 3 --conn-rate-services 0 \
  --agent target/release/switchyard --agent-mode ebpf "$@"
"$bench" --engines ebpf --sizes 10 --runs 3 --conn-rate-services 10000,50000 \
  --conn-rate-engines ebpf,nftables,iptables-legacy,iptables-nft "$@"
# Standalone mode, file write to traffic on the new backend (inotify), 10k services: the
# e2e test measures it with the release binary and prints the table row.
echo
echo "| agent | services | file write to traffic ms, median (min–max) of 9 |"
echo "|---|---:|---:|"
SWITCHYARD_BIN=target/release/switchyard "${CARGO:-cargo}" test --release -q -p switchyard-e2e \
  --test programming_latency -- --nocapture | grep '^| standalone'
