// Package lint holds tests that enforce project rules no compiler checks.
package lint

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// forbidden lists import path prefixes that must never appear in the dependency
// closure of a package pattern.
var forbidden = []struct {
	pattern  string
	prefixes []string
	why      string
}{
	{
		pattern:  "github.com/csi-cache/csi-cache/pkg/engine/...",
		prefixes: []string{"google.golang.org/grpc", "k8s.io/", "github.com/container-storage-interface/", "github.com/csi-cache/csi-cache/pkg/driver", "github.com/csi-cache/csi-cache/pkg/nbd"},
		why:      "the engine never imports grpc, Kubernetes or the layers above it",
	},
	{
		pattern:  "github.com/csi-cache/csi-cache/pkg/nbd/...",
		prefixes: []string{"google.golang.org/grpc", "github.com/container-storage-interface/", "github.com/csi-cache/csi-cache/pkg/driver"},
		why:      "the NBD export knows nothing of CSI",
	},
}

func TestLayering(t *testing.T) {
	for _, f := range forbidden {
		out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Deps", f.pattern).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", f.pattern, err)
		}
		dec := json.NewDecoder(strings.NewReader(string(out)))
		for dec.More() {
			var p struct{ ImportPath string }
			if err := dec.Decode(&p); err != nil {
				t.Fatalf("decode go list output: %v", err)
			}
			for _, bad := range f.prefixes {
				if strings.HasPrefix(p.ImportPath, bad) {
					t.Errorf("%s depends on %s: %s", f.pattern, p.ImportPath, f.why)
				}
			}
		}
	}
}
