package driver_test

import (
	"testing"

	"github.com/csi-cache/csi-cache/pkg/driver/drivertest"
)

// TestSanity runs csi-sanity in-process against the driver over the
// in-memory cache set and the fake kernel and mounter, for mount and for
// block access. Every spec must pass; the skipped ones (optional
// capabilities csi-cache does not offer) are logged with their reasons.
func TestSanity(t *testing.T) {
	start := func(t *testing.T) string { return drivertest.Start(t, drivertest.Options{}).Endpoint }
	skipped := drivertest.RunSanity(t, []drivertest.SanityTarget{
		{Name: "memstore/mount", Access: "mount", Start: start},
		{Name: "memstore/block", Access: "block", Start: start},
		{Name: "memstore/mount/cache-only", Access: "mount", Start: start,
			Params: map[string]string{"backing": "none", "sequentialCutoff": "0"}},
	})
	drivertest.CheckSkipped(t, skipped, drivertest.SanitySkipReasons)
}
