package chart

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

const (
	chartDir = "../../charts/csi-cache"
	repoRoot = "../.."
	// socketInPod is where every container of the node pod finds the CSI socket.
	socketInPod = "/csi/csi.sock"
)

// renderCase is one set of values the chart is rendered with.
type renderCase struct {
	name               string
	release, namespace string
	files              []string
	values             map[string]any
}

// renderCases are the chart's defaults, every ci/*-values.yaml file (the same
// files hack/helm-lint.sh lints with), and a few inline cases.
func renderCases(t *testing.T) []renderCase {
	t.Helper()
	cases := []renderCase{
		{name: "defaults", release: "csi-cache", namespace: "csi-cache"},
		{name: "other-release", release: "fast", namespace: "kube-storage"},
		{
			// A backing directory whose path starts like dataDir's but is not in it.
			name: "backing-beside-datadir", release: "csi-cache", namespace: "storage",
			values: map[string]any{
				"dataDir": "/var/lib/csi-cache",
				"backing": map[string]any{"dir": "/var/lib/csi-cache-backing"},
				"cache":   map[string]any{"device": "/var/lib/csi-cache2/cache.img"},
			},
		},
		{
			name: "sidecar-overrides", release: "csi-cache", namespace: "csi-cache",
			values: map[string]any{
				"fullnameOverride": "cc",
				"logLevel":         5,
				"sidecars": map[string]any{
					"livenessProbe": map[string]any{"httpPort": 19808},
					"resizer":       map[string]any{"extraArgs": []any{"--workers=4"}},
				},
			},
		},
	}
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no ci values files in %s/ci: %v", chartDir, err)
	}
	for _, f := range files {
		cases = append(cases, renderCase{
			name:    strings.TrimSuffix(filepath.Base(f), "-values.yaml"),
			release: "csi-cache", namespace: "csi-cache",
			files: []string{f},
		})
	}
	return cases
}

func TestRender(t *testing.T) {
	for _, c := range renderCases(t) {
		t.Run(c.name, func(t *testing.T) {
			out, err := Render(Options{
				ChartDir: chartDir, ReleaseName: c.release, Namespace: c.namespace,
				ValuesFiles: c.files, Values: c.values,
			})
			if err != nil {
				t.Fatal(err)
			}
			objs, err := Decode(out.Manifests)
			if err != nil {
				t.Fatal(err)
			}
			r := &rendered{t: t, c: c, out: out, objs: objs, vals: out.Values}
			t.Run("metadata", r.checkMetadata)
			t.Run("csidriver", r.checkCSIDriver)
			t.Run("storageclasses", r.checkStorageClasses)
			t.Run("daemonset", r.checkDaemonSet)
			t.Run("rbac", r.checkRBAC)
			t.Run("metrics", r.checkMetrics)
			t.Run("notes", r.checkNotes)
		})
	}
}

// rendered is one rendered and decoded release with the values it came from.
type rendered struct {
	t    *testing.T
	c    renderCase
	out  *Output
	objs *Objects
	vals map[string]any
}

// val returns the value at a dotted path of the effective values.
func (r *rendered) val(t *testing.T, path string) any {
	t.Helper()
	var cur any = r.vals
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			t.Fatalf("values: %s: %q is not in a map", path, k)
		}
		cur, ok = m[k]
		if !ok {
			t.Fatalf("values: %s: no key %q", path, k)
		}
	}
	return cur
}

func (r *rendered) str(t *testing.T, path string) string {
	t.Helper()
	return fmt.Sprint(r.val(t, path))
}

func (r *rendered) boolean(t *testing.T, path string) bool {
	t.Helper()
	b, ok := r.val(t, path).(bool)
	if !ok {
		t.Fatalf("values: %s is not a bool", path)
	}
	return b
}

func (r *rendered) driverName(t *testing.T) string { return r.str(t, "driverName") }

func (r *rendered) kubeletDir(t *testing.T) string {
	return strings.TrimSuffix(r.str(t, "kubeletDir"), "/")
}

