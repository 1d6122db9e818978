# shellcheck shell=sh
# Helpers for scenarios (busybox sh). Scenarios run with set -e; a scenario
# passes when it returns 0.

uptime_s() { cut -d' ' -f1 /proc/uptime; }
log() { echo "[e2e $(uptime_s)] $*"; }
fail() { log "FAIL: $*"; exit 1; }

# wait_for SECONDS COMMAND... retries COMMAND every 0.1 s until it succeeds.
wait_for() {
  _n=$(($1 * 10)); shift
  until "$@" 2>/dev/null; do
    _n=$((_n - 1))
    [ $_n -gt 0 ] || return 1
    sleep 0.1
  done
}

# expect_eq GOT WANT WHAT
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; log "ok: $3 = $1"; }

# mib N prints N MiB in bytes; sectors N prints N MiB in 512-byte sectors.
mib() { echo $(($1 << 20)); }
sectors() { echo $(($1 << 11)); }

# nbd_index DEV prints N for /dev/nbdN.
nbd_index() { echo "${1#/dev/nbd}"; }

# written_sectors NAME prints the sectors written to /sys/block/NAME.
written_sectors() { awk '{ print $7 }' "/sys/block/$1/stat"; }

# no_kernel_errors fails if the kernel logged I/O errors, oopses or warnings.
no_kernel_errors() {
  if dmesg | grep -E 'I/O error|blk_update_request|Buffer I/O error|Oops|WARNING:|BUG:|EXT4-fs error|XFS .*[Cc]orrupt'; then
    fail "kernel errors in dmesg"
  fi
  log "ok: no kernel errors"
}

# start_serve CTL ARGS... starts "e2e-nbd serve -ctl CTL ARGS..." in the
# background (log in CTL.log, pid in SERVE_PID) and waits until the device
# is attached (then "e2e-nbd ctl -ctl CTL device" prints it). Do not call it
# in $(...): SERVE_PID would be lost.
start_serve() {
  _ctl=$1; shift
  e2e-nbd serve -ctl "$_ctl" "$@" > "$_ctl.log" 2>&1 &
  # shellcheck disable=SC2034 # for the scenario
  SERVE_PID=$!
  if ! wait_for 60 test -S "$_ctl"; then
    cat "$_ctl.log" >&2
    fail "e2e-nbd serve $* did not attach"
  fi
  cat "$_ctl.log"
}

