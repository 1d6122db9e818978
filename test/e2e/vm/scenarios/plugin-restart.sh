# plugin-restart: csi-cache serve is killed with SIGKILL while a mounted
# volume is being written, and started again. The new process reopens the
# cache set, reads the stage record and gives the kernel device new sockets
# (NBD RECONFIGURE) well before the device's dead-connection timeout
# (nbd.DefaultDeadConnTimeout, 2 minutes), so the filesystem never sees an
# error: fio (O_DIRECT writes with verify headers, read back at the end)
# and a writer of fsynced files must both finish without an error, and the
# data must verify again after an unstage and a new stage (where the fsck
# that NodeStage runs must find nothing to repair). Requests that
# were in flight on the killed process's sockets are resent when their
# timeout (30 s) expires, so the writers stall for up to that long.

ID=restart
log_fsck_calls
plugin_storage
start_plugin
csictl create "$ID" -size 256M -fs ext4 -p cacheMode=writeback -p sequentialCutoff=0
stage_mount "$ID" ext4
T=$(target_path "$ID")
DEV=$(mount_device "$(staging_path "$ID")")
N=$(nbd_index "$DEV")
log "$ID staged on $DEV"

fio_job() {
  fio --name=restart --filename="$T/fio.dat" --rw=write --bs=64k --size=80M --ioengine=libaio --iodepth=8 \
    --direct=1 --verify=crc32c --verify_fatal=1 --randrepeat=1 --eta=never "$@"
}
fio_job --do_verify=1 --rate=,8m --output=/tmp/fio.out &
FIO=$!
# A second writer: 256 KiB files through the page cache, each fsynced; its
# checksum recorded once fsync returned.
: > /tmp/files.md5
(
  cd "$T" || exit 1
  i=0
  while ! [ -e /tmp/stop-writer ]; do
    dd if=/dev/urandom of="file.$i" bs=64k count=4 conv=fsync 2> /tmp/writer.err || exit 1
    md5sum "file.$i" >> /tmp/files.md5
    i=$((i + 1))
  done
) &
WRITER=$!

wait_for 60 sh -c "[ \$(awk '{ print \$7 }' /sys/block/nbd$N/stat) -gt $(sectors 16) ]" ||
  fail "the writers did not get going"
t_kill=$(uptime_s)
log "killing csi-cache serve (pid $PLUGIN_PID) after $(written_sectors "nbd$N") sectors written"
expect_nbd_timeouts # on the requests in flight on the killed sockets
kill -9 "$PLUGIN_PID"
wait "$PLUGIN_PID" 2> /dev/null || true
expect_eq "$(e2e-nbd connected "$N")" true "DeviceConnected($N) with the plugin dead"
sleep 1 # the restart gap

start_plugin
back=$(awk "BEGIN { print $(uptime_s) - $t_kill }")
plugin_log_has '"Took back a staged volume".*volume="'"$ID"'"' || {
  tail -n 30 "$PLUGIN_LOG"
  fail "the new plugin did not take $ID back"
}
log "ok: $DEV reattached ${back}s after the kill (dead-connection timeout 120 s)"
awk "BEGIN { exit !($back < 120) }" || fail "reattached after the dead-connection timeout"
expect_eq "$(csictl health "$ID")" ok "health of $ID after the restart"

log "waiting for fio"
if ! wait $FIO; then
  cat /tmp/fio.out
  if grep -q 'verify: bad magic header' /tmp/fio.out; then
    log "blocks fio wrote before the kill read back wrong: acknowledged writes were lost (see README.md, Known product bugs)"
  fi
  fail "fio failed through the restart"
fi
grep -E 'err=|WRITE:|READ:' /tmp/fio.out
grep -q 'err= 0' /tmp/fio.out || fail "fio reported errors"
touch /tmp/stop-writer
wait $WRITER || { cat /tmp/writer.err; fail "the fsync writer failed through the restart"; }
log "ok: fio and the writer of $(wc -l < /tmp/files.md5) fsynced files saw no error"
no_kernel_errors

# The data verifies after the volume is unstaged (device detached, volume
# flushed) and staged again.
unstage_mount "$ID"
echo 3 > /proc/sys/vm/drop_caches
stage_mount "$ID" ext4
fio_job --verify_only --output=/tmp/fio-verify.out || { cat /tmp/fio-verify.out; fail "fio verify after restage"; }
(cd "$T" && md5sum -c -s /tmp/files.md5) || fail "fsynced files differ after restage"
log "ok: fio's file and the fsynced files verify after unstage and stage"
fsck_calls_clean
unstage_mount "$ID"
fsck_volume "$ID" ext4
csictl delete "$ID"
stop_plugin
no_kernel_errors
