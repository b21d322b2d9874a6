#!/bin/sh
# /init of the VM in test_nbd_client_tls_vm.py (busybox sh, PID 1 in the initramfs).
#
# Job: drive the Linux kernel's NBD client over TLS against vdfarm, the way a
# diskless device would: load nbd and virtio_net, bring up eth0 on qemu's
# user network, attach EXPORT with Debian's nbd-client and this device's
# certificate, read and hash the start of /dev/nbd0, write one block and read
# it back past the page cache, then try OTHER_EXPORT with the same certificate
# (which the server must refuse), detach and power off. Settings come from
# /etc/vdfarm.conf; certificates from /etc/vdfarm/tls/. Every line for the
# host starts with VDFARM- on the serial console:
#   VDFARM-NET-UP
#   VDFARM-NBD-ATTACH <export> rc=<exit code of nbd-client>
#   VDFARM-NBD-SIZE <bytes of /dev/nbd0>
#   VDFARM-NBD-READ <MiB> <sha256 of the first MiB of /dev/nbd0>
#   VDFARM-NBD-WRITE direct|buffered
#   VDFARM-NBD-READBACK <sha256 of the block read back>
#   VDFARM-NBD-OTHER <export> rc=<exit code> size=<bytes of /dev/nbd1>
#   VDFARM-ERROR <why>   then power off at once
#   VDFARM-DONE
# Rules: fail loudly; nbd-client is called by its full path.

PATH=/bin:/usr/sbin:/sbin
export PATH
NBD_CLIENT=/usr/sbin/nbd-client
TLS_DIR=/etc/vdfarm/tls

die() {
    echo "VDFARM-ERROR $*"
    sync
    poweroff -f
    sleep 10
    exit 1
}

# wait_for TEST... : retry the test for up to 10 s.
wait_for() {
    tries=0
    until "$@"; do
        [ "$tries" -lt 100 ] || return 1
        usleep 100000
        tries=$((tries + 1))
    done
}

nonzero_size() {
    [ "$(cat "/sys/block/$1/size" 2>/dev/null || echo 0)" != 0 ]
}

attach() {  # attach EXPORT DEVICE
    "$NBD_CLIENT" "$NBD_HOST" "$NBD_PORT" "$2" -N "$1" \
        -certfile "$TLS_DIR/client-cert.pem" -keyfile "$TLS_DIR/client-key.pem" \
        -cacertfile "$TLS_DIR/ca-cert.pem" -tlshostname "$TLS_HOSTNAME"
}

drop_caches() {
    sync
    blockdev --flushbufs /dev/nbd0 2>/dev/null
    echo 3 > /proc/sys/vm/drop_caches
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /etc/vdfarm.conf

for module in $(cat /etc/vdfarm-modules); do
    insmod "$module" || die "insmod $module failed"
done

wait_for test -e /sys/class/net/eth0 || die "no eth0"
ip link set lo up
ip addr add "$GUEST_ADDRESS" dev eth0 || die "cannot set $GUEST_ADDRESS"
ip link set eth0 up || die "cannot bring eth0 up"
echo "VDFARM-NET-UP"

wait_for test -b /dev/nbd0 || die "no /dev/nbd0"
attach "$EXPORT" /dev/nbd0
echo "VDFARM-NBD-ATTACH $EXPORT rc=$?"
wait_for nonzero_size nbd0 || die "/dev/nbd0 has no size"
echo "VDFARM-NBD-SIZE $(( $(cat /sys/block/nbd0/size) * 512 ))"

read_hash=$(dd if=/dev/nbd0 bs=1048576 count="$READ_MIB" 2>/dev/null | sha256sum | cut -d' ' -f1)
echo "VDFARM-NBD-READ $READ_MIB $read_hash"

printf '%s' "$WRITE_TEXT" > /tmp/write.txt
dd if=/tmp/write.txt of=/tmp/write.blk bs=4096 count=1 conv=sync 2>/dev/null
if dd if=/tmp/write.blk of=/dev/nbd0 bs=4096 seek="$WRITE_BLOCK" count=1 \
        oflag=direct conv=notrunc,fsync 2>/dev/null; then
    echo "VDFARM-NBD-WRITE direct"
else
    dd if=/tmp/write.blk of=/dev/nbd0 bs=4096 seek="$WRITE_BLOCK" count=1 \
        conv=notrunc,fsync 2>/dev/null || die "write to /dev/nbd0 failed"
    echo "VDFARM-NBD-WRITE buffered"
fi
drop_caches
dd if=/dev/nbd0 of=/tmp/back.blk bs=4096 skip="$WRITE_BLOCK" count=1 iflag=direct 2>/dev/null ||
    dd if=/dev/nbd0 of=/tmp/back.blk bs=4096 skip="$WRITE_BLOCK" count=1 2>/dev/null ||
    die "read-back from /dev/nbd0 failed"
echo "VDFARM-NBD-READBACK $(sha256sum < /tmp/back.blk | cut -d' ' -f1)"

attach "$OTHER_EXPORT" /dev/nbd1
rc=$?
echo "VDFARM-NBD-OTHER $OTHER_EXPORT rc=$rc size=$(( $(cat /sys/block/nbd1/size) * 512 ))"

"$NBD_CLIENT" -d /dev/nbd0
sync
echo "VDFARM-DONE"
poweroff -f
sleep 10