// checkMetadata: valid names and labels, namespaced objects in the release's
// namespace, cluster-scoped objects without one.
func (r *rendered) checkMetadata(t *testing.T) {
	namespaced := map[metav1.Object]bool{}
	for _, o := range r.objs.Namespaced {
		namespaced[o] = true
		if o.GetNamespace() != r.c.namespace {
			t.Errorf("%s: namespace %q, want the release's %q", o.GetName(), o.GetNamespace(), r.c.namespace)
		}
	}
	metas := slices.Clone(r.objs.Namespaced)
	for _, o := range r.objs.All {
		m, err := metaOf(o)
		if err != nil {
			t.Fatal(err)
		}
		if !namespaced[m] {
			metas = append(metas, m)
			if m.GetNamespace() != "" {
				t.Errorf("cluster-scoped %T %s has namespace %q", o, m.GetName(), m.GetNamespace())
			}
		}
	}
	for _, m := range metas {
		for _, e := range validation.IsDNS1123Subdomain(m.GetName()) {
			t.Errorf("name %q: %s", m.GetName(), e)
		}
		checkLabels(t, m.GetName(), m.GetLabels())
		if m.GetLabels()["app.kubernetes.io/instance"] != r.c.release {
			t.Errorf("%s: app.kubernetes.io/instance label %q, want %q", m.GetName(), m.GetLabels()["app.kubernetes.io/instance"], r.c.release)
		}
	}
}

func checkLabels(t *testing.T, what string, ls map[string]string) {
	t.Helper()
	for k, v := range ls {
		for _, e := range validation.IsQualifiedName(k) {
			t.Errorf("%s: label key %q: %s", what, k, e)
		}
		for _, e := range validation.IsValidLabelValue(v) {
			t.Errorf("%s: label %s=%q: %s", what, k, v, e)
		}
	}
}

func (r *rendered) checkCSIDriver(t *testing.T) {
	if len(r.objs.CSIDrivers) != 1 {
		t.Fatalf("%d CSIDrivers, want 1", len(r.objs.CSIDrivers))
	}
	d := r.objs.CSIDrivers[0]
	if d.Name != r.driverName(t) {
		t.Errorf("CSIDriver %q, want driverName %q", d.Name, r.driverName(t))
	}
	s := d.Spec
	if s.AttachRequired == nil || *s.AttachRequired {
		t.Error("attachRequired must be false (node-local volumes, no attacher)")
	}
	if s.StorageCapacity == nil || !*s.StorageCapacity {
		t.Error("storageCapacity must be true (the provisioner publishes CSIStorageCapacity)")
	}
	if s.FSGroupPolicy == nil || *s.FSGroupPolicy != storagev1.FileFSGroupPolicy {
		t.Errorf("fsGroupPolicy %v, want File", s.FSGroupPolicy)
	}
	if !slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
		t.Errorf("volumeLifecycleModes %v, want [Persistent]", s.VolumeLifecycleModes)
	}
}

func (r *rendered) checkStorageClasses(t *testing.T) {
	classes, _ := r.val(t, "storageClasses").(map[string]any)
	enabled := 0
	for _, sc := range classes {
		if m, _ := sc.(map[string]any); m["enabled"] == true {
			enabled++
		}
	}
	if len(r.objs.StorageClasses) != enabled {
		t.Errorf("%d StorageClasses, want the %d enabled", len(r.objs.StorageClasses), enabled)
	}
	defaults := 0
	allowed := map[string][]string{
		"cacheMode":                 {"writethrough", "writeback", "writearound", "none"},
		"backing":                   {"file", "blockdev", "none"},
		"csi.storage.k8s.io/fstype": {"ext4", "xfs"},
	}
	for _, sc := range r.objs.StorageClasses {
		if sc.Provisioner != r.objs.CSIDrivers[0].Name {
			t.Errorf("StorageClass %s: provisioner %q, want the CSIDriver's %q", sc.Name, sc.Provisioner, r.objs.CSIDrivers[0].Name)
		}
		if sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
			t.Errorf("StorageClass %s: volumeBindingMode %v, want WaitForFirstConsumer", sc.Name, sc.VolumeBindingMode)
		}
		if sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			t.Errorf("StorageClass %s: allowVolumeExpansion must be true", sc.Name)
		}
		if sc.Annotations["storageclass.kubernetes.io/is-default-class"] == "true" {
			defaults++
		}
		keys := make([]string, 0, len(sc.Parameters))
		for k, v := range sc.Parameters {
			keys = append(keys, k)
			if ok, known := allowed[k]; known && !slices.Contains(ok, v) {
				t.Errorf("StorageClass %s: %s=%q, want one of %v", sc.Name, k, v, ok)
			}
		}
		slices.Sort(keys)
		if want := []string{"backing", "cacheMode", "csi.storage.k8s.io/fstype", "sequentialCutoff"}; !slices.Equal(keys, want) {
			t.Errorf("StorageClass %s: parameters %v, want %v", sc.Name, keys, want)
		}
		if v := sc.Parameters["sequentialCutoff"]; !quantityRE.MatchString(v) {
			t.Errorf("StorageClass %s: sequentialCutoff %q is not a size", sc.Name, v)
		}
	}
	if defaults > 1 {
		t.Errorf("%d StorageClasses are marked default", defaults)
	}
	if r.c.name == "defaults" {
		if len(r.objs.StorageClasses) != 1 || r.objs.StorageClasses[0].Parameters["cacheMode"] != "writethrough" {
			t.Errorf("by default exactly one StorageClass, writethrough; got %d", len(r.objs.StorageClasses))
		}
	}
}

