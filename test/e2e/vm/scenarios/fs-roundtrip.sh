# fs-roundtrip: volumes through csi-cache serve's whole node life cycle,
# driven over CSI by csictl at kubelet's paths.
#  1. ext4 (writethrough) and xfs (writeback): CreateVolume, NodeStage
#     (attach, mkfs, mount), NodePublish (bind mount); a large file, a tree
#     of small files, fsync; NodeUnpublish, NodeUnstage (the device is
#     detached); caches dropped; NodeStage and NodePublish again: every
#     checksum matches, NodeGetVolumeStats reports the filesystem; unstaged
#     again, the filesystem checks clean (fsck.ext4 -fn / xfs_repair -n on
#     the volume staged for raw block access); DeleteVolume.
#  2. a raw block volume (writeback): fio writes it through the published
#     device node with verify headers and reads it back; after an unstage
#     and a new stage, a verify-only pass reads every block again.

roundtrip() {
  fs=$1 size=$2 mode=$3
  id=$(csictl create "rt-$fs" -size "$size" -fs "$fs" -p cacheMode="$mode")
  S=$(staging_path "$id") T=$(target_path "$id")
  stage_mount "$id" "$fs"
  dev=$(mount_device "$S")
  expect_eq "$(awk -v p="$T" '$2 == p { print $1 " " $3 }' /proc/mounts)" "$dev $fs" "published mount of $id"
  case $dev in /dev/nbd*) ;; *) fail "$id is staged on $dev, not an NBD device" ;; esac
  log "$id: $fs ($mode) on $dev"

  dd if=/dev/urandom of="$T/big" bs=1M count=24 conv=fsync 2> /dev/null
  mkdir -p "$T/tree/a/b"
  i=0
  while [ $i -lt 150 ]; do
    echo "file $i of $id" > "$T/tree/f.$i"
    [ $((i % 10)) = 0 ] && dd if=/dev/urandom of="$T/tree/a/b/r.$i" bs=4k count=$((i / 10 + 1)) 2> /dev/null
    i=$((i + 1))
  done
  ln -s f.1 "$T/tree/link"
  sync
  (cd "$T" && find . -type f | sort | xargs md5sum) > "/tmp/$id.md5"
  files=$(wc -l < "/tmp/$id.md5")

  unstage_mount "$id"
  expect_eq "$(cat "/sys/block/${dev#/dev/}/size")" 0 "size of $dev after NodeUnstage"
  if grep -qE " ($S|$T) " /proc/mounts; then fail "$id still mounted after NodeUnstage"; fi
  echo 3 > /proc/sys/vm/drop_caches

  stage_mount "$id" "$fs"
  (cd "$T" && md5sum -c -s "/tmp/$id.md5") || fail "$id: files differ after unstage and stage"
  expect_eq "$(readlink "$T/tree/link")" f.1 "symlink"
  [ "$fs" != ext4 ] || fsck_calls_clean # mount-utils checks ext4 only
  log "ok: $id: $files files read back after unstage and stage ($(mount_device "$S"))"
  csictl stats "$id" "$T" | tee /tmp/stats
  used=$(awk '$1 == "bytes" { print $3 }' /tmp/stats)
  [ "$used" -ge "$(mib 24)" ] || fail "NodeGetVolumeStats of $id: $used bytes used, less than written"
  unstage_mount "$id"
  fsck_volume "$id" "$fs"
  csictl delete "$id"
  log "ok: $fs round trip"
}

log_fsck_calls
plugin_storage
start_plugin
roundtrip ext4 128M writethrough
roundtrip xfs 320M writeback # xfsprogs refuses filesystems under 300 MiB

# ---- raw block volume, fio with verify
id=$(csictl create rt-block -size 96M -block -p cacheMode=writeback)
stage_block "$id"
B=$(block_target_path "$id")
[ -b "$B" ] || fail "$B is not a block device"
expect_eq "$(blockdev --getsize64 "$B")" "$(mib 96)" "size of the published block device"
fio_job() {
  fio --name=block --filename="$B" --rw=randwrite --bsrange=4k-64k --size=64M --ioengine=libaio \
    --iodepth=16 --direct=1 --verify=crc32c --verify_fatal=1 --randrepeat=1 --eta=never "$@"
}
fio_job --do_verify=1 --output=/tmp/fio.out || { cat /tmp/fio.out; fail "fio on the block volume"; }
grep -E 'err=|WRITE:|READ:' /tmp/fio.out
grep -q 'err= 0' /tmp/fio.out || fail "fio reported errors"
unstage_block "$id"
echo 3 > /proc/sys/vm/drop_caches
stage_block "$id"
fio_job --verify_only --output=/tmp/fio-verify.out || { cat /tmp/fio-verify.out; fail "fio verify after unstage and stage"; }
grep -E 'err=|READ:' /tmp/fio-verify.out
log "ok: block volume verifies after unstage and stage"
unstage_block "$id"
csictl delete "$id"

stop_plugin
no_kernel_errors
