# expand-online: online expansion of mounted volumes, the way the
# external-resizer and kubelet do it: ControllerExpandVolume (the volume
# grows in the cache set; the reply asks for node expansion), then
# NodeExpandVolume on the published path (the NBD device is resized and the
# filesystem grown while mounted). df, NodeGetVolumeStats, the device size
# and the filesystem's own size must all show the new size, files written
# before must read back, and the filesystem must check clean afterwards.
# ext4 from 64 MiB to 160 MiB, then again to 192 MiB; xfs (at least 300 MiB)
# from 320 MiB to 448 MiB.

df_bytes() { df -B1 "$1" | awk 'NR == 2 { print $2 }'; }

# fs_size FS DEV MOUNTPOINT prints the filesystem's size in bytes.
fs_size() {
  case $1 in
    ext4) dumpe2fs -h "$2" 2> /dev/null | awk -F: '/^Block count/ { c = $2 } /^Block size/ { s = $2 } END { print c * s }' ;;
    xfs) xfs_io -c statfs "$3" | awk -F' = ' '/geom.datablocks/ { b = $2 } /geom.bsize/ { s = $2 } END { print b * s }' ;;
  esac
}

# grow ID FS SIZE-MIB [FILL-MIB]: expand a published volume and check every
# size; then write FILL-MIB more (enough to go past the old size).
grow() {
  id=$1 fs=$2 size=$3 fill=${4:-0}
  T=$(target_path "$id")
  dev=$(mount_device "$(staging_path "$id")")
  before=$(df_bytes "$T")
  out=$(csictl expand "$id" "${size}M" -fs "$fs")
  expect_eq "$out" "$(mib "$size") node-expansion-required" "ControllerExpandVolume of $id"
  expect_eq "$(csictl node-expand "$id" "$T" "${size}M" -staging "$(staging_path "$id")" -fs "$fs")" "$(mib "$size")" \
    "NodeExpandVolume of $id"
  expect_eq "$(blockdev --getsize64 "$dev")" "$(mib "$size")" "size of $dev"
  expect_eq "$(fs_size "$fs" "$dev" "$T")" "$(mib "$size")" "$fs size on $dev"
  after=$(df_bytes "$T")
  [ "$after" -gt "$before" ] || fail "df of $T did not grow: $before -> $after bytes"
  log "ok: df of $id: $before -> $after bytes"
  total=$(csictl stats "$id" "$T" | awk '$1 == "bytes" { print $2 }')
  expect_eq "$total" "$after" "NodeGetVolumeStats total bytes of $id"
  (cd "$T" && md5sum -c -s "/tmp/$id.md5") || fail "$id: files differ after the expansion"
  if [ "$fill" -gt 0 ]; then
    dd if=/dev/zero of="$T/fill" bs=1M count="$fill" conv=fsync 2> /dev/null ||
      fail "writing into the grown space of $id"
    log "ok: $fill MiB more written into $id"
    rm "$T/fill"
  fi
}

plugin_storage
start_plugin

csictl create ex-ext4 -size 64M -fs ext4
stage_mount ex-ext4 ext4
T=$(target_path ex-ext4)
dd if=/dev/urandom of="$T/data" bs=1M count=16 conv=fsync 2> /dev/null
(cd "$T" && md5sum data) > /tmp/ex-ext4.md5
grow ex-ext4 ext4 160 56 # 16 + 56 MiB do not fit in the 64 MiB it had
grow ex-ext4 ext4 192
unstage_mount ex-ext4
fsck_volume ex-ext4 ext4
csictl delete ex-ext4

csictl create ex-xfs -size 320M -fs xfs
stage_mount ex-xfs xfs
T=$(target_path ex-xfs)
dd if=/dev/urandom of="$T/data" bs=1M count=16 conv=fsync 2> /dev/null
(cd "$T" && md5sum data) > /tmp/ex-xfs.md5
grow ex-xfs xfs 448
unstage_mount ex-xfs
fsck_volume ex-xfs xfs
csictl delete ex-xfs

stop_plugin
no_kernel_errors
