#!/usr/bin/env bash
# Runs the benchmarks (root: they program a kernel inside private network namespaces)
# and prints markdown tables; BENCHMARKS.md holds the figures and how they were taken.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "bench: run as root" >&2; exit 1; fi
target/release/switchyard-bench --agent target/release/switchyard "$@"
