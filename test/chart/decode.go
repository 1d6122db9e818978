package chart

import (
	"bytes"
	"encoding/json"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// allowedAPIVersions are the group versions the chart may use: the current stable
// ones. client-go's scheme knows older versions too; rendering one of them is a
// mistake.
var allowedAPIVersions = map[string]bool{
	"v1":                           true,
	"apps/v1":                      true,
	"rbac.authorization.k8s.io/v1": true,
	"storage.k8s.io/v1":            true,
	"monitoring.coreos.com/v1":     true,
}

// strictDecoder decodes YAML or JSON into client-go's types and fails on unknown
// or duplicated fields.
var strictDecoder = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// Objects are the decoded objects of a rendered release, by kind.
type Objects struct {
	All                 []runtime.Object
	Namespaced          []metav1.Object
	ServiceAccounts     []*corev1.ServiceAccount
	Services            []*corev1.Service
	ClusterRoles        []*rbacv1.ClusterRole
	ClusterRoleBindings []*rbacv1.ClusterRoleBinding
	Roles               []*rbacv1.Role
	RoleBindings        []*rbacv1.RoleBinding
	CSIDrivers          []*storagev1.CSIDriver
	StorageClasses      []*storagev1.StorageClass
	DaemonSets          []*appsv1.DaemonSet
	ServiceMonitors     []*ServiceMonitor
	ConfigMaps          []*corev1.ConfigMap
}

// Decode decodes every manifest strictly. Kinds in client-go's scheme are decoded
// with the scheme's strict deserializer; a ServiceMonitor (prometheus-operator) into
// the ServiceMonitor struct with unknown fields disallowed; any other kind is an
// error.
func Decode(ms []Manifest) (*Objects, error) {
	objs := &Objects{}
	for _, m := range ms {
		if err := objs.add(m); err != nil {
			return nil, fmt.Errorf("chart: %s %s/%s (%s): %w", m.Source, m.Kind, m.Name, firstLine(m.Content), err)
		}
	}
	return objs, nil
}

func (objs *Objects) add(m Manifest) error {
	var head metav1.TypeMeta
	if err := yaml.Unmarshal([]byte(m.Content), &head); err != nil {
		return err
	}
	if !allowedAPIVersions[head.APIVersion] {
		return fmt.Errorf("apiVersion %q is not one the chart may use", head.APIVersion)
	}
	if head.APIVersion == "monitoring.coreos.com/v1" && head.Kind == "ServiceMonitor" {
		sm := &ServiceMonitor{}
		if err := decodeStrictJSON([]byte(m.Content), sm); err != nil {
			return err
		}
		objs.ServiceMonitors = append(objs.ServiceMonitors, sm)
		objs.Namespaced = append(objs.Namespaced, &sm.ObjectMeta)
		return nil
	}
	obj, gvk, err := strictDecoder.Decode([]byte(m.Content), nil, nil)
	if err != nil {
		return err
	}
	if gvk.GroupVersion().String() != head.APIVersion || gvk.Kind != head.Kind {
		return fmt.Errorf("decoded as %s, head says %s %s", gvk, head.APIVersion, head.Kind)
	}
	objs.All = append(objs.All, obj)
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		objs.ServiceAccounts = append(objs.ServiceAccounts, o)
		objs.Namespaced = append(objs.Namespaced, o)
	case *corev1.Service:
		objs.Services = append(objs.Services, o)
		objs.Namespaced = append(objs.Namespaced, o)
	case *corev1.ConfigMap:
		objs.ConfigMaps = append(objs.ConfigMaps, o)
		objs.Namespaced = append(objs.Namespaced, o)
	case *rbacv1.ClusterRole:
		objs.ClusterRoles = append(objs.ClusterRoles, o)
	case *rbacv1.ClusterRoleBinding:
		objs.ClusterRoleBindings = append(objs.ClusterRoleBindings, o)
	case *rbacv1.Role:
		objs.Roles = append(objs.Roles, o)
		objs.Namespaced = append(objs.Namespaced, o)
	case *rbacv1.RoleBinding:
		objs.RoleBindings = append(objs.RoleBindings, o)
		objs.Namespaced = append(objs.Namespaced, o)
	case *storagev1.CSIDriver:
		objs.CSIDrivers = append(objs.CSIDrivers, o)
	case *storagev1.StorageClass:
		objs.StorageClasses = append(objs.StorageClasses, o)
	case *appsv1.DaemonSet:
		objs.DaemonSets = append(objs.DaemonSets, o)
		objs.Namespaced = append(objs.Namespaced, o)
	default:
		return fmt.Errorf("kind %T is not expected in this chart", obj)
	}
	return nil
}

// decodeStrictJSON converts YAML to JSON and decodes it into v, failing on fields
// v does not have.
func decodeStrictJSON(y []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(y)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the object")
	}
	return nil
}

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}

// ServiceMonitor is the part of prometheus-operator's monitoring.coreos.com/v1
// ServiceMonitor the chart uses. Decoding disallows unknown fields, so a field
// the chart renders must be added here on purpose (with the name and type the
// CRD gives it).
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ServiceMonitorSpec `json:"spec"`
}

// ServiceMonitorSpec is the subset of the CRD's spec the chart renders.
type ServiceMonitorSpec struct {
	JobLabel          string               `json:"jobLabel,omitempty"`
	Selector          metav1.LabelSelector `json:"selector"`
	NamespaceSelector struct {
		Any        bool     `json:"any,omitempty"`
		MatchNames []string `json:"matchNames,omitempty"`
	} `json:"namespaceSelector"`
	Endpoints []ServiceMonitorEndpoint `json:"endpoints"`
}

// ServiceMonitorEndpoint is one scrape endpoint.
type ServiceMonitorEndpoint struct {
	Port          string `json:"port,omitempty"`
	Path          string `json:"path,omitempty"`
	Scheme        string `json:"scheme,omitempty"`
	Interval      string `json:"interval,omitempty"`
	ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
	Relabelings   []struct {
		SourceLabels []string `json:"sourceLabels,omitempty"`
		Separator    string   `json:"separator,omitempty"`
		TargetLabel  string   `json:"targetLabel,omitempty"`
		Regex        string   `json:"regex,omitempty"`
		Replacement  string   `json:"replacement,omitempty"`
		Action       string   `json:"action,omitempty"`
	} `json:"relabelings,omitempty"`
}
