package chart

import (
	"path/filepath"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
)

// TestLint runs Helm's linter in-process, like `helm lint --strict` (warnings
// fail), with the default values and each ci values file. hack/helm-lint.sh runs
// the helm binary itself.
func TestLint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(DefaultKubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	for _, f := range append([]string{""}, files...) {
		name := "defaults"
		vals := map[string]any{}
		if f != "" {
			name = filepath.Base(f)
			v, err := chartutil.ReadValuesFile(f)
			if err != nil {
				t.Fatal(err)
			}
			vals = v.AsMap()
		}
		t.Run(name, func(t *testing.T) {
			l := lint.AllWithKubeVersion(chartDir, vals, "csi-cache", kv)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Error(m.Error())
				} else {
					t.Log(m.Error())
				}
			}
		})
	}
}
