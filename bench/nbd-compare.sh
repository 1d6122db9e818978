#!/usr/bin/env bash
# nbd-compare.sh serves one image through `csi-cache export`, `nbdkit file`
# and `qemu-nbd`, runs fio's nbd engine against each on a unix socket, and
# prints a markdown table of medians with csi-cache's ratio to each peer.
#
#   bench/nbd-compare.sh                       # full run, ~15 minutes
#   RUNTIME=3 REPEATS=1 bench/nbd-compare.sh   # quick look
#   ROWS="rr32 delay" bench/nbd-compare.sh     # some rows only
#
# Rows (keys for ROWS):
#   rr1 rr32   4k randread  at QD1 / QD32
#   rw1 rw32   4k randwrite at QD1 / QD32
#   r1m w1m    1M sequential read / write at QD8
#   delay      4k randread QD32, cold cache over a backing that adds 1 ms per
#              IO, against `nbdkit --filter=delay file rdelay=1ms wdelay=1ms`
#
# Targets (issue #5): csi-cache >= 1.0x nbdkit on every row but delay, and
# >= 0.8x nbdkit-delay on the delay row. The script prints PASS or MISS per
# target and always exits 0 once the measurements ran (a nonzero exit means
# the benchmark itself failed).
#
# What csi-cache serves. `csi-cache export` (built from this checkout) with
# the image as the backing store of an engine volume (-backing-file), in
# CSI_CACHE_MODE (writeback: the cache takes the writes), -sequential-cutoff 0
# (so that reading the image once caches all of it) and a cache file of
# CSI_CACHE_CACHE_SIZE on tmpfs (/dev/shm): the peers serve the image from
# the page cache, so csi-cache's cache device is memory too, standing in for
# a fast NVMe; CSI_CACHE_STATE_DIR on a disk measures that disk instead. The
# delay row serves the same image with -backing-delay 1ms and an empty cache.
# The export's /metrics (-metrics-address) give the cache's hit ratio during
# the measurements, printed under the table.
#
# Method. Every row is measured REPEATS times; within a repeat the servers
# take turns, in an order rotated from one repeat and row to the next, so
# drift on a shared machine hits all of them alike. The table shows
# medians. Every measurement starts a fresh server with an empty state
# directory and stops it after. For the cached rows the whole image is then
# read through it (nbdcopy to null:), csi-cache's export again until a pass
# misses less than 1% of it (fills are dropped while the fill queue is
# full), so that its volume is fully cached; the page cache holds the image
# for all. A fresh cache per measurement keeps the rows independent: without
# a moving GC, random writes leave csi-cache's cache too fragmented to hold
# the whole volume again until writeback has cleaned it (the bypassed share
# under the table shows what the write rows themselves ran into). The delay
# row has no warm-up: a cold cache. The server's CPU time per IO
# (user+system, from /proc/<pid>/stat) is printed too: it is less sensitive
# to a noisy neighbour than IOPS.
#
# Environment:
#   RUNTIME=10     seconds per fio job (after RAMP seconds of ramp-up)
#   RAMP=1
#   REPEATS=3
#   ROWS="rr1 rr32 rw1 rw32 r1m w1m delay"
#   IMAGE_SIZE=1G  size of the random image (head -c syntax)
#   WORKDIR        where the image, sockets and logs go (default: a new
#                  directory under /var/tmp, removed at the end unless KEEP=1)
#   CSI_CACHE_MODE=writeback   cache mode of the csi-cache volume
#   CSI_CACHE_CACHE_SIZE=2G    size of its cache file (truncate -s syntax)
#   CSI_CACHE_STATE_DIR        where its state (the cache file) goes (default:
#                  a new directory under /dev/shm, or under WORKDIR without
#                  a writable /dev/shm); removed as each server stops
#   CSI_CACHE_SERVE_CMD, CSI_CACHE_DELAY_SERVE_CMD
#                  how csi-cache is started for the cached rows and for the
#                  delay row. Placeholders: {image} the image file, {socket}
#                  the unix socket to listen on, {dir} an empty directory for
#                  the server's state (the script creates {dir}/cache.img of
#                  CSI_CACHE_CACHE_SIZE first: export refuses to create a
#                  file under /dev/). The command must serve the image's
#                  content and run in the foreground until SIGTERM.
#   CSI_CACHE_EXPORT  export name csi-cache serves (default: vol0)
#   CSI_CACHE_STANDIN=1  serve through bench/cmd/nbdserve instead (pkg/nbd's
#                  server on a FileBackend: the NBD layer without the engine)
#   CSI_CACHE_GOMAXPROCS  GOMAXPROCS for the csi-cache server (default: Go's
#                  own, the CPU count or cgroup limit). On a 2-vCPU machine
#                  shared with fio, 1 keeps the Go scheduler's idle threads
#                  from spinning on the CPU fio needs; see bench/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

