#!/bin/sh
# /init of the VM in test_agent_kernel_client.py (busybox sh, PID 1 in the initramfs).
#
# Job: the Linux kernel's NBD client in front of the agent, as a diskless
# device would use it: load nbd and virtio_net, bring up eth0 on qemu's user
# network, attach EXPORT at the agent's TCP port (the host's loopback, seen
# from here as NBD_HOST) with Debian's nbd-client, read all of /dev/nbd0 with
# dd (the host kills the server under this read) and hash it, detach and
# power off. Settings come from /etc/vdfarm.conf. Every line for the host
# starts with VDFARM- on the serial console:
#   VDFARM-NET-UP
#   VDFARM-NBD-ATTACH <export> rc=<exit code of nbd-client>
#   VDFARM-NBD-SIZE <bytes of /dev/nbd0>
#   VDFARM-NBD-READING                    dd starts now
#   VDFARM-NBD-READ <sha256 of /dev/nbd0> dd completed
#   VDFARM-ERROR <why>   then power off at once
#   VDFARM-DONE
# Rules: fail loudly; nbd-client is called by its full path.

PATH=/bin:/usr/sbin:/sbin
export PATH
NBD_CLIENT=/usr/sbin/nbd-client

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
"$NBD_CLIENT" "$NBD_HOST" "$NBD_PORT" /dev/nbd0 -N "$EXPORT"
echo "VDFARM-NBD-ATTACH $EXPORT rc=$?"
wait_for nonzero_size nbd0 || die "/dev/nbd0 has no size"
echo "VDFARM-NBD-SIZE $(( $(cat /sys/block/nbd0/size) * 512 ))"

echo "VDFARM-NBD-READING"
set -o pipefail
hash=$(dd if=/dev/nbd0 bs="$READ_BLOCK" iflag=direct 2>/dev/null | sha256sum) ||
    die "dd of /dev/nbd0 failed"
set +o pipefail
echo "VDFARM-NBD-READ ${hash%% *}"

"$NBD_CLIENT" -d /dev/nbd0
sync
echo "VDFARM-DONE"
poweroff -f
sleep 10
