#!/bin/sh
# /init of the network-bootable sample's initramfs (busybox sh, PID 1).
#
# Job: attach the root file system over NBD and hand over to it, as a
# diskless device does: load the network, NBD and ext4 modules, bring eth0
# up (DHCP unless vdfarm.ip says otherwise), attach the export with
# Debian's nbd-client, mount it (ext4, read-write: in standard mode the
# writes go to the device's write cache on the server), move /dev, /proc
# and /sys into it and switch_root to its /sbin/init.
# Kernel command line (set by the boot path; see vdfarm/image/netboot.py):
#   vdfarm.server=HOST[:PORT]   the NBD server (PORT 10809 if not given)
#   vdfarm.export=NAME          the export: the device's name or MAC
#   vdfarm.ip=dhcp|ADDR/PREFIX[,GATEWAY]   eth0's address (default dhcp)
#   vdfarm.id=ID                a name for the markers (default: none)
# Every line for the host starts with VDFARM- on the serial console:
#   VDFARM-NETBOOT-START <id>
#   VDFARM-NETBOOT-SERVER <host>:<port>   the NBD server it attaches from
#   VDFARM-NETBOOT-NET <address/prefix>
#   VDFARM-NETBOOT-ATTACH <export> <bytes>
#   VDFARM-ERROR <why>   then power off at once
# Rules: fail loudly, never silently; nbd-client is called by its full path;
# values from the command line are checked before use (the command line is
# the boot path's, but a typo must not run as a command).

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

# only CHARS VALUE: true if VALUE is not empty and holds only CHARS (a tr set).
only() {
    [ -n "$2" ] && [ -z "$(printf '%s' "$2" | tr -d "$1")" ]
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /etc/vdfarm.conf

server="" export_name="" address=dhcp id=""
for word in $(cat /proc/cmdline); do
    case "$word" in
        vdfarm.server=*) server="${word#vdfarm.server=}" ;;
        vdfarm.export=*) export_name="${word#vdfarm.export=}" ;;
        vdfarm.ip=*) address="${word#vdfarm.ip=}" ;;
        vdfarm.id=*) id="${word#vdfarm.id=}" ;;
    esac
done
echo "VDFARM-NETBOOT-START $(printf '%s' "$id" | tr -cd 'A-Za-z0-9._-')"
only 'A-Za-z0-9.:_-' "$server" || die "give vdfarm.server=HOST[:PORT] on the kernel command line"
only 'A-Za-z0-9.:_-' "$export_name" || die "give vdfarm.export=NAME on the kernel command line"
case "$server" in
    *:*) host="${server%:*}" port="${server##*:}" ;;
    *) host="$server" port="$DEFAULT_NBD_PORT" ;;
esac
only '0-9' "$port" || die "bad port in vdfarm.server=$server"
echo "VDFARM-NETBOOT-SERVER $host:$port"

for module in $(cat /etc/vdfarm-modules); do
    insmod "$module" || die "insmod $module failed"
done

wait_for test -e /sys/class/net/eth0 || die "no eth0"
ip link set lo up
ip link set eth0 up || die "cannot bring eth0 up"
if [ "$address" = dhcp ]; then
    cat > /tmp/dhcp-event <<'SCRIPT'
#!/bin/sh
case "$1" in
    bound|renew)
        ifconfig "$interface" "$ip" netmask "$subnet"
        for gateway in $router; do route add default gw "$gateway" dev "$interface"; break; done
        ;;
esac
SCRIPT
    chmod 700 /tmp/dhcp-event
    udhcpc -i eth0 -s /tmp/dhcp-event -q -n -t 10 -T 2 >/dev/null 2>&1 || die "no DHCP answer on eth0"
else
    only '0-9./,' "$address" || die "bad vdfarm.ip=$address"
    ip addr add "${address%%,*}" dev eth0 || die "cannot set ${address%%,*}"
    case "$address" in *,*) ip route add default via "${address#*,}" || die "bad gateway" ;; esac
fi
echo "VDFARM-NETBOOT-NET $(ip -o -4 addr show dev eth0 | sed -n 's/.* inet \([^ ]*\).*/\1/p')"

wait_for test -b /dev/nbd0 || die "no /dev/nbd0"
"$NBD_CLIENT" "$host" "$port" /dev/nbd0 -N "$export_name" >/dev/null 2>&1 ||
    die "nbd-client could not attach $export_name from $host:$port"
wait_for nonzero_size nbd0 || die "/dev/nbd0 has no size"
echo "VDFARM-NETBOOT-ATTACH $export_name $(( $(cat /sys/block/nbd0/size) * 512 ))"

mkdir -p /newroot
mount -t ext4 /dev/nbd0 /newroot || die "cannot mount /dev/nbd0 (ext4)"
[ -x /newroot/sbin/init ] || die "the root file system has no /sbin/init"
for mounted in /dev /proc /sys; do
    mount --move "$mounted" "/newroot$mounted" || die "cannot move $mounted"
done
exec switch_root /newroot /sbin/init
die "switch_root failed"
