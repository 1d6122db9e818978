// Command chart-render writes the plain manifests of deploy/ from the Helm chart
// (hack/chart-render.sh runs it).
//
//	go run ./cmd/chart-render -chart ../../charts/csi-cache -out ../../deploy/csi-cache.yaml
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/csi-cache/csi-cache/test/chart"
)

func main() {
	chartDir := flag.String("chart", "../../charts/csi-cache", "the chart's directory")
	out := flag.String("out", "../../deploy/csi-cache.yaml", "file to write; - for stdout")
	flag.Parse()
	b, err := chart.DeployManifests(*chartDir)
	if err == nil {
		if *out == "-" {
			_, err = os.Stdout.Write(b)
		} else {
			err = os.WriteFile(*out, b, 0o644)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "chart-render: %v\n", err)
		os.Exit(1)
	}
}
