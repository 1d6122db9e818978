#!/usr/bin/env bash
# build-base.sh builds the cached part of the VM's initramfs: busybox, the
# kernel modules the scenarios need (in load order, decompressed for busybox
# insmod), and the host's filesystem and block tools with their shared
# libraries. The per-run part (init, scenarios, project binaries) is a second
# cpio archive appended to this one (see host.sh).
#
# Usage: build-base.sh KVER MODROOT OUT.cpio
#   KVER     kernel version (MODROOT/lib/modules/KVER, depmod already run)
#   MODROOT  root of the unpacked kernel package
set -euo pipefail
KVER=${1:?kernel version}; MODROOT=${2:?modules root}; OUT=${3:?output}
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

# Modules, loaded in this order with their dependencies first; "name args".
MODULES=(
  "crc32c_generic" "crc32c_intel" "libcrc32c" "crc16"
  "ext4" "xfs"
  "nbd nbds_max=8"
  "virtio_pci" "virtio_blk" "9pnet_virtio" "9p"
)
# Tools a CSI node uses (k8s.io/mount-utils: mount, umount, blkid -p, mkfs.*,
# fsck, resize2fs, xfs_growfs, blockdev, dumpe2fs, xfs_io) and the scenarios
# use (fio, debugfs, lsblk, findmnt, losetup).
TOOLS=(
  mke2fs mkfs.ext4 mkfs.ext3 e2fsck fsck.ext4 fsck.ext3 resize2fs dumpe2fs tune2fs debugfs
  mkfs.xfs xfs_growfs xfs_repair xfs_io xfs_db xfs_admin fsck.xfs
  blkid mount umount fsck blockdev lsblk findmnt losetup
  fio
)

R=$(mktemp -d "${TMPDIR:-/tmp}/e2e-base.XXXXXX")
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,lib/modules,lib64,etc,proc,sys,dev,run,tmp,mnt,root,e2e/out}

# busybox (static) provides the shell and the small tools; real tools in
# /usr/{bin,sbin} come first in PATH.
cp /bin/busybox "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do
  [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"
done

# Kernel modules: resolve the dependency closure with the host's modprobe.
: > "$R/lib/modules/load-order"
declare -A args=()
for m in "${MODULES[@]}"; do
  name=${m%% *}; [ "$name" = "$m" ] || args[$name]=${m#* }
done
for m in "${MODULES[@]}"; do
  name=${m%% *}
  modprobe -d "$MODROOT" -S "$KVER" --show-depends "$name" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  b=$(basename "$ko")
  case $ko in
    *.ko.xz)  xz -dc "$ko" > "$R/lib/modules/${b%.xz}"; b=${b%.xz} ;;
    *.ko.zst) zstd -qdc "$ko" > "$R/lib/modules/${b%.zst}"; b=${b%.zst} ;;
    *)        cp "$ko" "$R/lib/modules/$b" ;;
  esac
  echo "$b" >> "$R/lib/modules/load-order"
done
for name in "${!args[@]}"; do   # module parameters
  sed -i "s|^${name//_/[-_]}\.ko\$|& ${args[$name]}|" "$R/lib/modules/load-order"
done

# Tools with their shared libraries, at the paths ldd reports.
copy_lib() {
  local l=$1
  [ -e "$R$l" ] && return 0
  mkdir -p "$R$(dirname "$l")"
  cp -L "$l" "$R$l"
}
ELFS=()
for t in "${TOOLS[@]}"; do
  p=$(command -v "$t") || { echo "build-base: $t not found" >&2; exit 1; }
  real=$(readlink -f "$p")
  dest=/usr/${real#/usr/}   # /usr/sbin/..., whatever symlinked dir it was found in
  dest=$(dirname "$dest")/$t
  mkdir -p "$R$(dirname "$dest")"
  cp -L "$p" "$R$dest"
  if head -c4 "$p" | grep -q ELF; then
    ldd "$p" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
      while read -r l; do copy_lib "$l"; done
    ELFS+=("$dest")
  fi
done
# Check with the copied loader that every library resolves inside the tree.
for e in "${ELFS[@]}"; do
  if ! out=$(chroot "$R" /lib64/ld-linux-x86-64.so.2 --list "$e" 2>&1) || grep -q 'not found' <<< "$out"; then
    echo "build-base: $e does not resolve its libraries in the initramfs:" >&2
    echo "$out" >&2
    exit 1
  fi
done
cp /etc/mke2fs.conf "$R/etc/" 2>/dev/null || true
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"
ln -s /proc/self/mounts "$R/etc/mtab"

mkdir -p "$(dirname "$OUT")"
# Uncompressed: the guest copies it in about a second less than it would
# take to gunzip it under TCG.
(cd "$R" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "build-base: $(du -h "$OUT" | cut -f1), $(wc -l < "$R/lib/modules/load-order") modules"
