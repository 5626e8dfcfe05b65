#!/usr/bin/env bash
# The long fault-injection run (`make chaos`, not part of CI): the same tests `make test`
# runs short (e2e/tests/chaos_*.rs, the fuzz tests), with long counts. Needs root.
# Override any count from the environment, e.g. SY_CHAOS_KILLS=300 make chaos.
set -euo pipefail
cd "$(dirname "$0")/.."

export SY_CHAOS_KILLS="${SY_CHAOS_KILLS:-100}"
export SY_CHAOS_RESTARTS="${SY_CHAOS_RESTARTS:-10}"
export SY_FUZZ_CASES="${SY_FUZZ_CASES:-20000}"
export SY_CHAOS_API_OUTAGE_SECS="${SY_CHAOS_API_OUTAGE_SECS:-180}"
export SY_CHAOS_SWITCH_ROUNDS="${SY_CHAOS_SWITCH_ROUNDS:-5}"
# The eBPF <-> netfilter live switches, quarantined from make test (RELIABILITY.md).
export SY_CHAOS_EBPF_SWITCH="${SY_CHAOS_EBPF_SWITCH:-1}"
export SWITCHYARD_BIN="${SWITCHYARD_BIN:-$PWD/target/debug/switchyard}"

cargo build --workspace --bins
echo "== fuzzing: ${SY_FUZZ_CASES} cases per property"
cargo test -p switchyard-core --test fuzz_manifests
cargo test -p switchyard-netlink --test fuzz
echo "== faults: ${SY_CHAOS_KILLS} kills and ${SY_CHAOS_RESTARTS} restarts of each kind per engine"
for t in chaos_kill chaos_restart chaos_drift chaos_switch chaos_api; do
	cargo test -p switchyard-e2e --test "$t" -- --nocapture --test-threads=2
done
