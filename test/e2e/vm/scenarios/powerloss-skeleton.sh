# powerloss-skeleton: the shape of the power-loss scenarios. Boot 1 (phase
# write): a file export on the virtio disk /dev/vda (a host file opened with
# cache=none), attached with Server.Attach, ext4 on it, a file written and
# fsynced, another left unsynced; then the host kills QEMU (SIGKILL on the
# READY-TO-KILL line). Boot 2 (phase verify): attach the same disk again,
# mount (journal replay), the fsynced file must read back intact, fsck -n
# must be clean. Engine volumes in writethrough/writeback mode slot in
# where the file export is.

DISK=$E2E_DISK_backing
start_serve /run/pl.ctl -file "$DISK"
DEV=$(e2e-nbd ctl -ctl /run/pl.ctl device)
mkdir -p /mnt/pl
case $E2E_PHASE in
  write)
    mkfs.ext4 -q -F "$DEV"
    mount -t ext4 "$DEV" /mnt/pl
    dd if=/dev/urandom of=/mnt/pl/synced bs=1M count=8 conv=fsync 2>/dev/null
    sync
    md5sum < /mnt/pl/synced > "$E2E_OUT/synced.md5"
    dd if=/dev/urandom of=/mnt/pl/unsynced bs=1M count=8 2>/dev/null # page cache only
    echo "E2E READY-TO-KILL"
    sleep 600 ;;
  verify)
    mount -t ext4 "$DEV" /mnt/pl
    dmesg | grep -i "EXT4-fs ($(basename "$DEV"))" || true
    ls -l /mnt/pl
    expect_eq "$(md5sum < /mnt/pl/synced)" "$(cat "$E2E_OUT/synced.md5")" "fsynced file after power loss"
    umount /mnt/pl
    fsck.ext4 -fn "$DEV"
    e2e-nbd ctl -ctl /run/pl.ctl detach
    wait "$SERVE_PID"
    no_kernel_errors ;;
  *) fail "unknown phase '$E2E_PHASE'" ;;
esac
