#!/bin/sh
# /init of the vdsm test guest (busybox sh, runs as PID 1 inside the VM).
#
# Writes numbered, checksummed 64 KiB blocks to the virtio disk forever, one at a time, and
# logs every completed write on the console, so that vdsm_guest.checker can later prove that
# no acknowledged write was lost (e.g. across a live storage migration).
#
# Kernel command line parameters (all optional):
#   vdsm_guest.disk=vda     the disk to write (a name under /dev)
#   vdsm_guest.slots=256    write cyclically over the first N 64 KiB slots (256 = 16 MiB),
#                           so that later writes overwrite earlier ones
#   vdsm_guest.pause=0      seconds (may be fractional) to sleep between two writes
#   vdsm_guest.count=0      power off after this many writes; 0 = write forever
#
# Block layout (65536 bytes, written by one O_DIRECT write followed by a flush):
#   bytes 0..511     header: "VDSMW1 run=<uuid> seq=<n> slot=<s> md5=<hex>", space-padded to
#                    511 bytes, then "\n"
#   bytes 512..65535 payload: fresh random bytes; md5 is the md5sum of these 65024 bytes
# Write number <seq> (1, 2, 3, ...) goes to slot (seq - 1) % slots.
#
# Console lines (each on its own line, prefix "VDSMW "):
#   VDSMW ready run=<uuid> disk=/dev/vda slots=<N> block=65536 pause=<p> count=<c>
#   VDSMW seq=<n> slot=<s> md5=<hex>        write <n> is on the disk (dd returned after fsync)
#   VDSMW fail seq=<n> slot=<s> rc=<rc>     write <n> failed; the guest goes on with <n>+1
#   VDSMW error <message>                   the guest cannot run; it powers off
#   VDSMW done writes=<n>                   count reached; the guest powers off

PATH=/bin
export PATH

BLOCK=65536
HEADER=512
PAYLOAD=$((BLOCK - HEADER))

fatal() {
    echo "VDSMW error $*"
    poweroff -f
    # poweroff -f does not return; if it did, PID 1 must not exit (that is a kernel panic).
    while :; do sleep 3600; done
}

# busybox finds itself through /proc/self/exe to install its applets: mount /proc first.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

disk=vda
slots=256
pause=0
count=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    vdsm_guest.disk=*) disk=${arg#*=} ;;
    vdsm_guest.slots=*) slots=${arg#*=} ;;
    vdsm_guest.pause=*) pause=${arg#*=} ;;
    vdsm_guest.count=*) count=${arg#*=} ;;
    esac
done
case "$slots" in '' | *[!0-9]* | 0) fatal "vdsm_guest.slots must be a positive integer: '$slots'" ;; esac
case "$count" in '' | *[!0-9]*) fatal "vdsm_guest.count must be an integer >= 0: '$count'" ;; esac
case "$pause" in '' | *[!0-9.]*) fatal "vdsm_guest.pause must be a number of seconds: '$pause'" ;; esac

# The build names the modules NN-name.ko so that the glob lists them in load order (there is
# no modules.dep, and busybox insmod does not resolve dependencies).
for module in /lib/modules/*.ko; do
    [ -e "$module" ] || break
    insmod "$module" || fatal "insmod $module failed"
done

dev=/dev/$disk
tries=0
while [ ! -b "$dev" ]; do
    tries=$((tries + 1))
    [ "$tries" -le 200 ] || fatal "$dev did not appear in 20 s"
    sleep 0.1
done

# Never write past the end of a small disk: the ready line reports the slots really used.
sectors=$(cat "/sys/block/$disk/size")
fit=$((sectors * 512 / BLOCK))
[ "$fit" -gt 0 ] || fatal "$dev is smaller than one block"
[ "$slots" -le "$fit" ] || slots=$fit

read -r run </proc/sys/kernel/random/uuid

echo "VDSMW ready run=$run disk=$dev slots=$slots block=$BLOCK pause=$pause count=$count"

seq=0
while [ "$count" -eq 0 ] || [ "$seq" -lt "$count" ]; do
    seq=$((seq + 1))
    slot=$(((seq - 1) % slots))
    dd if=/dev/urandom of=/tmp/payload bs=$PAYLOAD count=1 2>/dev/null
    set -- $(md5sum /tmp/payload)
    md5=$1
    printf '%-511s\n' "VDSMW1 run=$run seq=$seq slot=$slot md5=$md5" >/tmp/block
    cat /tmp/payload >>/tmp/block
    # O_DIRECT bypasses the guest page cache and conv=fsync flushes the disk's write cache:
    # when dd returns, the block is stable on the virtual disk, so logging it is a promise.
    rc=0
    dd if=/tmp/block of="$dev" bs=$BLOCK seek="$slot" count=1 \
        oflag=direct conv=notrunc,fsync 2>/tmp/dd.err || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "VDSMW seq=$seq slot=$slot md5=$md5"
    else
        echo "VDSMW fail seq=$seq slot=$slot rc=$rc $(head -n 1 /tmp/dd.err)"
        # A disk that keeps failing must not flood the console.
        sleep 1
    fi
    [ "$pause" = 0 ] || sleep "$pause"
done

echo "VDSMW done writes=$seq"
sync
poweroff -f
while :; do sleep 3600; done