func (r *rendered) checkNotes(t *testing.T) {
	if !strings.Contains(r.out.Notes, r.driverName(t)) || !strings.Contains(r.out.Notes, "modprobe nbd") && !r.boolean(t, "nbd.loadModule") {
		t.Errorf("NOTES.txt does not name the driver or tell how to load nbd:\n%s", r.out.Notes)
	}
	for _, sc := range r.objs.StorageClasses {
		if !strings.Contains(r.out.Notes, sc.Name) {
			t.Errorf("NOTES.txt does not name StorageClass %s", sc.Name)
		}
	}
}

// checkRBAC: the bindings bind the pod's ServiceAccount in the release namespace to
// roles that exist and grant what the provisioner and resizer need; nothing when
// rbac.create is false.
func (r *rendered) checkRBAC(t *testing.T) {
	sa := r.serviceAccountName(t)
	if r.boolean(t, "serviceAccount.create") {
		if len(r.objs.ServiceAccounts) != 1 || r.objs.ServiceAccounts[0].Name != sa {
			t.Errorf("want one ServiceAccount %s, got %d", sa, len(r.objs.ServiceAccounts))
		}
	} else if len(r.objs.ServiceAccounts) != 0 {
		t.Errorf("serviceAccount.create=false rendered %d ServiceAccounts", len(r.objs.ServiceAccounts))
	}
	if !r.boolean(t, "rbac.create") {
		if n := len(r.objs.ClusterRoles) + len(r.objs.ClusterRoleBindings) + len(r.objs.Roles) + len(r.objs.RoleBindings); n != 0 {
			t.Errorf("rbac.create=false rendered %d RBAC objects", n)
		}
		return
	}
	clusterRoles := map[string]*rbacv1.ClusterRole{}
	for _, cr := range r.objs.ClusterRoles {
		clusterRoles[cr.Name] = cr
	}
	roles := map[string]*rbacv1.Role{}
	for _, ro := range r.objs.Roles {
		roles[ro.Name] = ro
	}
	// granted collects, per component label, the rules bound to the ServiceAccount.
	granted := map[string][]rbacv1.PolicyRule{}
	checkSubjects := func(name string, subjects []rbacv1.Subject) {
		if len(subjects) != 1 || subjects[0].Kind != "ServiceAccount" || subjects[0].Name != sa || subjects[0].Namespace != r.c.namespace {
			t.Errorf("binding %s: subjects %+v, want ServiceAccount %s/%s", name, subjects, r.c.namespace, sa)
		}
	}
	for _, b := range r.objs.ClusterRoleBindings {
		checkSubjects(b.Name, b.Subjects)
		cr, ok := clusterRoles[b.RoleRef.Name]
		if b.RoleRef.Kind != "ClusterRole" || !ok {
			t.Errorf("ClusterRoleBinding %s: roleRef %+v is not a rendered ClusterRole", b.Name, b.RoleRef)
			continue
		}
		comp := cr.Labels["app.kubernetes.io/component"]
		granted[comp] = append(granted[comp], cr.Rules...)
	}
	for _, b := range r.objs.RoleBindings {
		checkSubjects(b.Name, b.Subjects)
		ro, ok := roles[b.RoleRef.Name]
		if b.RoleRef.Kind != "Role" || !ok {
			t.Errorf("RoleBinding %s: roleRef %+v is not a rendered Role", b.Name, b.RoleRef)
			continue
		}
		comp := ro.Labels["app.kubernetes.io/component"]
		granted[comp] = append(granted[comp], ro.Rules...)
	}
	need := map[string][]string{
		"provisioner": {
			"/persistentvolumes:create", "/persistentvolumes:delete", "/persistentvolumes:watch",
			"/persistentvolumeclaims:update", "/persistentvolumeclaims:watch",
			"storage.k8s.io/storageclasses:list", "/events:create",
			"storage.k8s.io/csistoragecapacities:create", "storage.k8s.io/csistoragecapacities:delete",
			"storage.k8s.io/csistoragecapacities:watch",
			"/pods:get", // ownerref lookup of the DaemonSet from the provisioner's Pod
		},
		"resizer": {
			"/persistentvolumes:patch", "/persistentvolumeclaims:watch", "/persistentvolumeclaims/status:patch",
			"/events:create", "coordination.k8s.io/leases:create", "coordination.k8s.io/leases:update",
		},
	}
	for comp, perms := range need {
		for _, p := range perms {
			gr, verb, _ := strings.Cut(p, ":")
			group, resource, _ := strings.Cut(gr, "/")
			if !allows(granted[comp], group, resource, verb) {
				t.Errorf("%s: not granted %s %q/%s", comp, verb, group, resource)
			}
		}
		for _, rule := range granted[comp] {
			if slices.Contains(rule.Verbs, "*") || slices.Contains(rule.Resources, "*") || slices.Contains(rule.APIGroups, "*") {
				t.Errorf("%s: wildcard rule %+v", comp, rule)
			}
			if slices.Contains(rule.Resources, "secrets") {
				t.Errorf("%s: access to secrets %+v", comp, rule)
			}
		}
	}
	if len(granted) != len(need) {
		t.Errorf("roles for components %v, want exactly %v", keysOf(granted), keysOf(need))
	}
}

