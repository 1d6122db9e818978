#!/usr/bin/env bash
# csi-sanity.sh runs the csi-sanity command (github.com/kubernetes-csi/csi-test
# v5.6.0) against the built `csi-cache serve` binary, for mount and then for
# block access.
#
# The plugin runs with its embedded defaults (a sparse 10Gi cache file,
# backing files beside it), but with every path moved into a scratch
# directory ($CSI_CACHE_SANITY_DIR, default a new temporary directory) so the
# host's /var/lib/csi-cache and /csi are left alone.
#
# The Node specs stage volumes on kernel NBD devices. On a kernel without the
# nbd driver (this sandbox) they are skipped and the reason is printed; in the
# VM (nbd.ko loaded) every spec runs.
#
# Usage: hack/csi-sanity.sh [extra csi-sanity flags, e.g. -ginkgo.focus=...]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
GO=${GO:-go}
SANITY_VERSION=v5.6.0
bindir=$root/.cache/bin
sanity=$bindir/csi-sanity

# Install csi-sanity once (the .cache directory is ignored by git).
if ! [ -x "$sanity" ] || ! "$GO" version -m "$sanity" 2>/dev/null | grep -q "csi-test/v5[[:space:]]*$SANITY_VERSION[[:space:]]"; then
  echo "csi-sanity.sh: installing csi-sanity $SANITY_VERSION into $bindir" >&2
  mkdir -p "$bindir"
  GOBIN=$bindir "$GO" install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$SANITY_VERSION"
fi

echo "csi-sanity.sh: building csi-cache" >&2
CGO_ENABLED=0 "$GO" build -o "$bindir/csi-cache" ./cmd/csi-cache

keep=${CSI_CACHE_SANITY_DIR:+yes}
work=${CSI_CACHE_SANITY_DIR:-$(mktemp -d /tmp/csi-cache-sanity.XXXXXX)}
mkdir -p "$work"
status=1
sock=$work/csi.sock
pid=

cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
  fi
  # Keep the scratch directory (serve.log) when something failed.
  if [ "$status" = 0 ] && [ -z "$keep" ]; then
    rm -rf "$work"
  elif [ "$status" != 0 ]; then
    echo "csi-sanity.sh: kept $work (serve.log) for inspection" >&2
  fi
}
trap cleanup EXIT

# Node specs need a kernel NBD device.
skip=()
if ! [ -d /sys/module/nbd ] && ! modprobe nbd 2>/dev/null; then
  reason="this kernel has no nbd driver (no /sys/module/nbd and 'modprobe nbd' failed): NodeStage cannot attach a volume, so the Node specs are skipped; run them in a VM with: hack/e2e.sh csi-sanity"
  echo "csi-sanity.sh: SKIPPING the Node Service specs: $reason" >&2
  skip=(-ginkgo.skip='Node Service')
fi

echo "csi-sanity.sh: starting csi-cache serve in $work (log: $work/serve.log)" >&2
"$bindir/csi-cache" serve \
  -endpoint "unix://$sock" \
  -node-id sanity-node \
  -cache-device "$work/cache.img" \
  -backing-dir "$work/backing" \
  -state-dir "$work/state" \
  -metrics-address "" \
  -v=2 >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  [ -S "$sock" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "csi-sanity.sh: csi-cache serve exited:" >&2
    cat "$work/serve.log" >&2
    exit 1
  fi
  sleep 0.1
done
[ -S "$sock" ] || { echo "csi-sanity.sh: no socket at $sock" >&2; cat "$work/serve.log" >&2; exit 1; }

status=0
for access in mount block; do
  echo "csi-sanity.sh: ===== $access access =====" >&2
  rm -rf "$work/mnt-$access" "$work/staging-$access"
  "$sanity" \
    -csi.endpoint "unix://$sock" \
    -csi.mountdir "$work/mnt-$access" \
    -csi.stagingdir "$work/staging-$access" \
    -csi.testvolumeaccesstype "$access" \
    -csi.testvolumesize $((256 << 20)) \
    -csi.testvolumeexpandsize $((512 << 20)) \
    -ginkgo.no-color \
    "${skip[@]}" "$@" || status=$?
done
if [ ${#skip[@]} -gt 0 ]; then
  echo "csi-sanity.sh: the Node Service specs were skipped: $reason" >&2
fi
exit $status
