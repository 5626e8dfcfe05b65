#!/usr/bin/env bash
# The benchmarks that need IPVS, run inside the VM lane (Debian's kernel under
# `qemu -accel tcg`; the host kernel has no IPVS): BENCHMARKS.md "IPVS". TCG emulates
# every instruction, so read the ratios between engines measured in the same boot, not
# the absolute figures. Root; the lane's packages come from `make vm-deps`.
# Extra arguments go to every bench run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "bench-vm: run as root" >&2; exit 1; fi
"${CARGO:-cargo}" build --release -p switchyard-bench
"${CARGO:-cargo}" build -p switchyard-e2e --bin vm-run --bin vm-lane-runner
vm=target/debug/vm-run
bench=target/release/switchyard-bench
runs="${BENCH_VM_RUNS:-3}"
echo "== full sync and one-endpoint change (a pod replaced), ipvs and nftables in one boot"
"$vm" -- "$bench" --engines ipvs,nftables --sizes 1000,10000 --runs "$runs" \
  --conn-rate-services 0 "$@"
echo "== one-endpoint change: one endpoint gone, back, gone"
"$vm" -- "$bench" --engines ipvs,nftables --sizes 1000,10000 --runs "$runs" \
  --conn-rate-services 0 --one-endpoint remove-restore "$@"
echo "== connection setup rate through a ClusterIP, 1 vs 10,000 services"
"$vm" -- "$bench" --engines nftables --sizes 2 --runs "${BENCH_VM_RATE_RUNS:-5}" \
  --conn-rate-services 10000 --conn-rate-engines ipvs,nftables,iptables-legacy,iptables-nft "$@"
