#!/usr/bin/env bash
# Installs what the IPVS VM lane (e2e/vm/, switchyard_e2e::vm) needs, when it is missing:
#   qemu-system-x86    qemu-system-x86_64 (TCG; the lane never uses KVM)
#   linux-image-amd64  Debian's kernel, whose IP_VS and br_netfilter are modules
#   busybox-static     the initramfs's only program
#   tiny-initramfs     satisfies the kernel package's "linux-initramfs-tool" dependency
#                      without initramfs-tools, which pulls in udev and systemd
#   ipvsadm            the operator's view of IPVS: the IPVS engine's tests read its
#                      output in the VM (the host's binaries run there unchanged)
# All with --no-install-recommends (qemu's recommends are a desktop's worth). Idempotent,
# and a no-op (a few dpkg-query calls) when everything is there. Needs root to install.
set -euo pipefail

need=()
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
installed busybox-static || need+=(busybox-static)
command -v ipvsadm >/dev/null 2>&1 || need+=(ipvsadm)
installed linux-image-amd64 || need+=(tiny-initramfs linux-image-amd64)

"$(dirname "$0")/apt-install.sh" install-vm-lane-deps "${need[@]}"

# The lane boots the newest installed Debian kernel: check it is there with its modules.
kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
if [ -z "$kernel" ]; then
  echo "install-vm-lane-deps: no /boot/vmlinuz-*-amd64 after installing linux-image-amd64" >&2
  exit 1
fi
release=${kernel#vmlinuz-}
if [ ! -f "/lib/modules/$release/modules.dep" ]; then
  echo "install-vm-lane-deps: /lib/modules/$release/modules.dep is missing" >&2
  exit 1
fi
