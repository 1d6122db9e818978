#!/usr/bin/env bash
# deps.sh installs the Debian packages the tests use when they are missing.
# It is fast (no apt at all) when every tool is already present.
set -euo pipefail

# tool -> Debian package
declare -A pkgs=(
  [fio]=fio
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdkit]=nbdkit
  [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils
  [qemu-nbd]=qemu-utils
  [mkfs.ext4]=e2fsprogs
  [mkfs.xfs]=xfsprogs
  [blkid]=util-linux
  [mount]=mount
)

missing=()
for tool in "${!pkgs[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ] && ! [ -x "/sbin/$tool" ]; then
    missing+=("${pkgs[$tool]}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t want < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "deps: installing ${want[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
echo "deps: done" >&2
