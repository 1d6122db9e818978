package drivertest

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"
)

// SanityTarget is one driver configuration to run csi-sanity against.
type SanityTarget struct {
	// Name labels the target's specs (a ginkgo container).
	Name string
	// Access is sanity's volume access type: "mount" or "block".
	Access string
	// Start starts the driver and returns its endpoint.
	Start func(t *testing.T) string
	// VolumeSize and ExpandSize of the test volumes; defaults 64 MiB and
	// 128 MiB.
	VolumeSize, ExpandSize int64
	// Params are the CreateVolume parameters.
	Params map[string]string
}

// SkippedSpec is a spec csi-sanity skipped, and why.
type SkippedSpec struct {
	Target string // SanityTarget.Name
	Spec   string // the spec's text without the target
	Reason string // sanity's skip message
}

// RunSanity runs csi-sanity (github.com/kubernetes-csi/csi-test/v5
// pkg/sanity) in-process against every target, in one ginkgo suite (ginkgo
// runs one suite per process). Failures fail t; the skipped specs are
// returned for the caller to check.
func RunSanity(t *testing.T, targets []SanityTarget) []SkippedSpec {
	t.Helper()
	var contexts []*sanity.TestContext
	for _, tg := range targets {
		endpoint := tg.Start(t)
		cfg := sanity.NewTestConfig()
		base := t.TempDir()
		cfg.TargetPath = filepath.Join(base, "target")
		cfg.StagingPath = filepath.Join(base, "staging")
		cfg.Address = endpoint
		cfg.TestVolumeAccessType = tg.Access
		cfg.TestVolumeSize = 64 << 20
		if tg.VolumeSize > 0 {
			cfg.TestVolumeSize = tg.VolumeSize
		}
		cfg.TestVolumeExpandSize = 128 << 20
		if tg.ExpandSize > 0 {
			cfg.TestVolumeExpandSize = tg.ExpandSize
		}
		cfg.TestVolumeParameters = tg.Params
		cfgp := &cfg
		ginkgo.Describe(tg.Name, func() {
			contexts = append(contexts, sanity.GinkgoTest(cfgp))
		})
	}
	var report types.Report
	ginkgo.ReportAfterSuite("collect the report", func(r ginkgo.Report) { report = r })
	gomega.RegisterFailHandler(ginkgo.Fail)
	ginkgo.RunSpecs(t, "csi-cache sanity")
	for _, sc := range contexts {
		sc.Finalize()
	}
	var skipped []SkippedSpec
	for _, s := range report.SpecReports {
		if s.State != types.SpecStateSkipped || len(s.ContainerHierarchyTexts) == 0 {
			continue
		}
		skipped = append(skipped, SkippedSpec{
			Target: s.ContainerHierarchyTexts[0],
			Spec:   strings.Join(append(append([]string(nil), s.ContainerHierarchyTexts[1:]...), s.LeafNodeText), " "),
			Reason: s.Failure.Message,
		})
	}
	sort.Slice(skipped, func(i, j int) bool {
		if skipped[i].Target != skipped[j].Target {
			return skipped[i].Target < skipped[j].Target
		}
		return skipped[i].Spec < skipped[j].Spec
	})
	return skipped
}

// SanitySkipReasons are the reasons csi-sanity may skip a spec for: the
// optional services and capabilities csi-cache does not provide.
var SanitySkipReasons = []string{
	"ControllerPublishVolume not supported",             // node-local volumes are attached by NodeStage
	"ControllerUnpublishVolume not supported",           // idem
	"Controller Publish, UnpublishVolume not supported", // idem (the volume lifecycle specs)
	"ListSnapshots not supported",                       // no snapshots yet
	"GetSnapshot not supported",
	"DeleteSnapshot not supported",
	"CreateSnapshot not supported",
	"Snapshot not supported",
	"Volume Cloning not supported",
	"Modify volume not supported", // no VolumeAttributesClass support
	"Modify Volume not supported",
	"ControllerModifyVolume not supported",
	"GroupControllerService not supported", // no group snapshots
}

// CheckSkipped fails t for every skipped spec whose reason is not one of
// allowed (matched as a substring), and logs the skipped specs with their
// reasons.
func CheckSkipped(t *testing.T, skipped []SkippedSpec, allowed []string) {
	t.Helper()
	for _, s := range skipped {
		ok := false
		for _, a := range allowed {
			if strings.Contains(s.Reason, a) {
				ok = true
				break
			}
		}
		if ok {
			t.Logf("skipped [%s] %s: %s", s.Target, s.Spec, s.Reason)
		} else {
			t.Errorf("unexpectedly skipped [%s] %s: %s", s.Target, s.Spec, s.Reason)
		}
	}
	if path := os.Getenv("CSI_CACHE_SANITY_SKIPPED"); path != "" {
		var b strings.Builder
		for _, s := range skipped {
			b.WriteString(s.Target + "\t" + s.Spec + "\t" + s.Reason + "\n")
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}
