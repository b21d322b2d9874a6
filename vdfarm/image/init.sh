#!/bin/sh
# /init of the vdfarm sample image (busybox sh, PID 1 in the initramfs).
#
# Job: prove that the guest booted from its disk and that its disk keeps what
# it writes. Every line for the host starts with VDFARM- and goes to the serial
# console (stdout is /dev/console = ttyS0):
#   VDFARM-BOOT-OK <id>                 the kernel and this script run
#   VDFARM-DISK-SIZE <bytes>            size of /dev/vda
#   VDFARM-PATTERN-BEFORE <text|empty>  the pattern block as found, before writing
#   VDFARM-PATTERN-WRITE direct|buffered  how the pattern was written (O_DIRECT or not)
#   VDFARM-PATTERN-READBACK ok|mismatch <id>
#   VDFARM-ERROR <why>                  then power off at once
#   VDFARM-DONE <id>                    just before power off
# Rules: fail loudly, never silently. Without virtio_blk /dev/vda does not
# exist and `dd of=/dev/vda` would create a plain file in devtmpfs, so the
# block device is checked before any write. The pattern block lies outside the
# FAT partition, PATTERN_OFFSET_FROM_END bytes before the end of the disk
# (both numbers come from /etc/vdfarm.conf, written by vdfarm.image.sample).

PATH=/bin
export PATH

die() {
    echo "VDFARM-ERROR $*"
    sync
    poweroff -f
    sleep 10
    exit 1
}

clean_id() {
    tr -cd 'A-Za-z0-9._-' | head -c 64
}

boot_id() {
    for word in $(cat /proc/cmdline); do
        case "$word" in
            vdfarm.id=*) echo "${word#vdfarm.id=}" | clean_id; return ;;
        esac
    done
    serial=$(cat /sys/class/dmi/id/product_serial 2>/dev/null | clean_id)
    case "$serial" in
        "" | NotSpecified | None | "0") echo noid ;;
        *) echo "$serial" ;;
    esac
}

load_modules() {
    for module in $(cat /etc/vdfarm-modules); do
        if ! out=$(insmod "$module" 2>&1); then
            echo "VDFARM-WARN insmod $module: $out"
        fi
    done
}

wait_for_disk() {
    tries=0
    while [ ! -b /dev/vda ] && [ "$tries" -lt 50 ]; do
        usleep 100000
        tries=$((tries + 1))
    done
    [ -b /dev/vda ] || die "no /dev/vda"
}

drop_caches() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
}

# read_block FILE: the pattern block of /dev/vda into FILE, bypassing the page cache.
read_block() {
    dd if=/dev/vda of="$1" bs="$PATTERN_BLOCK_SIZE" count=1 skip="$pattern_block" \
        iflag=direct 2>/dev/null && return 0
    drop_caches
    dd if=/dev/vda of="$1" bs="$PATTERN_BLOCK_SIZE" count=1 skip="$pattern_block" 2>/dev/null
}

# write_block FILE: FILE (one block) onto the pattern block of /dev/vda, durably.
write_block() {
    io_mode=direct
    dd if="$1" of=/dev/vda bs="$PATTERN_BLOCK_SIZE" count=1 seek="$pattern_block" \
        oflag=direct conv=notrunc,fsync 2>/dev/null && { drop_caches; return 0; }
    io_mode=buffered
    dd if="$1" of=/dev/vda bs="$PATTERN_BLOCK_SIZE" count=1 seek="$pattern_block" \
        conv=notrunc,fsync 2>/dev/null || die "pattern write failed"
    drop_caches
}

# first_text FILE: the printable text at the start of FILE, up to 40 chars, or 'empty'.
first_text() {
    text=$(head -c 40 "$1" | tr '\0' '\n' | head -n 1 | tr -cd 'A-Za-z0-9 ._-')
    echo "${text:-empty}"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /etc/vdfarm.conf

load_modules
id=$(boot_id)
echo "VDFARM-BOOT-OK $id"

wait_for_disk
disk_bytes=$(( $(cat /sys/block/vda/size) * 512 ))
echo "VDFARM-DISK-SIZE $disk_bytes"
pattern_offset=$((disk_bytes - PATTERN_OFFSET_FROM_END))
[ "$pattern_offset" -gt 0 ] || die "disk of $disk_bytes bytes is too small"
[ $((pattern_offset % PATTERN_BLOCK_SIZE)) -eq 0 ] || die "pattern offset $pattern_offset unaligned"
pattern_block=$((pattern_offset / PATTERN_BLOCK_SIZE))

read_block /tmp/before.blk || die "pattern read failed"
echo "VDFARM-PATTERN-BEFORE $(first_text /tmp/before.blk)"

printf 'VDFARM-PATTERN %s' "$id" > /tmp/pattern.txt
dd if=/tmp/pattern.txt of=/tmp/pattern.blk bs="$PATTERN_BLOCK_SIZE" count=1 conv=sync 2>/dev/null
write_block /tmp/pattern.blk
echo "VDFARM-PATTERN-WRITE $io_mode"
read_block /tmp/after.blk || die "pattern read-back failed"
if cmp -s /tmp/pattern.blk /tmp/after.blk; then
    echo "VDFARM-PATTERN-READBACK ok $id"
else
    echo "VDFARM-PATTERN-READBACK mismatch $id"
fi

sync
echo "VDFARM-DONE $id"
poweroff -f
sleep 10
