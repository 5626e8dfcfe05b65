#!/usr/bin/env bash
# Installs the system packages Switchyard's build, tests, demo and benchmarks need, when
# they are missing. Idempotent; needs root (apt-get) only when something is missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have nft || need+=(nftables)
have iptables-restore || need+=(iptables)
have ip || need+=(iproute2)
have conntrack || need+=(conntrack)
have ipset || need+=(ipset)
have pgrep || need+=(procps)
have shellcheck || need+=(shellcheck)
have jq || need+=(jq)
have bpftool || need+=(bpftool)
have cc || need+=(gcc)

"$(dirname "$0")/apt-install.sh" install-deps "${need[@]}"

if ! have cargo; then
  echo "install-deps: cargo not found on PATH (expected the machine's rustup toolchain in ~/.cargo/bin)" >&2
  exit 1
fi