RUNTIME=${RUNTIME:-10}
RAMP=${RAMP:-1}
REPEATS=${REPEATS:-3}
ROWS=${ROWS:-"rr1 rr32 rw1 rw32 r1m w1m delay"}
IMAGE_SIZE=${IMAGE_SIZE:-1G}
KEEP=${KEEP:-0}
CSI_CACHE_STANDIN=${CSI_CACHE_STANDIN:-0}
if [ "$CSI_CACHE_STANDIN" = 1 ]; then
  CSI_CACHE_EXPORT=${CSI_CACHE_EXPORT:-}
else
  CSI_CACHE_EXPORT=${CSI_CACHE_EXPORT:-vol0}
fi
CSI_CACHE_MODE=${CSI_CACHE_MODE:-writeback}
CSI_CACHE_CACHE_SIZE=${CSI_CACHE_CACHE_SIZE:-2G}
CSI_CACHE_GOMAXPROCS=${CSI_CACHE_GOMAXPROCS:-}
# A warm-up of csi-cache reads the export at most this many times.
WARM_PASSES=${WARM_PASSES:-8}

log() { echo "nbd-compare: $*" >&2; }
die() { log "$*"; exit 1; }

# ---- tools -----------------------------------------------------------------

install_missing() {
  local -A pkgs=([fio]=fio [nbdkit]=nbdkit [qemu-nbd]=qemu-utils [nbdinfo]=libnbd-bin
    [nbdcopy]=libnbd-bin [jq]=jq)
  local missing=() tool
  for tool in "${!pkgs[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${pkgs[$tool]}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local want sudo=
  mapfile -t want < <(printf '%s\n' "${missing[@]}" | sort -u)
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  log "installing ${want[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
}
install_missing
fio --enghelp=nbd 2>/dev/null | grep -q uri || die "this fio has no nbd engine"

if [ -z "${WORKDIR:-}" ]; then
  WORKDIR=$(mktemp -d /var/tmp/nbd-compare.XXXXXX)
  [ "$KEEP" = 1 ] || trap_rm=$WORKDIR
fi
mkdir -p "$WORKDIR"
image=$WORKDIR/disk.img

if [ -z "${CSI_CACHE_STATE_DIR:-}" ]; then
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    CSI_CACHE_STATE_DIR=$(mktemp -d /dev/shm/nbd-compare.XXXXXX)
  else
    CSI_CACHE_STATE_DIR=$(mktemp -d "$WORKDIR/state.XXXXXX")
  fi
  state_rm=$CSI_CACHE_STATE_DIR
fi
mkdir -p "$CSI_CACHE_STATE_DIR"

# The servers, built from this checkout: `csi-cache export`, or the stand-in.
if [ "$CSI_CACHE_STANDIN" = 1 ]; then
  NBDSERVE=$WORKDIR/nbdserve
  (cd "$repo" && go build -o "$NBDSERVE" ./bench/cmd/nbdserve) || die "building bench/cmd/nbdserve failed"
  CSI_CACHE_SERVE_CMD=${CSI_CACHE_SERVE_CMD:-"$NBDSERVE -image {image} -socket {socket}"}
  CSI_CACHE_DELAY_SERVE_CMD=${CSI_CACHE_DELAY_SERVE_CMD:-"$NBDSERVE -image {image} -socket {socket} -delay 1ms"}
