#!/usr/bin/env bash
# Writes deploy/csi-cache.yaml, the plain manifests: charts/csi-cache rendered with
# its default values by Helm's Go packages (test/chart, a separate Go module).
# test/chart's TestDeployInSync fails when the file is out of date.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/test/chart"
go run ./cmd/chart-render -chart "$root/charts/csi-cache" -out "$root/deploy/csi-cache.yaml"
echo "chart-render: wrote deploy/csi-cache.yaml"
