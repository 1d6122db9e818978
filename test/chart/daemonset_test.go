package chart

import (
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

var (
	// quantityRE matches the sizes the chart passes on (4Mi, 10Gi, 0).
	quantityRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$`)
	// tagRE is a Docker tag.
	tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// sidecars are the containers that talk to the plugin over its socket.
var sidecars = []string{"node-driver-registrar", "csi-provisioner", "csi-resizer", "liveness-probe"}

func (r *rendered) checkDaemonSet(t *testing.T) {
	if len(r.objs.DaemonSets) != 1 {
		t.Fatalf("%d DaemonSets, want 1", len(r.objs.DaemonSets))
	}
	ds := r.objs.DaemonSets[0]
	pod := ds.Spec.Template.Spec
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not match the pod labels %v", ds.Spec.Selector, ds.Spec.Template.Labels)
	}
	checkLabels(t, "pod template", ds.Spec.Template.Labels)
	if pod.ServiceAccountName != r.serviceAccountName(t) {
		t.Errorf("serviceAccountName %q, want %q", pod.ServiceAccountName, r.serviceAccountName(t))
	}
	if pod.HostNetwork != r.boolean(t, "node.hostNetwork") {
		t.Errorf("hostNetwork %v, want node.hostNetwork", pod.HostNetwork)
	}
	if pod.HostNetwork && pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork with dnsPolicy %q, want ClusterFirstWithHostNet", pod.DNSPolicy)
	}
	r.checkPodStructure(t, pod)
	r.checkImages(t, pod)

	kubeletDir := r.kubeletDir(t)
	socketDir := path.Join(kubeletDir, "plugins", r.driverName(t))
	vol := volumesByName(pod)

	// The plugin: privileged, the kubelet directory with Bidirectional
	// propagation, /dev, and the socket directory.
	plugin := container(t, pod.Containers, "csi-cache")
	if sc := plugin.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("the plugin container must be privileged (NBD attach, mkfs, mount)")
	}
	if len(plugin.Args) == 0 || plugin.Args[0] != "serve" {
		t.Errorf("plugin args %v, want `serve ...`", plugin.Args)
	}
	args := flagValues(plugin.Args)
	if got := args["--endpoint"]; got != "unix://"+socketInPod {
		t.Errorf("plugin --endpoint=%s, want unix://%s", got, socketInPod)
	}
	if got := args["--driver-name"]; got != r.objs.CSIDrivers[0].Name {
		t.Errorf("plugin --driver-name=%s, want the CSIDriver's %s", got, r.objs.CSIDrivers[0].Name)
	}
	if args["--node-id"] != "$(NODE_ID)" || envFieldRef(plugin, "NODE_ID") != "spec.nodeName" {
		t.Errorf("plugin node id: --node-id=%s, NODE_ID from %q; want the node name", args["--node-id"], envFieldRef(plugin, "NODE_ID"))
	}
	m := mountAt(t, plugin, kubeletDir)
	if m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
		t.Errorf("plugin mounts %s with propagation %v, want Bidirectional", kubeletDir, m.MountPropagation)
	}
	expectHostPath(t, vol, m.Name, kubeletDir)
	expectHostPath(t, vol, mountAt(t, plugin, "/dev").Name, "/dev")
	expectHostPath(t, vol, mountAt(t, plugin, "/csi").Name, socketDir)
	r.checkPluginPaths(t, plugin, args, vol)

	// The sidecars: the same socket, through the same volume.
	socketVol := mountAt(t, plugin, "/csi").Name
	for _, name := range sidecars {
		c := container(t, pod.Containers, name)
		if got := flagValues(c.Args)["--csi-address"]; got != socketInPod {
			t.Errorf("%s: --csi-address=%s, want %s", name, got, socketInPod)
		}
		if m := mountAt(t, c, "/csi"); m.Name != socketVol {
			t.Errorf("%s mounts volume %s at /csi, the plugin %s", name, m.Name, socketVol)
		}
		if sc := c.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged {
			t.Errorf("sidecar %s is privileged", name)
		}
	}

	// The registrar: the plugin registration directory, and the socket's path on
	// the host for the kubelet.
	reg := container(t, pod.Containers, "node-driver-registrar")
	expectHostPath(t, vol, mountAt(t, reg, "/registration").Name, path.Join(kubeletDir, "plugins_registry"))
	if got := flagValues(reg.Args)["--kubelet-registration-path"]; got != path.Join(socketDir, "csi.sock") {
		t.Errorf("registrar --kubelet-registration-path=%s, want %s", got, path.Join(socketDir, "csi.sock"))
	}

	// The provisioner: distributed provisioning with capacity tracking.
	prov := container(t, pod.Containers, "csi-provisioner")
	pa := flagValues(prov.Args)
	for flag, want := range map[string]string{
		"--node-deployment":         "",
		"--feature-gates":           "Topology=true",
		"--enable-capacity":         "",
		"--capacity-ownerref-level": "1",
	} {
		if got, ok := pa[flag]; !ok || got != want {
			t.Errorf("provisioner %s=%q (set %v), want %q", flag, got, ok, want)
		}
	}
	for env, field := range map[string]string{"NODE_NAME": "spec.nodeName", "NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"} {
		if got := envFieldRef(prov, env); got != field {
			t.Errorf("provisioner env %s from %q, want %s", env, got, field)
		}
	}
	if _, ok := flagValues(container(t, pod.Containers, "csi-resizer").Args)["--leader-election"]; !ok {
		t.Error("csi-resizer runs in every node pod: it needs --leader-election")
	}

	// Liveness: the plugin's probe goes to the livenessprobe sidecar's port.
	lp := container(t, pod.Containers, "liveness-probe")
	lpPort := strings.TrimPrefix(flagValues(lp.Args)["--http-endpoint"], ":")
	probe := plugin.LivenessProbe
	if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != "/healthz" {
		t.Fatalf("plugin livenessProbe %+v, want httpGet /healthz", probe)
	}
	target := probe.HTTPGet.Port.String()
	if p := portNamed(plugin, target); p != nil {
		target = strconv.Itoa(int(p.ContainerPort))
	}
	if target != lpPort || lpPort != r.str(t, "sidecars.livenessProbe.httpPort") {
		t.Errorf("plugin livenessProbe port %s, livenessprobe --http-endpoint=:%s, value %s: want all equal", target, lpPort, r.str(t, "sidecars.livenessProbe.httpPort"))
	}

	// nbd module loading.
	if r.boolean(t, "nbd.loadModule") {
		if len(pod.InitContainers) != 1 {
			t.Fatalf("%d init containers, want the modprobe one", len(pod.InitContainers))
		}
		ic := pod.InitContainers[0]
		if !slices.Equal(ic.Command, []string{"modprobe", "nbd", "nbds_max=" + r.str(t, "nbd.nbdsMax")}) {
			t.Errorf("init container command %v", ic.Command)
		}
		m := mountAt(t, &ic, "/lib/modules")
		if !m.ReadOnly {
			t.Error("/lib/modules must be mounted read-only")
		}
		expectHostPath(t, vol, m.Name, "/lib/modules")
	} else if len(pod.InitContainers) != 0 {
		t.Errorf("%d init containers with nbd.loadModule=false", len(pod.InitContainers))
	}
}

// checkPluginPaths: the cache device, backing and state directories the plugin is
// told about are inside host paths it mounts, and the metrics flag follows the
// values.
func (r *rendered) checkPluginPaths(t *testing.T, plugin *corev1.Container, args map[string]string, vol map[string]*corev1.Volume) {
	dataDir := strings.TrimSuffix(r.str(t, "dataDir"), "/")
	want := map[string]string{
		"--cache-device": r.str(t, "cache.device"),
		"--backing-dir":  r.str(t, "backing.dir"),
		"--state-dir":    dataDir + "/state",
		"--cache-size":   r.str(t, "cache.size"),
		"--max-volumes":  r.str(t, "maxVolumes"),
	}
	if want["--cache-device"] == "" {
		want["--cache-device"] = dataDir + "/cache.img"
	}
	if want["--backing-dir"] == "" {
		want["--backing-dir"] = dataDir + "/backing"
	}
	for flag, w := range want {
		if args[flag] != w {
			t.Errorf("plugin %s=%q, want %q", flag, args[flag], w)
		}
	}
	hostMounted := func(p string) bool {
		for _, m := range plugin.VolumeMounts {
			v := vol[m.Name]
			if v == nil || v.HostPath == nil || v.HostPath.Path != m.MountPath {
				continue
			}
			if p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
				return true
			}
		}
		return false
	}
	for _, flag := range []string{"--cache-device", "--backing-dir", "--state-dir"} {
		if !hostMounted(args[flag]) {
			t.Errorf("plugin %s=%s is not inside a host path mounted at the same path", flag, args[flag])
		}
	}
	wantMetrics := ""
	if r.boolean(t, "metrics.enabled") {
		wantMetrics = ":" + r.str(t, "metrics.port")
	}
	if got, ok := args["--metrics-address"]; !ok || got != wantMetrics {
		t.Errorf("plugin --metrics-address=%q, want %q", got, wantMetrics)
	}
}

// checkPodStructure: every mount names a volume, every volume is used, names and
// ports are unique and valid.
func (r *rendered) checkPodStructure(t *testing.T, pod corev1.PodSpec) {
	vol := volumesByName(pod)
	if len(vol) != len(pod.Volumes) {
		t.Error("duplicate volume names")
	}
	used := map[string]bool{}
	names := map[string]bool{}
	portNames := map[string]bool{}
	portNumbers := map[int32]string{}
	all := slices.Concat(pod.InitContainers, pod.Containers)
	for i := range all {
		c := &all[i]
		if names[c.Name] {
			t.Errorf("duplicate container name %s", c.Name)
		}
		names[c.Name] = true
		for _, e := range validation.IsDNS1123Label(c.Name) {
			t.Errorf("container name %q: %s", c.Name, e)
		}
		paths := map[string]bool{}
		for _, m := range c.VolumeMounts {
			if vol[m.Name] == nil {
				t.Errorf("%s mounts undeclared volume %s", c.Name, m.Name)
			}
			if paths[m.MountPath] {
				t.Errorf("%s mounts two volumes at %s", c.Name, m.MountPath)
			}
			paths[m.MountPath] = true
			used[m.Name] = true
			if !path.IsAbs(m.MountPath) {
				t.Errorf("%s: mount path %q is not absolute", c.Name, m.MountPath)
			}
			if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional &&
				(c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged) {
				t.Errorf("%s: Bidirectional propagation needs a privileged container", c.Name)
			}
		}
		for _, p := range c.Ports {
			for _, e := range validation.IsValidPortName(p.Name) {
				t.Errorf("%s: port name %q: %s", c.Name, p.Name, e)
			}
			if portNames[p.Name] {
				t.Errorf("duplicate port name %s", p.Name)
			}
			portNames[p.Name] = true
			if other, dup := portNumbers[p.ContainerPort]; dup {
				t.Errorf("port %d declared by %s and %s", p.ContainerPort, other, c.Name)
			}
			portNumbers[p.ContainerPort] = c.Name
		}
		for _, a := range c.Args {
			if strings.TrimSpace(a) != a || a == "" {
				t.Errorf("%s: argument %q has stray whitespace", c.Name, a)
			}
		}
	}
	// Every HTTP endpoint a container opens must be a declared port of the pod
	// (they share the network namespace, and the node's with hostNetwork).
	for i := range all {
		if ep, ok := flagValues(all[i].Args)["--http-endpoint"]; ok {
			n, err := strconv.Atoi(strings.TrimPrefix(ep, ":"))
			if err != nil {
				t.Errorf("%s: --http-endpoint=%q", all[i].Name, ep)
				continue
			}
			if _, ok := portNumbers[int32(n)]; !ok {
				t.Errorf("%s listens on %d, which no container declares", all[i].Name, n)
			}
		}
	}
	for name := range vol {
		if !used[name] {
			t.Errorf("volume %s is not mounted", name)
		}
	}
}

// checkImages: every image is repository:tag with a real tag (or a digest).
func (r *rendered) checkImages(t *testing.T, pod corev1.PodSpec) {
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		if !hasTag(c.Image) {
			t.Errorf("%s: image %q has no tag", c.Name, c.Image)
		}
		if strings.HasSuffix(c.Image, ":latest") {
			t.Errorf("%s: image %q uses latest", c.Name, c.Image)
		}
		if c.ImagePullPolicy == "" {
			t.Errorf("%s: no imagePullPolicy", c.Name)
		}
	}
	for _, name := range sidecars {
		img := container(t, pod.Containers, name).Image
		if r.c.name == "defaults" && !strings.HasPrefix(img, "registry.k8s.io/sig-storage/") {
			t.Errorf("%s: default image %s is not from registry.k8s.io/sig-storage", name, img)
		}
	}
}

// hasTag reports whether an image reference names a tag or a digest.
func hasTag(image string) bool {
	if _, digest, ok := strings.Cut(image, "@"); ok {
		return strings.HasPrefix(digest, "sha256:") && len(digest) == len("sha256:")+64
	}
	last := image[strings.LastIndex(image, "/")+1:]
	_, tag, ok := strings.Cut(last, ":")
	return ok && tagRE.MatchString(tag)
}

func TestHasTag(t *testing.T) {
	for img, want := range map[string]bool{
		"registry.k8s.io/sig-storage/livenessprobe:v2.19.0": true,
		"localhost:5000/csi-cache:dev":                      true,
		"localhost:5000/csi-cache":                          false,
		"ghcr.io/csi-cache/csi-cache:":                      false,
		"ghcr.io/csi-cache/csi-cache":                       false,
		"busybox@sha256:" + strings.Repeat("a", 64):         true,
		"busybox@sha256:abc":                                false,
	} {
		if hasTag(img) != want {
			t.Errorf("hasTag(%q) = %v, want %v", img, !want, want)
		}
	}
}

// flagValues parses "--name=value" and "--name" arguments ("-v=2" too); the
// value of a bare flag is "".
func flagValues(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		k, v, _ := strings.Cut(a, "=")
		m[k] = v
	}
	return m
}

func container(t *testing.T, cs []corev1.Container, name string) *corev1.Container {
	t.Helper()
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

func mountAt(t *testing.T, c *corev1.Container, mountPath string) corev1.VolumeMount {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.MountPath == mountPath {
			return m
		}
	}
	t.Fatalf("container %s mounts nothing at %s", c.Name, mountPath)
	return corev1.VolumeMount{}
}

func volumesByName(pod corev1.PodSpec) map[string]*corev1.Volume {
	m := map[string]*corev1.Volume{}
	for i := range pod.Volumes {
		m[pod.Volumes[i].Name] = &pod.Volumes[i]
	}
	return m
}

func expectHostPath(t *testing.T, vol map[string]*corev1.Volume, name, hostPath string) {
	t.Helper()
	v := vol[name]
	if v == nil || v.HostPath == nil || v.HostPath.Path != hostPath {
		t.Errorf("volume %s: %+v, want hostPath %s", name, v, hostPath)
	}
}

func envFieldRef(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
	}
	return ""
}

func portNamed(c *corev1.Container, name string) *corev1.ContainerPort {
	for i := range c.Ports {
		if c.Ports[i].Name == name {
			return &c.Ports[i]
		}
	}
	return nil
}
