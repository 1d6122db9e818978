package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/metrics"
	"github.com/csi-cache/csi-cache/pkg/nbd"
)

// exportedNames gathers a registry with every csi-cache collector holding at
// least one series and returns the csicache_ metric family names.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	cs := newCacheSet(t)
	if _, err := cs.CreateVolume(engine.VolumeSpec{Name: "pvc-a", Size: mib}); err != nil {
		t.Fatal(err)
	}
	nbdc := metrics.NewNBDCollector()
	nbdc.ObserveRequest(nbd.RequestInfo{Export: "pvc-a", Command: nbd.CmdRead, Length: 4096, Errno: 5})
	nbdc.ObserveRequest(nbd.RequestInfo{Export: "pvc-a", Command: nbd.CmdRead, Length: 4096})
	csi := metrics.NewCSIMetrics()
	csi.Observe("/csi.v1.Identity/Probe", nil, time.Millisecond)
	reg := metrics.NewRegistry()
	reg.MustRegister(metrics.NewEngineCollector(cs), nbdc, csi)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "csicache_") {
			names[f.GetName()] = true
		}
	}
	return names
}

var metricName = regexp.MustCompile(`csicache_[a-z_]+[a-z]`)

// referenced returns the metric families named in text (histogram series
// suffixes stripped).
func referenced(text string) map[string]bool {
	out := map[string]bool{}
	for _, m := range metricName.FindAllString(text, -1) {
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if strings.HasSuffix(m, "_seconds"+suf) {
				m = strings.TrimSuffix(m, suf)
			}
		}
		out[m] = true
	}
	return out
}

// TestDocsListEveryMetric: docs/operations.md names every exported metric and
// no metric that does not exist.
func TestDocsListEveryMetric(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	exported, documented := exportedNames(t), referenced(string(doc))
	for name := range exported {
		if !documented[name] {
			t.Errorf("%s is exported but not in docs/operations.md", name)
		}
	}
	for name := range documented {
		if !exported[name] {
			t.Errorf("docs/operations.md names %s, which is not exported", name)
		}
	}
}

// TestDashboardQueriesExist: every metric a panel of the Grafana dashboard
// queries is exported, and every panel has a query.
func TestDashboardQueriesExist(t *testing.T) {
	b, err := os.ReadFile("../../charts/csi-cache/dashboards/csi-cache.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string
		Panels []struct {
			Type, Title string
			Targets     []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	exported := exportedNames(t)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for name := range referenced(tg.Expr) {
				used[name] = true
				if !exported[name] {
					t.Errorf("panel %q queries %s, which is not exported", p.Title, name)
				}
			}
		}
	}
	var unused []string
	for name := range exported {
		if !used[name] {
			unused = append(unused, name)
		}
	}
	slices.Sort(unused)
	t.Logf("exported but not on the dashboard: %v", unused)
}
