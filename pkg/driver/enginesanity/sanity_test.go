package enginesanity

import (
	"testing"

	"github.com/csi-cache/csi-cache/pkg/driver/drivertest"
)

// TestSanityEngine is TestSanity of pkg/driver over a real cache set on a
// sparse file, with the fake kernel and mounter. It is skipped while the
// engine's volume API is a stub.
func TestSanityEngine(t *testing.T) {
	drivertest.SkipUnlessEngineVolumes(t)
	start := func(t *testing.T) string {
		e := drivertest.OpenEngine(t, t.TempDir(), 1<<30)
		return drivertest.Start(t, drivertest.Options{Store: e.Store}).Endpoint
	}
	skipped := drivertest.RunSanity(t, []drivertest.SanityTarget{
		{Name: "engine/mount", Access: "mount", Start: start},
		{Name: "engine/block", Access: "block", Start: start},
		{Name: "engine/mount/cache-only", Access: "mount", Start: start,
			Params: map[string]string{"backing": "none", "sequentialCutoff": "0"}},
	})
	drivertest.CheckSkipped(t, skipped, drivertest.SanitySkipReasons)
}
