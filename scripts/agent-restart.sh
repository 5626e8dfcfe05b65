#!/usr/bin/env bash
# Cold start, then a warm restart (kill -9 and start again over the rules the first
# process left), of the release agent in nftables mode on a manifests directory, in a
# private network namespace: seconds from process start to /healthz 200, RSS and peak.
#   scripts/agent-restart.sh MANIFESTS_DIR [NODE_NAME]
# (root; the directory holds Services, EndpointSlices and the Node, e.g. one JSON List.)
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 MANIFESTS_DIR [NODE_NAME]" >&2; exit 2; fi
if [ "$(id -u)" != 0 ]; then echo "agent-restart: run as root" >&2; exit 1; fi
dir=$1 node=${2:-test-node}
bin=${SWITCHYARD_BIN:-target/release/switchyard}
ns=sy-restart-$$
log=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
# shellcheck source=scripts/node-netns.sh disable=SC1091
. "$(dirname "$0")/node-netns.sh"
make_node_netns "$ns"

start() {
  local what=$1 t0 t1
  t0=$(date +%s.%N)
  ip netns exec "$ns" "$bin" run --manifests "$dir" --node-name "$node" --mode nftables \
    >"$log/$what.log" 2>&1 &
  pid=$!
  until ip netns exec "$ns" curl -sf -o /dev/null http://127.0.0.1:10256/healthz; do
    kill -0 "$pid" 2>/dev/null || { echo "agent exited; log: $log/$what.log" >&2; exit 1; }
    sleep 0.05
  done
  t1=$(date +%s.%N)
  sleep 2
  echo "$what: /healthz 200 after $(echo "$t1 - $t0" | bc) s;" \
    "RSS $(awk '/VmRSS/{print int($2/1024)}' "/proc/$pid/status") MiB," \
    "peak $(awk '/VmHWM/{print int($2/1024)}' "/proc/$pid/status") MiB"
}
start cold
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
start warm
grep -h "adopted\|synced" "$log/warm.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200
