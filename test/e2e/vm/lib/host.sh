# shellcheck shell=bash
# Host side of the VM harness, sourced by run.sh. Everything it downloads or
# builds lives under $E2E_CACHE; a run's logs and disks under $E2E_RUN.
#
# Requires: VM_DIR (test/e2e/vm), E2E_CACHE, E2E_RUN.

# Debian packages the harness needs on the host.
E2E_PACKAGES=(qemu-system-x86 busybox-static cpio kmod e2fsprogs xfsprogs fio util-linux mount xz-utils zstd)

e2e_log() { printf '[e2e %s] %s\n' "$(date +%T)" "$*" >&2; }
e2e_die() { e2e_log "error: $*"; exit 1; }

# e2e_deps installs the missing packages (no apt at all when none is).
e2e_deps() {
  local missing=() p st
  for p in "${E2E_PACKAGES[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || e2e_die "need root to install ${missing[*]}"
  e2e_log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# e2e_kernel makes sure a Debian kernel is unpacked in $E2E_CACHE/kernel and
# sets KVER, KROOT (unpacked package, modules under lib/modules) and VMLINUX.
# The first kernel fetched is kept; E2E_KERNEL_REFRESH=1 fetches the current
# one again.
e2e_kernel() {
  local kdir=$E2E_CACHE/kernel pkg tmp
  mkdir -p "$kdir"
  if [ -z "${E2E_KERNEL_REFRESH:-}" ] && [ -s "$kdir/current" ]; then
    KVER=$(cat "$kdir/current")
  else
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [ -z "$pkg" ]; then
      apt-get update -qq >/dev/null
      pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [ -n "$pkg" ] || e2e_die "cannot resolve linux-image-amd64 to a kernel package"
    KVER=${pkg#linux-image-}
  fi
  KROOT=$kdir/$KVER
  if [ ! -f "$KROOT/.done" ]; then
    e2e_log "fetching kernel $KVER"
    rm -rf "$KROOT"
    tmp=$(mktemp -d "$kdir/tmp.XXXXXX")
    chmod 755 "$tmp"   # apt-get download drops privileges to _apt
    (cd "$tmp" && { apt-get download -q "linux-image-$KVER" 2>&1 | grep -v -e unsandboxed -e '^Get:' >&2; } || true)
    ls "$tmp"/linux-image-*.deb >/dev/null 2>&1 || e2e_die "apt-get download linux-image-$KVER failed"
    dpkg-deb -x "$tmp"/linux-image-*.deb "$tmp/root"
    depmod -b "$tmp/root" "$KVER"
    e2e_vmlinux "$tmp/root/boot/vmlinuz-$KVER" "$tmp/root/boot/vmlinux"
    rm -f "$tmp"/*.deb
    mv "$tmp/root" "$KROOT"
    rmdir "$tmp"
    touch "$KROOT/.done"
  fi
  echo "$KVER" > "$kdir/current"
  VMLINUX=$KROOT/boot/vmlinux
  [ -f "$VMLINUX" ] || VMLINUX=$KROOT/boot/vmlinuz-$KVER
}

# e2e_vmlinux extracts the uncompressed ELF kernel from a bzImage with an xz
# payload. QEMU boots it through its PVH entry point, which skips real-mode
# setup and the decompression that is slow under TCG. On failure the bzImage
# is used.
e2e_vmlinux() {
  local in=$1 out=$2 off
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$in" | head -1 | cut -d: -f1)
  [ -n "$off" ] || return 0
  { tail -c +$((off + 1)) "$in" | xz -dc --single-stream > "$out.tmp"; } 2>/dev/null || true
  if [ "$(head -c4 "$out.tmp" 2>/dev/null | od -An -c | tr -d ' ')" = 177ELF ]; then
    mv "$out.tmp" "$out"
  else
    rm -f "$out.tmp"
  fi
}

# e2e_base builds (or reuses) the cached base initramfs for KVER and the
# installed tool versions; sets BASE_INITRD.
e2e_base() {
  local key
  key=$( { echo "$KVER"; cat "$VM_DIR/lib/build-base.sh";
           dpkg-query -W -f='${Package}=${Version}\n' "${E2E_PACKAGES[@]}"; } | sha256sum | cut -c1-16)
  BASE_INITRD=$E2E_CACHE/initrd/base-$key.cpio
  if [ ! -f "$BASE_INITRD" ]; then
    e2e_log "building base initramfs ($key)"
    rm -f "$E2E_CACHE"/initrd/base-*
    "$VM_DIR/lib/build-base.sh" "$KVER" "$KROOT" "$BASE_INITRD" >&2
  fi
}

# e2e_initrd builds the run's initramfs: the base archive followed by one
# with /init, the guest library, the scenarios and the binaries in
# $E2E_RUN/bin (installed in /usr/local/bin). Sets INITRD.
e2e_initrd() {
  local o=$E2E_RUN/overlay pad
  rm -rf "$o"
  mkdir -p "$o/e2e/scenarios" "$o/usr/local/bin"
  cp "$VM_DIR/guest/init" "$o/init"
  cp "$VM_DIR/guest/lib.sh" "$o/e2e/lib.sh"
  cp "$VM_DIR"/scenarios/*.sh "$o/e2e/scenarios/"
  cp "$VM_DIR"/scenarios/*.inc "$o/e2e/scenarios/" 2>/dev/null || true   # shared by scenarios
  rm -f "$o"/e2e/scenarios/*.host.sh
  cp "$E2E_RUN"/bin/* "$o/usr/local/bin/"
  chmod 755 "$o/init" "$o"/usr/local/bin/*
  INITRD=$E2E_RUN/initrd.img
  cp "$BASE_INITRD" "$INITRD"
  # The kernel reads concatenated archives; each must start 4-byte aligned.
  pad=$(( (4 - $(stat -c %s "$INITRD") % 4) % 4 ))
  head -c "$pad" /dev/zero >> "$INITRD"
  (cd "$o" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) >> "$INITRD"
}

# vm_boot NAME [KERNEL-ARGS...] boots the VM once for $SCENARIO, with the
# console in $SDIR/NAME.console, and waits for "E2E RESULT:" (the guest then
# powers off), for VM_KILL_ON (a regex; QEMU is SIGKILLed when the console
# matches it: a power loss), or for VM_TIMEOUT seconds (QEMU is killed).
# Sets VM_RESULT to PASS, FAIL..., KILLED or TIMEOUT; returns 0 for PASS and
# KILLED.
#
# Env: VM_MEM (MiB), VM_SMP, VM_TIMEOUT, VM_KILL_ON, VM_DISKS (array of
# name:size; raw files $SDIR/disk-NAME.img, created sparse on first use,
# kept across boots of the scenario; /dev/vda is the first). E2E_SHELL=1:
# the console is the terminal and a shell follows the scenario (C-a x quits).
vm_boot() {
  local name=$1; shift
  local log=$SDIR/$name.console d n names="" qpid start r
  local -a disks=()
  for d in "${VM_DISKS[@]}"; do
    n=${d%%:*}
    [ -f "$SDIR/disk-$n.img" ] || truncate -s "${d#*:}" "$SDIR/disk-$n.img"
    disks+=(-drive "file=$SDIR/disk-$n.img,if=virtio,format=raw,cache=none,aio=threads")
    names+=${names:+,}$n
  done
  mkdir -p "$SDIR/share"
  : > "$log"
  if [ -n "${E2E_SHELL:-}" ]; then   # interactive: console on the terminal
    qemu-system-x86_64 -accel tcg,thread=multi -cpu max -machine q35 -smp "$VM_SMP" -m "$VM_MEM" \
      -nographic -nodefaults -no-reboot -serial mon:stdio \
      -kernel "$VMLINUX" -initrd "$INITRD" \
      -append "console=ttyS0 panic=-1 loglevel=4 e2e.scenario=$SCENARIO e2e.disks=$names e2e.shell $*" \
      -virtfs "local,path=$SDIR/share,mount_tag=e2e,security_model=none,id=e2e" "${disks[@]}"
    VM_RESULT=SHELL
    return 0
  fi
  qemu-system-x86_64 -accel tcg,thread=multi -cpu max -machine q35 -smp "$VM_SMP" -m "$VM_MEM" \
    -nographic -nodefaults -no-reboot -serial "file:$log" \
    -kernel "$VMLINUX" -initrd "$INITRD" \
    -append "console=ttyS0 panic=-1 loglevel=4 e2e.scenario=$SCENARIO e2e.disks=$names $*" \
    -virtfs "local,path=$SDIR/share,mount_tag=e2e,security_model=none,id=e2e" \
    "${disks[@]}" 2> "$log.qemu" &
  qpid=$!
  echo "$qpid" > "$E2E_RUN/pids/$qpid"
  start=$SECONDS
  VM_RESULT=TIMEOUT
  while kill -0 "$qpid" 2>/dev/null; do
    if [ -n "${VM_KILL_ON:-}" ] && grep -qaE "$VM_KILL_ON" "$log"; then
      kill -9 "$qpid"; VM_RESULT=KILLED; break
    fi
    if (( SECONDS - start >= VM_TIMEOUT )); then
      e2e_log "$SCENARIO/$name: timeout after ${VM_TIMEOUT}s, killing QEMU"
      kill -9 "$qpid"; break
    fi
    sleep 0.2
  done
  wait "$qpid" 2>/dev/null || true
  rm -f "$E2E_RUN/pids/$qpid"
  if [ "$VM_RESULT" != KILLED ]; then
    r=$(grep -aoE 'E2E RESULT: [A-Z]+.*' "$log" | tail -1 | tr -d '\r')
    [ -n "$r" ] && VM_RESULT=${r#E2E RESULT: }
  fi
  [ "$VM_RESULT" = PASS ] || [ "$VM_RESULT" = KILLED ]
}

# run_scenario NAME TIMEOUT DIR runs one scenario in a subshell, with its
# logs and disks in DIR: defaults, then
# scenarios/NAME.host.sh if present (which may change VM_* and redefine
# scenario_main, e.g. to boot several times), then scenario_main.
run_scenario() {
  (
    SCENARIO=$1 VM_TIMEOUT=$2 SDIR=$3
    VM_MEM=1024 VM_SMP=2 VM_KILL_ON=
    VM_DISKS=()
    mkdir -p "$SDIR"
    scenario_main() { vm_boot boot; }
    if [ -f "$VM_DIR/scenarios/$SCENARIO.host.sh" ]; then
      # shellcheck source=/dev/null
      . "$VM_DIR/scenarios/$SCENARIO.host.sh"
    fi
    scenario_main
  )
}
