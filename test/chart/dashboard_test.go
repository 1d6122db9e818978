package chart

import (
	"encoding/json"
	"os"
	"testing"
)

func mustRender(t *testing.T, values map[string]any) *Objects {
	t.Helper()
	out, err := Render(Options{ChartDir: chartDir, ReleaseName: "csi-cache", Namespace: "csi-cache", Values: values})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Decode(out.Manifests)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// The dashboard ConfigMap ships dashboards/csi-cache.json unchanged (no
// templating of its {{...}} legends), labelled for Grafana's sidecar, and only
// when asked for.
func TestDashboardConfigMap(t *testing.T) {
	objs := mustRender(t, map[string]any{"metrics": map[string]any{"dashboard": map[string]any{"enabled": true}}})
	if len(objs.ConfigMaps) != 1 {
		t.Fatalf("%d ConfigMaps, want the dashboard", len(objs.ConfigMaps))
	}
	cm := objs.ConfigMaps[0]
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("labels %v lack grafana_dashboard", cm.Labels)
	}
	want, err := os.ReadFile("../../charts/csi-cache/dashboards/csi-cache.json")
	if err != nil {
		t.Fatal(err)
	}
	got := cm.Data["csi-cache.json"]
	if got != string(want) && got+"\n" != string(want) {
		t.Error("the ConfigMap's dashboard differs from dashboards/csi-cache.json")
	}
	if !json.Valid([]byte(got)) {
		t.Error("the dashboard in the ConfigMap is not valid JSON")
	}
	if objs := mustRender(t, nil); len(objs.ConfigMaps) != 0 {
		t.Error("a dashboard ConfigMap without metrics.dashboard.enabled")
	}
}
