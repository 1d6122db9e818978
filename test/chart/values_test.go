package chart

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// binaryDefaultDriverName is the driver name `csi-cache serve` uses by default.
// TODO(pkg/driver): replace with driver.DefaultDriverName once pkg/driver is merged;
// until then TestDriverNameMatchesBinary also reads the constant from pkg/driver's
// source when it exists.
const binaryDefaultDriverName = "csi-cache.io"

func TestDriverNameMatchesBinary(t *testing.T) {
	out, err := Render(Options{ChartDir: chartDir, ReleaseName: "csi-cache", Namespace: "csi-cache"})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Decode(out.Manifests)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.CSIDrivers) != 1 || objs.CSIDrivers[0].Name != binaryDefaultDriverName {
		t.Fatalf("default CSIDriver %v, want %s", objs.CSIDrivers, binaryDefaultDriverName)
	}
	t.Run("pkg/driver", func(t *testing.T) {
		name, err := constInPackage(filepath.Join(repoRoot, "pkg", "driver"), "DefaultDriverName")
		if errors.Is(err, fs.ErrNotExist) {
			t.Skip("pkg/driver does not exist yet")
		}
		if err != nil {
			t.Fatal(err)
		}
		if name != binaryDefaultDriverName || name != objs.CSIDrivers[0].Name {
			t.Errorf("pkg/driver.DefaultDriverName = %q, the chart's driverName %q", name, objs.CSIDrivers[0].Name)
		}
	})
}

// constInPackage returns the value of a string constant declared in the Go
// package in dir (test files excluded); fs.ErrNotExist when dir or the constant
// does not exist.
func constInPackage(dir, name string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	fset := token.NewFileSet()
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.SkipObjectResolution)
		if err != nil {
			return "", err
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, s := range gd.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if n.Name != name || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						return "", errors.New(name + " is not a string literal")
					}
					return strconv.Unquote(lit.Value)
				}
			}
		}
	}
	return "", fs.ErrNotExist
}

// TestSchemaRejectsBadValues: values.schema.json turns mistakes into errors
// instead of manifests.
func TestSchemaRejectsBadValues(t *testing.T) {
	sc := func(k string, v any) map[string]any {
		return map[string]any{"storageClasses": map[string]any{"writethrough": map[string]any{k: v}}}
	}
	for name, c := range map[string]struct {
		values map[string]any
		want   string // part of the error
	}{
		"cacheMode":               {sc("cacheMode", "writeabout"), "cacheMode"},
		"fsType":                  {sc("fsType", "btrfs"), "fsType"},
		"backing":                 {sc("backing", "nfs"), "backing"},
		"sequentialCutoff":        {sc("sequentialCutoff", "4 MiB"), "sequentialCutoff"},
		"negative cutoff":         {sc("sequentialCutoff", -1), "sequentialCutoff"},
		"reclaimPolicy":           {sc("reclaimPolicy", "Recycle"), "reclaimPolicy"},
		"storageClass typo":       {sc("cachemode", "writeback"), "cachemode"},
		"storageClass key":        {map[string]any{"storageClasses": map[string]any{"Fast_SC": map[string]any{"enabled": true}}}, "Fast_SC"},
		"class missing fields":    {map[string]any{"storageClasses": map[string]any{"scratch": map[string]any{"enabled": true}}}, "scratch"},
		"cache size":              {map[string]any{"cache": map[string]any{"size": "ten gigs"}}, "size"},
		"cache device relative":   {map[string]any{"cache": map[string]any{"device": "nvme0n1"}}, "device"},
		"kubeletDir relative":     {map[string]any{"kubeletDir": "var/lib/kubelet"}, "kubeletDir"},
		"dataDir root":            {map[string]any{"dataDir": "/"}, "dataDir"},
		"unknown top-level key":   {map[string]any{"cacheDevice": "/dev/nvme0n1"}, "cacheDevice"},
		"driverName":              {map[string]any{"driverName": "CSI_Cache"}, "driverName"},
		"metrics port":            {map[string]any{"metrics": map[string]any{"port": 70000}}, "port"},
		"sidecar without tag":     {map[string]any{"sidecars": map[string]any{"provisioner": map[string]any{"image": map[string]any{"tag": ""}}}}, "tag"},
		"pull policy":             {map[string]any{"image": map[string]any{"pullPolicy": "Sometimes"}}, "pullPolicy"},
		"maxVolumes zero":         {map[string]any{"maxVolumes": 0}, "maxVolumes"},
		"nbdsMax string":          {map[string]any{"nbd": map[string]any{"nbdsMax": "many"}}, "nbdsMax"},
		"provisioner timeout":     {map[string]any{"sidecars": map[string]any{"provisioner": map[string]any{"timeout": "sixty"}}}, "timeout"},
		"nodeSelector non-string": {map[string]any{"node": map[string]any{"nodeSelector": map[string]any{"disk": true}}}, "nodeSelector"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Render(Options{ChartDir: chartDir, ReleaseName: "csi-cache", Namespace: "csi-cache", Values: c.values})
			if err == nil {
				t.Fatalf("values %v were accepted", c.values)
			}
			if !strings.Contains(err.Error(), "values don't meet the specifications") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want a schema error about %s, got: %v", c.want, err)
			}
		})
	}
}

// TestTemplateRejectsMissingServiceAccountName: with serviceAccount.create=false the
// chart needs the name of the existing one.
func TestTemplateRejectsMissingServiceAccountName(t *testing.T) {
	_, err := Render(Options{ChartDir: chartDir, ReleaseName: "csi-cache", Namespace: "csi-cache",
		Values: map[string]any{"serviceAccount": map[string]any{"create": false}}})
	if err == nil || !strings.Contains(err.Error(), "serviceAccount.name is required") {
		t.Fatalf("got %v, want the required-name error", err)
	}
}
