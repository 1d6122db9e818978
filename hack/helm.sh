#!/usr/bin/env bash
# Runs the pinned helm, building it first if needed: `go install` of the same
# helm.sh/helm/v3 version that test/chart/go.mod pins, into .cache/bin (ignored by
# git). The first build takes a few minutes; later runs start at once.
#
#   hack/helm.sh version
#   hack/helm.sh template charts/csi-cache
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(awk '$1 == "helm.sh/helm/v3" { print $2; exit }' "$root/test/chart/go.mod")
if [[ -z "$version" ]]; then
	echo "hack/helm.sh: no helm.sh/helm/v3 version in test/chart/go.mod" >&2
	exit 1
fi
bindir=$root/.cache/bin/helm-$version
if [[ ! -x "$bindir/helm" ]]; then
	echo "hack/helm.sh: installing helm $version into ${bindir#"$root"/} (once)" >&2
	mkdir -p "$bindir"
	GOBIN=$bindir CGO_ENABLED=0 go install "helm.sh/helm/v3/cmd/helm@$version"
fi
exec "$bindir/helm" "$@"
