# nbd-reattach: a plugin restart under I/O. Server A attaches a file export
# (2 connections) and fio writes the device with O_DIRECT; A is killed with
# SIGKILL mid-write, so the kernel's connections die while the device stays
# connected; server B (a new process on the same file) calls Reattach, which
# RECONFIGUREs fresh sockets into the device within the dead-connection
# timeout. fio must finish without an I/O error and its verify pass (reading
# back through B) must succeed; the backing file is then verified directly.

IMG=/tmp/backing.img
SIZE_MIB=96
# One fio job definition for writing through the device and for checking
# the backing file afterwards (same name, so the same verify headers).
fio_job() {
  fio --name=reattach --rw=write --bs=64k --size=${SIZE_MIB}M --ioengine=libaio --iodepth=8 \
      --verify=crc32c --verify_fatal=1 --randrepeat=1 --eta=never "$@"
}

start_serve /run/a.ctl -file $IMG -size ${SIZE_MIB}M
A=$SERVE_PID
DEV=$(e2e-nbd ctl -ctl /run/a.ctl device)
N=$(nbd_index "$DEV")

# ~12 MB/s so that the write phase lasts several seconds.
fio_job --filename="$DEV" --direct=1 --do_verify=1 --rate=,12m --output=/tmp/fio.out &
FIO=$!
wait_for 60 sh -c "[ \$(awk '{ print \$7 }' /sys/block/nbd$N/stat) -gt $(sectors 16) ]" ||
  fail "fio did not start writing"
log "killing server A (pid $A) after $(written_sectors "nbd$N") sectors written"
expect_nbd_timeouts # on the requests in flight on the killed sockets
kill -9 "$A"
wait "$A" 2>/dev/null || true
expect_eq "$(e2e-nbd connected "$N")" true "DeviceConnected($N) with its server dead"
sleep 1 # the restart gap

start_serve /run/b.ctl -file $IMG -reattach "$N"
B=$SERVE_PID
e2e-nbd ctl -ctl /run/b.ctl status
log "waiting for fio"
if ! wait $FIO; then
  cat /tmp/fio.out
  fail "fio failed through the reattached device"
fi
grep -E 'err=|WRITE:|READ:' /tmp/fio.out
grep -q 'err= 0' /tmp/fio.out || fail "fio reported errors"
expect_eq "$(cat "/sys/block/nbd$N/size")" "$(sectors $SIZE_MIB)" "nbd$N size after Reattach"
no_kernel_errors

e2e-nbd ctl -ctl /run/b.ctl detach
wait "$B" || fail "server B exited with $?"
# Every write acknowledged to fio reached the backing file.
fio_job --filename=$IMG --verify_only --output=/tmp/fio-file.out ||
  { cat /tmp/fio-file.out; fail "backing file does not verify"; }
log "ok: backing file verifies"
