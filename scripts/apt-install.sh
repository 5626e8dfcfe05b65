#!/usr/bin/env bash
# apt-install.sh WHO PACKAGE...: installs Debian packages with --no-install-recommends,
# quietly, after one `apt-get update`. WHO names the calling script in messages. The one
# place the install scripts talk to apt; needs root.
set -euo pipefail
who=$1
shift
[ $# -gt 0 ] || exit 0
echo "$who: installing $*"
if [ "$(id -u)" != 0 ]; then
  echo "$who: missing $* and not root: run as root (or sudo make ...)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
