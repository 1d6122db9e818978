# csi-sanity: the csi-sanity command (csi-test v5.6.0, built static on the
# host) against csi-cache serve, with the real NBD attach (Server.Attach over
# netlink), mkfs and mounts: every spec, the Node ones included, once for
# mount access (ext4) and once for raw block access. The same as
# hack/csi-sanity.sh does on a host without nbd, where the Node specs are
# skipped. Test volumes are 64 MiB, expanded to 128 MiB. Afterwards no
# volume, no NBD device and no mount may be left, and the kernel must have
# logged no I/O error.
plugin_storage
start_plugin

rc=0
for access in mount block; do
  log "csi-sanity, $access access"
  out=$E2E_OUT/sanity-$access.log
  mkdir -p "/tmp/sanity-$access"   # csi-sanity makes only the last component
  if ! csi-sanity \
      -csi.endpoint "$CSI_ENDPOINT" \
      -csi.mountdir "/tmp/sanity-$access/mnt" \
      -csi.stagingdir "/tmp/sanity-$access/staging" \
      -csi.testvolumeaccesstype "$access" \
      -csi.testvolumesize "$(mib 64)" \
      -csi.testvolumeexpandsize "$(mib 128)" \
      -ginkgo.no-color > "$out" 2>&1; then
    rc=1
    grep -E '^\s*\[FAIL\]|Summarizing' -A2 "$out" | head -n 60
  fi
  grep -E '^Ran [0-9]+ of [0-9]+ Specs|^(SUCCESS|FAIL)!' "$out" || tail -n 20 "$out"
done
[ $rc = 0 ] || fail "csi-sanity failed (logs: sanity-mount.log, sanity-block.log in the scenario's share)"
# The Node specs ran (they are skipped where there is no nbd driver).
staged=$(grep -c '"Staged volume"' "$PLUGIN_LOG" || true)
[ "$staged" -ge 10 ] || fail "only $staged volumes were staged: did the Node specs run?"
log "ok: $staged NodeStageVolume calls staged a volume on a kernel NBD device"

# Nothing left behind.
left=$(ls -A /var/lib/csi-cache/state/volumes)
expect_eq "$left" "" "stage records left"
for s in /sys/block/nbd*/size; do
  [ "$(cat "$s")" = 0 ] || fail "$(dirname "$s") is still attached"
done
log "ok: no NBD device attached"
if grep -E ' /tmp/sanity-' /proc/mounts; then fail "mounts left under /tmp/sanity-*"; fi
stop_plugin
no_kernel_errors
