#!/usr/bin/env bash
# `helm lint --strict` of charts/csi-cache with its default values and with each
# charts/csi-cache/ci/*-values.yaml, using the pinned helm (hack/helm.sh).
#
# Helm built with `go install` assumes Kubernetes v1.20 unless told otherwise, so
# the Kubernetes version is given explicitly (KUBE_VERSION).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kube_version=${KUBE_VERSION:-1.34.0}
chart=charts/csi-cache
helm=hack/helm.sh

"$helm" version --short
runs=0
for values in "" "$chart"/ci/*-values.yaml; do
	args=(lint --strict --kube-version "$kube_version" --namespace csi-cache "$chart")
	if [[ -n "$values" ]]; then
		args+=(--values "$values")
	fi
	echo "--- helm ${args[*]}"
	"$helm" "${args[@]}"
	runs=$((runs + 1))
done
echo "helm-lint: $runs lint runs passed"
