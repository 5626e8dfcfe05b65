#!/usr/bin/env bash
# Sourced by the 50k start benchmarks (agent-restart.sh, agent-start-api.sh): a private
# network namespace that looks like a node to the agent — loopback up, an `eth0` with
# 192.168.0.2/24 and a default route, as a real node has (without one, traffic to a VIP
# dies at routing before any rule sees it).
#   make_node_netns NAME
make_node_netns() {
  local ns=$1
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link add eth0 type veth peer name eth0p
  ip -n "$ns" addr add 192.168.0.2/24 dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via 192.168.0.1
}
