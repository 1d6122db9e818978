package chart

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"helm.sh/helm/v3/pkg/releaseutil"
)

// TestDeployInSync: deploy/csi-cache.yaml is the chart rendered with its defaults.
func TestDeployInSync(t *testing.T) {
	want, err := DeployManifests(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(repoRoot, "deploy", "csi-cache.yaml")
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run hack/chart-render.sh)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is out of date with charts/csi-cache: run hack/chart-render.sh\n%s", file, firstDiff(got, want))
	}
	// Every document of the file, the Namespace included, decodes strictly.
	docs := releaseutil.SplitManifests(string(got))
	if len(docs) < 10 {
		t.Fatalf("%s has %d documents", file, len(docs))
	}
	for _, d := range docs {
		if _, _, err := strictDecoder.Decode([]byte(d), nil, nil); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}

// firstDiff describes the first line where a and b differ.
func firstDiff(a, b []byte) string {
	al, bl := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y []byte
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if !bytes.Equal(x, y) || i >= len(al) || i >= len(bl) {
			return "line " + strconv.Itoa(i+1) + ":\n  file:     " + string(x) + "\n  rendered: " + string(y)
		}
	}
	return "(no line differs)"
}
