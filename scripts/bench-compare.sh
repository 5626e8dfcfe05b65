#!/usr/bin/env bash
# Compares two builds of switchyard-bench (say, a release before a change and after it)
# in one run, interleaved so the machine's noise hits both alike:
#   scripts/bench-compare.sh OLD_BENCH NEW_BENCH [SETS]
# prints each set's tables (nftables at 10k and 50k, iptables at 10k, medians of 3).
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 OLD_BENCH NEW_BENCH [SETS]" >&2; exit 2; fi
if [ "$(id -u)" != 0 ]; then echo "bench-compare: run as root" >&2; exit 1; fi
old=$1 new=$2 sets=${3:-2}
for set in $(seq 1 "$sets"); do
  for who in old new; do
    bench=$old; [ "$who" = new ] && bench=$new
    echo "### set $set, $who ($bench)"
    "$bench" --engines nftables --sizes 10000,50000 --runs 3 --conn-rate-services 0
    "$bench" --engines iptables-legacy,iptables-nft --sizes 10000 --runs 3 --conn-rate-services 0
  done
done