func allows(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}

func (r *rendered) serviceAccountName(t *testing.T) string {
	if n := r.str(t, "serviceAccount.name"); n != "" {
		return n
	}
	return r.fullname(t) + "-node"
}

// fullname mirrors the chart's csi-cache.fullname helper.
func (r *rendered) fullname(t *testing.T) string {
	if f := r.str(t, "fullnameOverride"); f != "" {
		return f
	}
	if strings.Contains(r.c.release, "csi-cache") {
		return r.c.release
	}
	return r.c.release + "-csi-cache"
}

func (r *rendered) checkMetrics(t *testing.T) {
	enabled := r.boolean(t, "metrics.enabled")
	smOn := enabled && r.boolean(t, "metrics.serviceMonitor.enabled")
	svcOn := enabled && (smOn || r.boolean(t, "metrics.service.enabled"))
	if got := len(r.objs.ServiceMonitors); got != map[bool]int{true: 1, false: 0}[smOn] {
		t.Fatalf("%d ServiceMonitors with metrics.enabled=%v serviceMonitor.enabled=%v", got, enabled, smOn)
	}
	if got := len(r.objs.Services); got != map[bool]int{true: 1, false: 0}[svcOn] {
		t.Fatalf("%d Services, want %v", got, svcOn)
	}
	if !svcOn {
		return
	}
	svc := r.objs.Services[0]
	pod := r.objs.DaemonSets[0].Spec.Template
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
		t.Errorf("Service %s selector %v does not select the node pods %v", svc.Name, svc.Spec.Selector, pod.Labels)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service %s: want a headless Service (one endpoint per node)", svc.Name)
	}
	plugin := container(t, pod.Spec.Containers, "csi-cache")
	port := r.str(t, "metrics.port")
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "metrics" || strconv.Itoa(int(svc.Spec.Ports[0].Port)) != port {
		t.Errorf("Service %s ports %+v, want metrics:%s", svc.Name, svc.Spec.Ports, port)
	}
	if p := portNamed(plugin, "metrics"); p == nil || strconv.Itoa(int(p.ContainerPort)) != port {
		t.Errorf("plugin container has no port metrics=%s", port)
	}
	if !smOn {
		return
	}
	sm := r.objs.ServiceMonitors[0]
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("ServiceMonitor selector %v does not select Service %s %v", sm.Spec.Selector, svc.Name, svc.Labels)
	}
	if !slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{r.c.namespace}) {
		t.Errorf("ServiceMonitor namespaceSelector %v, want [%s]", sm.Spec.NamespaceSelector.MatchNames, r.c.namespace)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v, want port metrics path /metrics", sm.Spec.Endpoints)
	}
	for k, v := range r.val(t, "metrics.serviceMonitor.labels").(map[string]any) {
		if sm.Labels[k] != v {
			t.Errorf("ServiceMonitor label %s=%q, want %q", k, sm.Labels[k], v)
		}
	}
}

func keysOf[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func metaOf(o any) (metav1.Object, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", o)
	}
	return m, nil
}
