#!/bin/sh
# /sbin/init of the network-bootable sample's root file system (busybox sh,
# PID 1 after the initramfs's switch_root; /dev, /proc and /sys are mounted).
#
# Job: prove the root file system came over NBD and keeps what is written
# to it: print a marker, write a file, drop the page cache so the read
# goes back to the server, read the file back, print a second marker and
# power off. Lines for the host (serial console):
#   VDFARM-ROOT-UP <id> <root device> <file system>
#   VDFARM-ROOT-BEFORE <what the probe file held: empty on a fresh boot>
#   VDFARM-ROOT-READBACK ok|mismatch <id>
#   VDFARM-ROOT-DONE <id>
#   VDFARM-ERROR <why>   then power off at once

PATH=/bin:/sbin
export PATH
PROBE=/var/lib/vdfarm-probe

die() {
    echo "VDFARM-ERROR $*"
    sync
    poweroff -f
    sleep 10
    exit 1
}

id=noid
for word in $(cat /proc/cmdline); do
    case "$word" in
        vdfarm.id=*) id=$(printf '%s' "${word#vdfarm.id=}" | tr -cd 'A-Za-z0-9._-' | head -c 64) ;;
    esac
done
set -- $(grep ' / ' /proc/mounts | grep -v '^rootfs')
echo "VDFARM-ROOT-UP ${id:-noid} $1 $3"
echo "VDFARM-ROOT-BEFORE $(head -c 64 "$PROBE" 2>/dev/null | tr -cd 'A-Za-z0-9 ._-' || true)"

mkdir -p "${PROBE%/*}" || die "cannot make ${PROBE%/*}"
{ echo "VDFARM-PROBE $id"; dd if=/dev/urandom bs=4096 count=16 2>/dev/null; } > "$PROBE" ||
    die "cannot write $PROBE"
sync
written=$(sha256sum < "$PROBE" | cut -d' ' -f1)
echo 3 > /proc/sys/vm/drop_caches
read_back=$(sha256sum < "$PROBE" | cut -d' ' -f1)
if [ "$written" = "$read_back" ]; then
    echo "VDFARM-ROOT-READBACK ok $id"
else
    echo "VDFARM-ROOT-READBACK mismatch $id"
fi
sync
echo "VDFARM-ROOT-DONE $id"
poweroff -f
sleep 10