else
  CSI_CACHE_BIN=$WORKDIR/csi-cache
  (cd "$repo" && CGO_ENABLED=0 go build -o "$CSI_CACHE_BIN" ./cmd/csi-cache) || die "building cmd/csi-cache failed"
  export_cmd="$CSI_CACHE_BIN export -data-dir {dir} -backing-file {image} -socket {socket} -volume $CSI_CACHE_EXPORT"
  export_cmd+=" -mode $CSI_CACHE_MODE -sequential-cutoff 0 -metrics-address 127.0.0.1:0"
  CSI_CACHE_SERVE_CMD=${CSI_CACHE_SERVE_CMD:-"$export_cmd"}
  CSI_CACHE_DELAY_SERVE_CMD=${CSI_CACHE_DELAY_SERVE_CMD:-"$export_cmd -backing-delay 1ms"}
fi

# server name -> command template and export name
declare -A serve_cmd=(
  [csi-cache]=$CSI_CACHE_SERVE_CMD
  [nbdkit]="nbdkit -f -U {socket} file {image}"
  [qemu-nbd]="qemu-nbd -f raw -t -k {socket} {image}"
  [csi-cache-delay]=$CSI_CACHE_DELAY_SERVE_CMD
  [nbdkit-delay]="nbdkit -f -U {socket} --filter=delay file {image} rdelay=1ms wdelay=1ms"
)
declare -A export_name=([csi-cache]=$CSI_CACHE_EXPORT [csi-cache-delay]=$CSI_CACHE_EXPORT
  [nbdkit]="" [qemu-nbd]="" [nbdkit-delay]="")

# ---- servers ---------------------------------------------------------------

declare -A pid=()   # running server -> pid
declare -A sock=()  # running server -> socket
declare -A sdir=()  # running server -> state directory
declare -A maddr=() # running server -> host:port of its /metrics (csi-cache)
nstart=0

