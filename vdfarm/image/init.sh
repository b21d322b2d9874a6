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
#   VDFARM-LOOP <round> <MiB> <sha256>  (with a control disk) one round: the
#                                       sha256 of LOOP_READ_MIB MiB read at MiB <MiB>
#   VDFARM-LOOP-END <rounds> ok         the blocks the rounds wrote, read back
#   VDFARM-DONE <id>                    just before power off
# Rules: fail loudly, never silently. Without virtio_blk /dev/vda does not
# exist and `dd of=/dev/vda` would create a plain file in devtmpfs, so the
# block device is checked before any write. The pattern block lies outside the
# FAT partition, PATTERN_OFFSET_FROM_END bytes before the end of the disk
# (both numbers come from /etc/vdfarm.conf, written by vdfarm.image.sample).
# With a second virtio disk (/dev/vdb, the host's control disk) the guest then
# keeps reading and writing its disk in rounds until the control disk's first
# bytes say "stop": each round reads LOOP_READ_MIB MiB (O_DIRECT, moving over
# the first LOOP_SPAN_MIB MiB, where the kernel and initramfs lie) and prints
# their hash, writes one block of the tail after the
# pattern block and reads it back; at the end every block the rounds wrote is
# read back once more. So the host can make things happen (kill a server)
# while the guest does I/O, for as long as it needs.

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

# write_loop_block ROUND BLOCK: ROUND's block onto tail block BLOCK, read back.
write_loop_block() {
    printf 'VDFARM-LOOP %s %s' "$id" "$1" > /tmp/loop.txt
    dd if=/tmp/loop.txt of=/tmp/loop.blk bs="$PATTERN_BLOCK_SIZE" count=1 conv=sync 2>/dev/null
    dd if=/tmp/loop.blk of=/dev/vda bs="$PATTERN_BLOCK_SIZE" count=1 seek="$2" \
        oflag=direct conv=notrunc,fsync 2>/dev/null || die "round $1: write failed"
    dd if=/dev/vda of=/tmp/loop.back bs="$PATTERN_BLOCK_SIZE" count=1 skip="$2" \
        iflag=direct 2>/dev/null || die "round $1: read-back failed"
    cmp -s /tmp/loop.blk /tmp/loop.back || die "round $1: block $2 read back wrong"
    dd if=/tmp/loop.blk of=/tmp/tail.img bs="$PATTERN_BLOCK_SIZE" count=1 \
        seek=$(($2 - pattern_block - 1)) conv=notrunc 2>/dev/null
}

stop_asked() {
    [ "$(dd if=/dev/vdb bs=4096 count=1 iflag=direct 2>/dev/null | head -c 4)" = stop ]
}

# loop_rounds: read and write /dev/vda in rounds until the control disk says stop.
loop_rounds() {
    tail_blocks=$((PATTERN_OFFSET_FROM_END / PATTERN_BLOCK_SIZE - 1))
    span=$((pattern_offset / 1048576))
    [ "$span" -gt "$LOOP_SPAN_MIB" ] && span=$LOOP_SPAN_MIB
    read_mibs=$((span - LOOP_READ_MIB + 1))
    dd if=/dev/vda of=/tmp/tail.img bs="$PATTERN_BLOCK_SIZE" count="$tail_blocks" \
        skip=$((pattern_block + 1)) iflag=direct 2>/dev/null || die "tail read failed"
    round=0
    until stop_asked; do
        round=$((round + 1))
        mib=$(( (round * 7) % read_mibs ))
        dd if=/dev/vda of=/tmp/loop.read bs=1048576 count="$LOOP_READ_MIB" skip="$mib" \
            iflag=direct 2>/dev/null || die "round $round: read failed"
        echo "VDFARM-LOOP $round $mib $(sha256sum < /tmp/loop.read | cut -d' ' -f1)"
        write_loop_block "$round" $((pattern_block + 1 + (round - 1) % tail_blocks))
    done
    dd if=/dev/vda of=/tmp/tail.back bs="$PATTERN_BLOCK_SIZE" count="$tail_blocks" \
        skip=$((pattern_block + 1)) iflag=direct 2>/dev/null || die "tail read-back failed"
    cmp -s /tmp/tail.img /tmp/tail.back || die "the blocks written in $round rounds read back wrong"
    echo "VDFARM-LOOP-END $round ok"
}

[ -b /dev/vdb ] && loop_rounds

sync
echo "VDFARM-DONE $id"
poweroff -f
sleep 10
