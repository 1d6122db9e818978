package driver_test

import (
	"testing"

	"github.com/csi-cache/csi-cache/pkg/driver/drivertest"
)

// sanitySkipReasons are the reasons csi-sanity may skip a spec for: the
// optional services and capabilities csi-cache does not provide.
var sanitySkipReasons = []string{
	"ControllerPublishVolume not supported",            // node-local volumes are attached by NodeStage
	"ControllerUnpublishVolume not supported",          // idem
	"Controller Publish, UnpublishVolume not supported", // idem (volume lifecycle specs)
	"ListSnapshots not supported",                      // no snapshots yet
	"GetSnapshot not supported",
	"DeleteSnapshot not supported",
	"CreateSnapshot not supported",
	"Snapshot not supported",
	"Volume Cloning not supported",
	"Modify volume not supported", // no VolumeAttributesClass support
	"Modify Volume not supported",
	"ControllerModifyVolume not supported",
	"GroupController",          // no group snapshots
	"SnapshotMetadata",         // no changed-block tracking
	"testnodevolumeattachlimit", // only meaningful with ControllerPublish
}

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
			Params: map[string]string{"backing": "none", "cacheMode": "writeback", "sequentialCutoff": "0"}},
	})
	drivertest.CheckSkipped(t, skipped, sanitySkipReasons)
}
