#!/usr/bin/env bash
# Installs what vdfarm needs on Debian 12, as root: Debian packages and a
# Python virtual environment in .venv with vdfarm in it.
#   scripts/install.sh          what the server and the demo need
#   scripts/install.sh --test   plus what the test suite and benchmarks need
# Rules: idempotent (a second run installs nothing new), no downloads outside
# the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

debs=(python3-venv qemu-utils qemu-system-x86 libnbd-bin syslinux syslinux-common
      mtools dosfstools fdisk busybox-static kmod e2fsprogs nbd-client)
# e2fsprogs (mkfs.ext4 -d) and nbd-client: `vdfarm image sample --netboot`
# builds an ext4 root and an initramfs holding the kernel's NBD client; the
# tests also run nbd-client on the host. Its postinst loads no module (it
# only refreshes the host's initramfs when initramfs-tools is there) and
# asks nothing.
# rsync: the peer of bench/replication_bench.py.
# dnsmasq-base (the binary, no system service), ipxe (undionly.kpxe,
# ipxe.efi in /usr/lib/ipxe), iproute2 and curl (its tftp:// client): the
# tests of `vdfarm pxe dnsmasq-config` run dnsmasq in a network namespace.
[ $want_test = 1 ] && debs+=(fio nbdkit python3-libnbd rsync dnsmasq-base ipxe iproute2 curl)
ls /boot/vmlinuz-* >/dev/null 2>&1 || debs+=(linux-image-amd64)

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
extra=""
[ $want_test = 1 ] && extra="[test]"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extra}"
