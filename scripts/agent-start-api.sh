#!/usr/bin/env bash
# Cold start of the release agent (nftables, or MODE=ebpf / MODE=iptables) through its two sources,
# alternating, in one private network namespace: `switchyard run --manifests DIR` and
# `switchyard agent` listing the same objects from the kube API simulator (kube-sim, loaded
# once with the CRDs and every file of DIR). Before each start the namespace's ruleset is
# flushed (and, for eBPF, `switchyard cleanup` empties the private bpffs), so every start is
# cold. eBPF runs attach to a private cgroup (--cgroup-root), never the host's.
# Prints each run, then the medians.
#   [MODE=ebpf] scripts/agent-start-api.sh MANIFESTS_DIR [RUNS] [NODE_NAME]
# (root; release builds of `switchyard` and `kube-sim`: cargo build --release -p switchyard
# -p switchyard-kube-sim. The directory holds Services, EndpointSlices and the Node:
# target/release/switchyard-bench --sizes 50000 --write-manifests DIR writes the 50k one.)
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 MANIFESTS_DIR [RUNS] [NODE_NAME]" >&2; exit 2; fi
if [ "$(id -u)" != 0 ]; then echo "agent-start-api: run as root" >&2; exit 1; fi
dir=$1 runs=${2:-3} node=${3:-test-node}
bin=${SWITCHYARD_BIN:-target/release/switchyard}
sim_bin=${KUBE_SIM_BIN:-$(dirname "$bin")/kube-sim}
port=18080
ns=sy-start-api-$$
work=$(mktemp -d)
mode=${MODE:-nftables}
pid='' sim='' cgroup=''
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  if [ -n "$sim" ]; then kill -9 "$sim" 2>/dev/null || true; fi
  if [ "$mode" = ebpf ]; then
    nsenter --net="/run/netns/$ns" -- "$bin" cleanup --bpffs-root "$work/bpffs" >/dev/null 2>&1 || true
    umount "$work/bpffs" 2>/dev/null || true
  fi
  if [ -n "$cgroup" ]; then rmdir "$cgroup" 2>/dev/null || true; fi
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=scripts/node-netns.sh disable=SC1091
. "$(dirname "$0")/node-netns.sh"
make_node_netns "$ns"
# How the agent is started: `ip netns exec` (nftables) or, for eBPF, nsenter (ip netns
# exec remounts /sys, hiding the cgroup v2 mount) with a private cgroup and bpffs.
launch=(ip netns exec "$ns") mode_args=(--mode "$mode")
if [ "$mode" = ebpf ]; then
  cgroup="$(findmnt -n -t cgroup2 -o TARGET | head -1)/sy-start-api-$$"
  mkdir "$cgroup"
  mkdir "$work/bpffs"
  mount -t bpf bpf "$work/bpffs"
  launch=(nsenter --net="/run/netns/$ns" --)
  mode_args+=(--bpffs-root "$work/bpffs" --cgroup-root "$cgroup")
fi

"$bin" crd >"$work/crds.yaml"
loads=(--load "$work/crds.yaml")
for f in "$dir"/*.json "$dir"/*.yaml "$dir"/*.yml; do
  if [ -f "$f" ]; then loads+=(--load "$f"); fi
done
t0=$(date +%s.%N)
ip netns exec "$ns" "$sim_bin" --port "$port" --kubeconfig "$work/kubeconfig" "${loads[@]}" \
  >"$work/kube-sim.log" 2>&1 &
sim=$!
until [ -f "$work/kubeconfig" ] &&
  ip netns exec "$ns" curl -sf -o /dev/null "http://127.0.0.1:$port/version"; do
  kill -0 "$sim" 2>/dev/null || { cat "$work/kube-sim.log" >&2; exit 1; }
  sleep 0.2
done
echo "kube-sim loaded $dir in $(echo "$(date +%s.%N) - $t0" | bc) s"
t0=$(date +%s.%N)
for path in api/v1/services apis/discovery.k8s.io/v1/endpointslices; do
  ip netns exec "$ns" curl -sf -o /dev/null "http://127.0.0.1:$port/$path"
done
echo "kube-sim: one LIST of every Service and every EndpointSlice (curl): $(echo "$(date +%s.%N) - $t0" | bc) s"

# One cold start through `what` (manifests | api); appends "seconds rss peak" to $work/what.
start() {
  local what=$1 run=$2 t0 t1 secs rss peak
  if [ "$mode" = ebpf ]; then
    "${launch[@]}" "$bin" cleanup --bpffs-root "$work/bpffs" >/dev/null 2>&1
  fi
  ip netns exec "$ns" nft flush ruleset
  local log="$work/$what-$run.log"
  t0=$(date +%s.%N)
  if [ "$what" = manifests ]; then
    "${launch[@]}" "$bin" run --manifests "$dir" --node-name "$node" "${mode_args[@]}" \
      >"$log" 2>&1 &
  else
    KUBECONFIG="$work/kubeconfig" "${launch[@]}" "$bin" agent --node-name "$node" \
      "${mode_args[@]}" >"$log" 2>&1 &
  fi
  pid=$!
  until ip netns exec "$ns" curl -sf -o /dev/null http://127.0.0.1:10256/healthz; do
    kill -0 "$pid" 2>/dev/null || { echo "agent exited; log:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.05
  done
  t1=$(date +%s.%N)
  sleep 2
  secs=$(echo "$t1 - $t0" | bc)
  rss=$(awk '/VmRSS/{print int($2/1024)}' "/proc/$pid/status")
  peak=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$pid/status")
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=
  echo "$secs $rss $peak" >>"$work/$what"
  echo "run $run $what: /healthz 200 after $secs s (sources read after $(since "$t0" "$log" \
    'read completely|initial list complete') s, synced after $(since "$t0" "$log" synced) s);" \
    "RSS $rss MiB, peak $peak MiB"
}
# Seconds from $1 (epoch) to the last log line of $2 matching $3 (its timestamp).
since() {
  local ts
  ts=$(sed 's/\x1b\[[0-9;]*m//g' "$2" | grep -E "$3" | tail -1 | cut -d' ' -f1)
  if [ -z "$ts" ]; then echo "?"; return; fi
  echo "$(date -d "$ts" +%s.%N) - $1" | bc
}
for run in $(seq 1 "$runs"); do
  if [ $((run % 2)) = 1 ]; then start manifests "$run"; start api "$run"
  else start api "$run"; start manifests "$run"; fi
done
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
for what in manifests api; do
  echo "median $what ($runs runs): /healthz 200 after $(cut -d' ' -f1 "$work/$what" | median) s;" \
    "RSS $(cut -d' ' -f2 "$work/$what" | median) MiB, peak $(cut -d' ' -f3 "$work/$what" | median) MiB"
done
