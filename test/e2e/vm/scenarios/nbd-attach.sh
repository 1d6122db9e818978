# nbd-attach: pkg/nbd's Server.Attach on the real kernel driver.
#  1. a 256 MiB memory export on any free device with the default options
#     (2 connections): size, backend identifier, hardware queues, then ext4:
#     mkfs, mount, files, fsync, remount and compare, online resize to
#     384 MiB (Attachment.Resize + resize2fs), fsck -n, Detach.
#  2. a 320 MiB export on /dev/nbd3 (a fixed index) with 1 connection: xfs
#     mkfs, mount, write, grow to 448 MiB with xfs_growfs, xfs_repair -n,
#     Detach.

# ---- 1: ext4, any device, 2 connections
CTL=/run/ext4.ctl
start_serve $CTL -mem -size 256M
DEV=$(e2e-nbd ctl -ctl $CTL device)
N=$(nbd_index "$DEV")
SYS=/sys/block/nbd$N
expect_eq "$(cat "$SYS/size")" "$(sectors 256)" "nbd$N size in sectors"
expect_eq "$(e2e-nbd connected "$N")" true "DeviceConnected($N)"
expect_eq "$(find "$SYS/mq" -mindepth 1 -maxdepth 1 | wc -l)" 2 "hardware queues (connections)"
expect_eq "$(cat "$SYS/queue/logical_block_size")" 512 "logical block size"
if [ -r "$SYS/backend" ]; then
  expect_eq "$(cat "$SYS/backend")" e2e "backend identifier"
fi

mkfs.ext4 -q -F "$DEV"
expect_eq "$(blkid -p -s TYPE -o value "$DEV")" ext4 "blkid -p TYPE"
mkdir -p /mnt/ext4
mount -t ext4 "$DEV" /mnt/ext4
dd if=/dev/urandom of=/mnt/ext4/big bs=1M count=32 conv=fsync 2>/dev/null
i=0
while [ $i -lt 200 ]; do echo "small file $i" > /mnt/ext4/small.$i; i=$((i + 1)); done
sync
(cd /mnt/ext4 && md5sum big small.* > /tmp/ext4.md5)
umount /mnt/ext4
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 "$DEV" /mnt/ext4
(cd /mnt/ext4 && md5sum -c -s /tmp/ext4.md5) || fail "files differ after remount"
log "ok: 201 files read back after remount"

e2e-nbd ctl -ctl $CTL resize 384M
expect_eq "$(cat "$SYS/size")" "$(sectors 384)" "nbd$N size after Resize"
resize2fs "$DEV"
blocks=$(dumpe2fs -h "$DEV" 2>/dev/null | awk -F: '/^Block count/ { print $2 + 0 }')
bsize=$(dumpe2fs -h "$DEV" 2>/dev/null | awk -F: '/^Block size/ { print $2 + 0 }')
expect_eq "$((blocks * bsize))" "$(mib 384)" "ext4 size after online resize2fs"
(cd /mnt/ext4 && md5sum -c -s /tmp/ext4.md5) || fail "files differ after resize"
umount /mnt/ext4
fsck.ext4 -fn "$DEV"

e2e-nbd ctl -ctl $CTL detach
wait "$SERVE_PID" || fail "e2e-nbd serve exited with $?"
expect_eq "$(cat "$SYS/size")" 0 "nbd$N size after Detach"
expect_eq "$(e2e-nbd connected "$N")" false "DeviceConnected($N) after Detach"

# ---- 2: xfs, /dev/nbd3, 1 connection
CTL=/run/xfs.ctl
start_serve $CTL -mem -size 320M -index 3 -connections 1
DEV=$(e2e-nbd ctl -ctl $CTL device)
expect_eq "$DEV" /dev/nbd3 "device at the requested index"
expect_eq "$(find /sys/block/nbd3/mq -mindepth 1 -maxdepth 1 | wc -l)" 1 "hardware queues (connections)"
mkfs.xfs -q -f "$DEV"
expect_eq "$(blkid -p -s TYPE -o value "$DEV")" xfs "blkid -p TYPE"
mkdir -p /mnt/xfs
mount -t xfs "$DEV" /mnt/xfs
dd if=/dev/urandom of=/mnt/xfs/big bs=1M count=16 conv=fsync 2>/dev/null
sum=$(md5sum < /mnt/xfs/big)
e2e-nbd ctl -ctl $CTL resize 448M
expect_eq "$(cat /sys/block/nbd3/size)" "$(sectors 448)" "nbd3 size after Resize"
xfs_growfs /mnt/xfs > /dev/null
size=$(xfs_io -c statfs /mnt/xfs | awk -F' = ' '/geom.datablocks/ { b = $2 } /geom.bsize/ { s = $2 } END { print b * s }')
expect_eq "$size" "$(mib 448)" "xfs size after xfs_growfs"
umount /mnt/xfs
echo 3 > /proc/sys/vm/drop_caches
mount -t xfs "$DEV" /mnt/xfs
expect_eq "$(md5sum < /mnt/xfs/big)" "$sum" "xfs file after remount"
umount /mnt/xfs
xfs_repair -n "$DEV" 2> /tmp/xfs_repair.log || { cat /tmp/xfs_repair.log; fail "xfs_repair -n"; }
e2e-nbd ctl -ctl $CTL detach
wait "$SERVE_PID" || fail "e2e-nbd serve exited with $?"
no_kernel_errors
