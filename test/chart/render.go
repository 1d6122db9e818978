// Package chart renders the csi-cache Helm chart (charts/csi-cache) with Helm's Go
// packages, the way `helm template` does, and decodes the result strictly with
// client-go's scheme. The tests in this package check the rendered objects; the
// chart-render command writes the plain manifests of deploy/ from the same code.
//
// It is a separate Go module (test/chart/go.mod) so that Helm's dependency tree
// stays out of the main module.
package chart

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
)

// DefaultKubeVersion is the Kubernetes version charts are rendered for unless
// Options.KubeVersion says otherwise: the version the pinned sidecars target.
const DefaultKubeVersion = "v1.34.0"

// Options select what to render.
type Options struct {
	// ChartDir is the chart's directory (charts/csi-cache).
	ChartDir string
	// ReleaseName and Namespace are the release's; both are required.
	ReleaseName string
	Namespace   string
	// ValuesFiles are merged in order, as `helm template -f a -f b` does.
	ValuesFiles []string
	// Values are merged over ValuesFiles (like --set), may be nil.
	Values map[string]any
	// KubeVersion is the cluster version the templates see; empty means
	// DefaultKubeVersion (Helm's own default depends on how helm was built).
	KubeVersion string
}

// Manifest is one rendered object, in Helm's install order.
type Manifest struct {
	// Source is the template it came from ("csi-cache/templates/daemonset.yaml").
	Source string
	// Kind and Name come from the YAML head.
	Kind, Name string
	// Content is the object's YAML.
	Content string
}

// Output is a rendered release.
type Output struct {
	Manifests []Manifest
	// Notes is the rendered NOTES.txt.
	Notes string
	// Values are the values the templates saw (the chart's defaults coalesced with
	// the user's).
	Values map[string]any
}

// Render renders the chart like `helm template` (templates rendered in strict mode:
// a reference to a missing value is an error, as with `helm lint --strict`), and
// validates the values against values.schema.json. Manifests come back in Helm's
// install order; the chart must not contain hooks.
func Render(o Options) (*Output, error) {
	if o.ReleaseName == "" || o.Namespace == "" {
		return nil, errors.New("chart: release name and namespace are required")
	}
	ch, err := loader.Load(o.ChartDir)
	if err != nil {
		return nil, fmt.Errorf("chart: load %s: %w", o.ChartDir, err)
	}
	user := map[string]any{}
	for _, f := range o.ValuesFiles {
		v, err := chartutil.ReadValuesFile(f)
		if err != nil {
			return nil, fmt.Errorf("chart: %w", err)
		}
		user = mergeMaps(user, v.AsMap())
	}
	if o.Values != nil {
		user = mergeMaps(user, o.Values)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	kubeVersion := o.KubeVersion
	if kubeVersion == "" {
		kubeVersion = DefaultKubeVersion
	}
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return nil, fmt.Errorf("chart: %w", err)
	}
	caps.KubeVersion = *kv
	if ch.Metadata.KubeVersion != "" && !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, caps.KubeVersion.String()) {
		return nil, fmt.Errorf("chart: requires kubeVersion %s, rendering for %s", ch.Metadata.KubeVersion, caps.KubeVersion.String())
	}
	vals, err := chartutil.ToRenderValues(ch, user, chartutil.ReleaseOptions{
		Name:      o.ReleaseName,
		Namespace: o.Namespace,
		Revision:  1,
		IsInstall: true,
	}, caps)
	if err != nil {
		return nil, fmt.Errorf("chart: %w", err)
	}
	files, err := engine.Engine{Strict: true}.Render(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("chart: render: %w", err)
	}
	out := &Output{}
	if v, ok := vals["Values"].(chartutil.Values); ok {
		out.Values = v.AsMap()
	}
	for name, content := range files {
		if path.Base(name) == "NOTES.txt" {
			if name == path.Join(ch.Name(), "templates", "NOTES.txt") {
				out.Notes = content
			}
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return nil, fmt.Errorf("chart: split manifests: %w", err)
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("chart: %d hooks rendered (%s); the chart has none by design", len(hooks), hooks[0].Path)
	}
	for _, m := range manifests {
		if m.Head == nil || m.Head.Kind == "" || m.Head.Metadata == nil {
			return nil, fmt.Errorf("chart: %s: a document without kind or metadata", m.Name)
		}
		out.Manifests = append(out.Manifests, Manifest{
			Source:  m.Name,
			Kind:    m.Head.Kind,
			Name:    m.Head.Metadata.Name,
			Content: m.Content,
		})
	}
	return out, nil
}

// YAML returns the manifests as one multi-document stream, as `helm template`
// prints it (each document starts with "---" and a "# Source:" comment).
func (o *Output) YAML() []byte {
	var b bytes.Buffer
	for _, m := range o.Manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Source, strings.TrimRight(m.Content, "\n"))
	}
	return b.Bytes()
}

// mergeMaps merges b into a copy of a: maps merge recursively, anything else in b
// replaces what is in a (Helm's rule for -f and --set).
func mergeMaps(a, b map[string]any) map[string]any {
	out := make(map[string]any, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if bm, ok := v.(map[string]any); ok {
			if am, ok := out[k].(map[string]any); ok {
				out[k] = mergeMaps(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}
