# Switchyard: the two commands a newcomer runs are `make demo` and `make test`.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all deps vm-deps build demo test lint unit kernel bench bench-vm chaos clean

all: build

deps:
	@scripts/install-deps.sh

# qemu, Debian's kernel and static busybox for the IPVS VM lane (e2e/tests/vm_lane.rs).
vm-deps:
	@scripts/install-vm-lane-deps.sh

build: deps
	$(CARGO) build --workspace --all-targets

# A sandboxed node (network namespaces) with three echo pods, programmed by the real agent
# in MODE (nftables, iptables or ebpf).
MODE ?= nftables
demo: deps
	$(CARGO) build --release -p switchyard -p switchyard-e2e --bins
	SWITCHYARD_BIN=$(CURDIR)/target/release/switchyard \
	SWITCHYARD_CGROUP_CLIENT=$(CURDIR)/target/release/cgroup-client \
	$(CURDIR)/target/release/demo $(MODE)

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	shellcheck scripts/*.sh .ci/run e2e/kind/*.sh e2e/vm/init e2e/vm/modprobe

# Everything: lint, unit and property tests, kernel tests, scenarios against the real binary,
# and the IPVS VM lane.
test: lint vm-deps
	scripts/check-chart.sh
	$(CARGO) build --workspace --bins
	SWITCHYARD_BIN=$(CURDIR)/target/debug/switchyard $(CARGO) test --workspace --no-fail-fast

# The long fault-injection run (RELIABILITY.md): >= 100 kill -9 per engine, repeated
# restarts under load, 20000 fuzz cases per property. Needs root; not part of CI.
chaos: deps
	scripts/chaos.sh

bench: deps
	$(CARGO) build --release --workspace --bins --benches
	scripts/bench.sh

# The IPVS benchmarks, inside the qemu VM lane (the host kernel has no IPVS). Root.
bench-vm: deps vm-deps
	scripts/bench-vm.sh

clean:
	$(CARGO) clean