# dump_state prints what to look at when I/O hangs: the goroutines of every
# e2e-nbd server (control sockets /run/*.ctl), the kernel's blocked tasks and
# busy workqueues.
dump_state() {
  for _c in /run/*.ctl; do
    [ -S "$_c" ] || continue
    log "goroutines of the server behind $_c:"
    e2e-nbd ctl -ctl "$_c" stacks || true
  done
  _mark=$(dmesg | wc -l)
  echo t > /proc/sysrq-trigger
  log "kernel: blocked tasks and busy workqueues:"
  dmesg | tail -n +$((_mark + 1)) | awk '/state:D/ { d = 1 } /Showing busy workqueues/ { w = 1 } d || w' | head -n 150
}

# nbd_prewarm attaches and detaches a small 1-connection device so that the
# kernel's workqueue pool for nbd's receive loops has two idle kworkers
# before a scenario attaches a 2-connection device (see README.md: under
# TCG, creating a kworker is slow enough for the rescuer to take both
# receive loops and run them one after the other).
nbd_prewarm() {
  start_serve /run/prewarm.ctl -mem -size 1M -connections 1 -export prewarm > /dev/null
  e2e-nbd ctl -ctl /run/prewarm.ctl detach > /dev/null
  wait "$SERVE_PID"
  rm -f /run/prewarm.ctl /run/prewarm.ctl.log
}

# watch_nbd_timeouts runs in the background for the whole scenario (started
# by init): the first time the kernel logs an NBD request timeout it calls
# dump_state, while the stuck state may still be there. A scenario in which
# timeouts are expected (requests in flight on a killed server's sockets)
# calls expect_nbd_timeouts first.
watch_nbd_timeouts() {
  while sleep 1; do
    [ -e /run/e2e.nbd-timeouts-expected ] && return
    if dmesg | grep -q 'nbd.*Connection timed out'; then
      log "nbd request timeout seen; dumping state"
      dump_state
      return
    fi
  done
}

# expect_nbd_timeouts turns watch_nbd_timeouts off.
expect_nbd_timeouts() { : > /run/e2e.nbd-timeouts-expected; }

# watchdog SECONDS starts a background job that calls dump_state if it is
# not killed (kill $WATCHDOG_PID) within SECONDS.
watchdog() {
  (
    sleep "$1"
    log "watchdog: still running after $1 s"
    dump_state
  ) &
  # shellcheck disable=SC2034 # for the scenario
  WATCHDOG_PID=$!
}

# ---- csi-cache serve (the CSI plugin) and csictl
#
# The node's storage is two virtio disks (VM_DISKS=(cache:SIZE
# backing:SIZE) in the scenario's host hook): the raw disk "cache" is the
# cache device (an NVMe drive on a real node), and an ext4 on "backing" is
# mounted on /var/lib/csi-cache, where serve keeps its backing files
# (backing/) and stage records (state/) by default. Paths of staged and
# published volumes are the ones kubelet uses.

# csictl and csi-sanity call the plugin here.
export CSI_ENDPOINT=unix:///run/csi/csi.sock
KUBELET_PLUGIN=/var/lib/kubelet/plugins/kubernetes.io/csi
KUBELET_POD=/var/lib/kubelet/pods/e2e-pod

# staging_path ID / target_path ID: kubelet's paths of a mount volume;
# block_staging_path ID / block_target_path ID: those of a raw block volume.
staging_path() { echo "$KUBELET_PLUGIN/csi-cache.io/$1/globalmount"; }
target_path() { echo "$KUBELET_POD/volumes/kubernetes.io~csi/$1/mount"; }
block_staging_path() { echo "$KUBELET_PLUGIN/volumeDevices/staging/$1"; }
block_target_path() { echo "$KUBELET_POD/volumeDevices/kubernetes.io~csi/$1"; }

# plugin_storage mounts the backing disk on /var/lib/csi-cache, making an
# ext4 on it the first time (a later boot of the scenario finds it).
plugin_storage() {
  if ! [ -b "${E2E_DISK_cache:-}" ] || ! [ -b "${E2E_DISK_backing:-}" ]; then
    fail "the scenario needs VM_DISKS=(cache:SIZE backing:SIZE)"
  fi
  if ! blkid -p "$E2E_DISK_backing" > /dev/null 2>&1; then
    mkfs.ext4 -q -F "$E2E_DISK_backing"
  fi
  mkdir -p /var/lib/csi-cache
  mount -t ext4 "$E2E_DISK_backing" /var/lib/csi-cache
}

# start_plugin [ARGS...] starts csi-cache serve in the background on the
# disks of plugin_storage (PLUGIN_PID; log appended to
# $E2E_OUT/serve.log, which survives a power loss) and waits until Probe
# answers. Do not call it in $(...): PLUGIN_PID would be lost.
PLUGIN_LOG=${E2E_OUT:-/tmp}/serve.log
start_plugin() {
  mkdir -p /run/csi
  echo "==== csi-cache serve $* (boot ${E2E_PHASE:-1}, uptime $(uptime_s))" >> "$PLUGIN_LOG"
  csi-cache serve -endpoint "$CSI_ENDPOINT" -node-id e2e-node -cache-device "$E2E_DISK_cache" \
    -metrics-address "" -v=2 "$@" >> "$PLUGIN_LOG" 2>&1 &
  PLUGIN_PID=$!
  if ! csictl -timeout 120s wait; then
    tail -n 40 "$PLUGIN_LOG"
    fail "csi-cache serve did not answer Probe"
  fi
  log "csi-cache serve is up (pid $PLUGIN_PID)"
}

# stop_plugin stops csi-cache serve with SIGTERM (staged volumes stay
# attached) and fails if it exits with an error.
stop_plugin() {
  kill -TERM "$PLUGIN_PID"
  wait "$PLUGIN_PID" || { tail -n 40 "$PLUGIN_LOG"; fail "csi-cache serve exited with $?"; }
}

# plugin_log_has PATTERN: the plugin's log since the last start_plugin
# matches PATTERN (grep -E).
plugin_log_has() {
  awk '/^==== csi-cache serve/ { n = NR } { l[NR] = $0 } END { for (i = n; i <= NR; i++) print l[i] }' "$PLUGIN_LOG" |
    grep -qE "$1"
}

# stage_mount ID FS / unstage_mount ID: NodeStage + NodePublish (and the
# reverse) of a mount volume at kubelet's paths.
stage_mount() {
  csictl stage "$1" "$(staging_path "$1")" -fs "$2"
  csictl publish "$1" "$(staging_path "$1")" "$(target_path "$1")" -fs "$2"
}
unstage_mount() {
  csictl unpublish "$1" "$(target_path "$1")"
  csictl unstage "$1" "$(staging_path "$1")"
}
# stage_block ID / unstage_block ID: the same for raw block access; the
# device is then at $(block_target_path ID).
stage_block() {
  csictl stage -block "$1" "$(block_staging_path "$1")"
  csictl publish -block "$1" "$(block_staging_path "$1")" "$(block_target_path "$1")"
}
unstage_block() {
  csictl unpublish "$1" "$(block_target_path "$1")"
  csictl unstage "$1" "$(block_staging_path "$1")"
}

# fsck_volume ID FS stages an unstaged volume for raw block access and runs
# the filesystem's read-only check on it.
fsck_volume() {
  stage_block "$1"
  _dev=$(block_target_path "$1")
  case $2 in
    ext4) fsck.ext4 -fn "$_dev" > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "fsck.ext4 -fn of $1"; } ;;
    xfs) xfs_repair -n "$_dev" > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "xfs_repair -n of $1"; } ;;
    *) fail "fsck_volume: unknown filesystem $2" ;;
  esac
  log "ok: $2 on volume $1 checks clean"
  unstage_block "$1"
}

# log_fsck_calls puts a wrapper in front of fsck: every call (mount-utils
# runs "fsck -a DEV" before it mounts an ext4 volume) is logged with its
# output and exit status to $E2E_OUT/fsck-calls.log; output and status are
# passed on.
log_fsck_calls() {
  _real=$(command -v fsck)
  [ "$_real" != /usr/local/bin/fsck ] || return 0
  cat > /usr/local/bin/fsck << EOF
#!/bin/sh
out=\$($_real "\$@" 2>&1)
rc=\$?
{ echo "fsck \$* -> exit \$rc"; echo "\$out" | sed 's/^/  /'; } >> "$E2E_OUT/fsck-calls.log"
echo "\$out"
exit \$rc
EOF
  chmod 755 /usr/local/bin/fsck
}

# fsck_calls_clean fails unless fsck was called (log_fsck_calls) and every
# call exited 0: at most a journal replay, nothing repaired (exit 1).
fsck_calls_clean() {
  grep -q -- '-> exit' "$E2E_OUT/fsck-calls.log" 2> /dev/null || fail "fsck was not called"
  if grep -- '-> exit' "$E2E_OUT/fsck-calls.log" | grep -qv -- '-> exit 0$'; then
    cat "$E2E_OUT/fsck-calls.log"
    fail "fsck found errors to repair before a mount"
  fi
  log "ok: $(grep -c -- '-> exit 0' "$E2E_OUT/fsck-calls.log") fsck calls before mounts found nothing to repair"
}

# mount_device PATH prints the device mounted at PATH.
mount_device() { awk -v p="$1" '$2 == p { d = $1 } END { print d }' /proc/mounts; }