start_server() { # name
  local name=$1 dir cmd
  nstart=$((nstart + 1))
  dir=$CSI_CACHE_STATE_DIR/state.$name.$nstart
  sdir[$name]=$dir
  sock[$name]=$WORKDIR/$name.$nstart.sock
  mkdir -p "$dir"
  if [[ $name == csi-cache* ]] && [ "$CSI_CACHE_STANDIN" != 1 ]; then
    truncate -s "$CSI_CACHE_CACHE_SIZE" "$dir/cache.img"
  fi
  cmd=${serve_cmd[$name]}
  cmd=${cmd//\{image\}/$image}
  cmd=${cmd//\{socket\}/${sock[$name]}}
  cmd=${cmd//\{dir\}/$dir}
  if [ -n "$CSI_CACHE_GOMAXPROCS" ] && [[ $name == csi-cache* ]]; then
    cmd="env GOMAXPROCS=$CSI_CACHE_GOMAXPROCS $cmd"
  fi
  bash -c "exec $cmd" >"$WORKDIR/$name.$nstart.log" 2>&1 &
  pid[$name]=$!
  local uri i
  uri=$(uri_of "$name")
  for ((i = 0; i < 300; i++)); do
    if [ -S "${sock[$name]}" ] && nbdinfo --size "$uri" >/dev/null 2>&1; then
      maddr[$name]=$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' "$WORKDIR/$name.$nstart.log")
      return 0
    fi
    kill -0 "${pid[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORKDIR/$name.$nstart.log" >&2
  die "$name did not come up: $cmd"
}

stop_server() { # name
  local name=$1 p=${pid[$1]:-} i
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset "pid[$name]" "maddr[$name]"
  rm -rf "${sdir[$name]}"
}

# shellcheck disable=SC2317 # called by the trap
cleanup() {
  local name
  for name in "${!pid[@]}"; do stop_server "$name"; done
  if [ -n "${state_rm:-}" ]; then rm -rf "$state_rm"; fi
  if [ -n "${trap_rm:-}" ]; then rm -rf "$trap_rm"; fi
}
trap cleanup EXIT

uri_of() { echo "nbd+unix:///${export_name[$1]}?socket=${sock[$1]}"; }

# cache_counters name: "hit miss bypass read written" bytes of the csi-cache
# volume so far, from its /metrics; nothing without a metrics address.
cache_counters() {
  [ -n "${maddr[$1]:-}" ] || return 0
  curl -sf "http://${maddr[$1]}/metrics" | awk -v vol="volume=\"${export_name[$1]}\"" '
    index($1, vol) == 0 { next }
    $1 ~ /^csicache_volume_cache_hit_bytes_total/ { h = $2 }
    $1 ~ /^csicache_volume_cache_miss_bytes_total/ { m = $2 }
    $1 ~ /^csicache_volume_cache_bypass_bytes_total/ { b = $2 }
    $1 ~ /^csicache_volume_read_bytes_total/ { r = $2 }
    $1 ~ /^csicache_volume_written_bytes_total/ { w = $2 }
    END { printf "%.0f %.0f %.0f %.0f %.0f\n", h, m, b, r, w }'
}

cpu_ticks() { # pid: utime+stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# ---- measurement -----------------------------------------------------------

# row key -> "label|rw|bs|iodepth|metric|servers"
declare -A rowdef=(
  [rr1]="4k randread QD1|randread|4k|1|iops|csi-cache nbdkit qemu-nbd"
  [rr32]="4k randread QD32|randread|4k|32|iops|csi-cache nbdkit qemu-nbd"
  [rw1]="4k randwrite QD1|randwrite|4k|1|iops|csi-cache nbdkit qemu-nbd"
  [rw32]="4k randwrite QD32|randwrite|4k|32|iops|csi-cache nbdkit qemu-nbd"
  [r1m]="1M read QD8|read|1m|8|bw|csi-cache nbdkit qemu-nbd"
  [w1m]="1M write QD8|write|1m|8|bw|csi-cache nbdkit qemu-nbd"
  [delay]="4k randread QD32, 1 ms backing, cold|randread|4k|32|iops|csi-cache-delay nbdkit-delay"
)
for r in $ROWS; do [ -n "${rowdef[$r]:-}" ] || die "unknown row $r (known: ${!rowdef[*]})"; done

declare -A samples=() # "row server" -> space-separated values (IOPS or MiB/s)
declare -A cpu=()     # "row server" -> space-separated µs of server CPU per IO
declare -A cstat=()   # "row" -> summed "hit miss bypass read written" bytes of csi-cache
declare -A passes=()  # "row" -> space-separated warm-up passes before csi-cache's measurements

# add_counters row before after: adds the difference of two cache_counters
# lines to cstat[row].
add_counters() {
  if [ -z "$2" ] || [ -z "$3" ]; then return 0; fi
  cstat[$1]=$(awk -v a="$2" -v b="$3" -v s="${cstat[$1]:-0 0 0 0 0}" 'BEGIN{
    split(a, x); split(b, y); split(s, z)
    for (i = 1; i <= 5; i++) printf "%.0f%s", z[i] + y[i] - x[i], (i < 5 ? " " : "\n") }')
}

# run_fio row server: one measurement, appended to samples and cpu.
run_fio() {
  local row=$1 name=$2 label rw bs qd metric servers out t0 t1 ios val c0 c1
  IFS='|' read -r label rw bs qd metric servers <<<"${rowdef[$row]}"
  c0=$(cache_counters "$name")
  t0=$(cpu_ticks "${pid[$name]}")
  out=$(fio --name=bench --ioengine=nbd --uri="$(uri_of "$name")" --rw="$rw" --bs="$bs" \
    --iodepth="$qd" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
    --norandommap --randrepeat=0 --output-format=json 2>"$WORKDIR/fio.err") ||
    { cat "$WORKDIR/fio.err" >&2; die "fio failed on $row against $name"; }
  t1=$(cpu_ticks "${pid[$name]}")
  c1=$(cache_counters "$name")
  add_counters "$row" "$c0" "$c1"
  out=$(sed -n '/^{/,$p' <<<"$out") # fio's nbd engine prints a line before the JSON
  if [ "$metric" = iops ]; then
    val=$(jq '.jobs[0] | .read.iops + .write.iops' <<<"$out")
  else
    val=$(jq '.jobs[0] | (.read.bw + .write.bw) / 1024' <<<"$out")
  fi
  # IOs counted over the whole run (fio's io counters include the ramp).
  ios=$(jq '.jobs[0] | .read.total_ios + .write.total_ios' <<<"$out")
  samples["$row $name"]+="$val "
  if [ "$ios" -gt 0 ]; then
    cpu["$row $name"]+="$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$ios" \
      'BEGIN{printf "%.2f", t / hz * 1e6 / n}') "
  fi
  log "$(printf '%-40s %-16s %12.1f %s' "$label" "$name" "$val" "$metric")"
}

# warm name [row]: reads the whole export through name; a csi-cache export
# with metrics again until one pass misses less than 1% of it. With row, the
# number of passes is recorded for the report.
warm() {
  local name=$1 row=${2:-} n c0 c1 miss
  for ((n = 1; n <= WARM_PASSES; n++)); do
    c0=$(cache_counters "$name")
    nbdcopy "$(uri_of "$name")" null: || die "warm-up read through $name failed"
    c1=$(cache_counters "$name")
    if [ -z "$c0" ] || [ -z "$c1" ]; then break; fi
    miss=$(awk -v a="$c0" -v b="$c1" 'BEGIN{split(a, x); split(b, y); printf "%.0f", y[2] - x[2]}')
    if [ "$((miss * 100))" -lt "$image_bytes" ]; then
      break
    fi
    if [ "$n" = "$WARM_PASSES" ]; then
      log "$name: still $miss bytes of misses after $n warm-up passes"
    fi
  done
  if [ -n "$row" ] && [[ $name == csi-cache* ]]; then passes[$row]+="$((n > WARM_PASSES ? WARM_PASSES : n)) "; fi
}

log "workdir $WORKDIR; creating a $IMAGE_SIZE random image"
head -c "$IMAGE_SIZE" /dev/urandom >"$image"
cat "$image" >/dev/null
image_bytes=$(stat -c %s "$image")

started=$(date -u +%FT%TZ)
load0=$(cut -d' ' -f1-3 /proc/loadavg)

for ((rep = 0; rep < REPEATS; rep++)); do
  i=0
  for r in $ROWS; do
    IFS='|' read -r _ _ _ _ _ servers <<<"${rowdef[$r]}"
    read -ra order <<<"$servers"
    n=${#order[@]}
    for ((k = 0; k < n; k++)); do
      name=${order[$(((k + rep + i) % n))]}
      start_server "$name"
      if [ "$r" != delay ]; then warm "$name" "$r"; fi
      run_fio "$r" "$name"
      stop_server "$name"
    done
    i=$((i + 1))
  done
done
for name in "${!pid[@]}"; do stop_server "$name"; done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ----------------------------------------------------------------

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR]=$1} END{if (NR==0) print ""; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
fmt() { # value metric
  [ -n "$1" ] || { echo "-"; return; }
  if [ "$2" = iops ]; then awk -v v="$1" 'BEGIN{printf "%.1fk IOPS", v/1000}'; else awk -v v="$1" 'BEGIN{printf "%.0f MiB/s", v}'; fi
}
ratio() { # a b: a/b with two decimals, or - when either is missing
  if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN{if (b>0) printf "%.2f", a/b; else print "-"}'; else echo -; fi
}
share() { # a b: a/b with three decimals, or - when b is 0
  awk -v a="$1" -v b="$2" 'BEGIN{if (b>0) printf "%.3f", a/b; else print "-"}'
}
times() { if [ "$1" = - ]; then echo -; else echo "$1×"; fi; }

echo
echo "## nbd-compare $started"
echo
echo "$(nproc) CPUs, $(fio --version), $(nbdkit --version), $(qemu-nbd --version | head -1)"
echo "csi-cache: ${CSI_CACHE_SERVE_CMD//$WORKDIR/\$WORKDIR}; delay row: ${CSI_CACHE_DELAY_SERVE_CMD//$WORKDIR/\$WORKDIR}"
if [ "$CSI_CACHE_STANDIN" != 1 ]; then
  echo "csi-cache state (cache file of $CSI_CACHE_CACHE_SIZE) on $(df --output=fstype "$CSI_CACHE_STATE_DIR" | tail -1) ($CSI_CACHE_STATE_DIR)"
fi
echo "RUNTIME=$RUNTIME RAMP=$RAMP REPEATS=$REPEATS IMAGE_SIZE=$IMAGE_SIZE CSI_CACHE_GOMAXPROCS=${CSI_CACHE_GOMAXPROCS:-default}; load average $load0 before, $load1 after"
echo
echo "| row | csi-cache | nbdkit | qemu-nbd | vs nbdkit | vs qemu-nbd | target |"
echo "|---|---:|---:|---:|---:|---:|---|"
verdicts=()
for r in $ROWS; do
  IFS='|' read -r label _ _ _ metric _ <<<"${rowdef[$r]}"
  if [ "$r" = delay ]; then
    c=$(median <<<"${samples["$r csi-cache-delay"]:-}")
    k=$(median <<<"${samples["$r nbdkit-delay"]:-}")
    q=
    goal=0.8
  else
    c=$(median <<<"${samples["$r csi-cache"]:-}")
    k=$(median <<<"${samples["$r nbdkit"]:-}")
    q=$(median <<<"${samples["$r qemu-nbd"]:-}")
    goal=1.0
  fi
  rk=$(ratio "$c" "$k")
  rq=$(ratio "$c" "$q")
  verdict=MISS
  [ "$rk" != - ] && awk -v r="$rk" -v w="$goal" 'BEGIN{exit !(r >= w)}' && verdict=PASS
  verdicts+=("$verdict")
  echo "| $label | $(fmt "$c" "$metric") | $(fmt "$k" "$metric") | $(fmt "$q" "$metric") | $(times "$rk") | $(times "$rq") | ≥ ${goal}× nbdkit: $verdict |"
done
echo
echo "Server CPU per IO (µs, median; user+system of the server process):"
echo
echo "| row | csi-cache | nbdkit | qemu-nbd |"
echo "|---|---:|---:|---:|"
for r in $ROWS; do
  IFS='|' read -r label _ _ _ _ servers <<<"${rowdef[$r]}"
  if [ "$r" = delay ]; then
    echo "| $label | $(median <<<"${cpu["$r csi-cache-delay"]:-}") | $(median <<<"${cpu["$r nbdkit-delay"]:-}") | - |"
  else
    echo "| $label | $(median <<<"${cpu["$r csi-cache"]:-}") | $(median <<<"${cpu["$r nbdkit"]:-}") | $(median <<<"${cpu["$r qemu-nbd"]:-}") |"
  fi
done
if [ ${#cstat[@]} -gt 0 ]; then
  echo
  echo "csi-cache's cache during its measurements (from its /metrics; hits and misses are read bytes,"
  echo "bypassed is the share of read and written bytes that skipped the cache):"
  echo
  echo "| row | read hit ratio | bypassed | warm-up passes before each measurement |"
  echo "|---|---:|---:|---|"
  for r in $ROWS; do
    IFS='|' read -r label _ _ _ _ _ <<<"${rowdef[$r]}"
    [ -n "${cstat[$r]:-}" ] || continue
    read -r h m b rd wr <<<"${cstat[$r]}"
    echo "| $label | $(share "$h" "$((h + m))") | $(share "$b" "$((rd + wr))") | ${passes[$r]:--} |"
  done
fi
echo
echo "Samples (IOPS or MiB/s, in run order):"
for r in $ROWS; do
  IFS='|' read -r label _ _ _ _ servers <<<"${rowdef[$r]}"
  for name in $servers; do
    echo "  $label / $name: $(awk '{for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? " " : ""), $i}' <<<"${samples["$r $name"]:-}")"
  done
done
echo
pass=0
for v in "${verdicts[@]}"; do [ "$v" = PASS ] && pass=$((pass + 1)); done
echo "targets met: $pass of ${#verdicts[@]}"
exit 0
