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
# dump_state, while the stuck state may still be there.
watch_nbd_timeouts() {
  while sleep 1; do
    if dmesg | grep -q 'nbd.*Connection timed out'; then
      log "nbd request timeout seen; dumping state"
      dump_state
      return
    fi
  done
}

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
