package driver_test

import (
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/driver/drivertest"
	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// TestHealthFromEngine runs the health RPCs over a real cache set whose cache
// device and backing stores inject errors: a backing store that fails reads
// makes its volume DEGRADED (the engine counts the errors; the volume still
// serves what it can), and a lost cache device makes every volume
// INACCESSIBLE, the node's storage STORAGE_UNREACHABLE and Probe fail.
func TestHealthFromEngine(t *testing.T) {
	dir := t.TempDir()
	backingDir := filepath.Join(dir, "backing")
	if err := os.MkdirAll(backingDir, 0o700); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	backs := map[string]*device.Fault{}
	cfg := engine.Config{
		BucketSize: 64 << 10, JournalSize: 256 << 10, MaxVolumes: 16,
		BackingDir: backingDir,
		OpenBacking: func(_ engine.BackingKind, path string, size int64, _ bool) (device.Device, error) {
			mu.Lock()
			defer mu.Unlock()
			f := device.NewFault(device.NewMem(size), nil)
			backs[path] = f
			return f, nil
		},
		Logf: func(string, ...any) {},
	}
	mem := device.NewMem(64 << 20)
	if err := engine.Format(mem, cfg); err != nil {
		t.Fatal(err)
	}
	cache := device.NewFault(mem, nil)
	cs, err := engine.Open(cache, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	h := drivertest.Start(t, drivertest.Options{Store: driver.NewEngineStore(cs, backingDir)})
	mustCreate(t, h, "pvc-ok", 4*mib, nil)
	mustCreate(t, h, "pvc-flaky", 4*mib, nil)

	statuses := func(id string) (ctrl, node []csi.VolumeHealthErrorType) {
		t.Helper()
		cr, err := h.Controller.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
		if err != nil {
			t.Fatalf("ControllerGetVolumeHealth %s: %v", id, err)
		}
		for _, e := range cr.GetVolumeHealth().GetHealthStatuses() {
			ctrl = append(ctrl, e.GetStatus())
		}
		nr, err := h.Node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
		if err != nil {
			t.Fatalf("NodeGetVolumeHealth %s: %v", id, err)
		}
		for _, e := range nr.GetVolumeHealth().GetHealthStatuses() {
			node = append(node, e.GetStatus())
		}
		return ctrl, node
	}
	listed := func() []string {
		t.Helper()
		resp, err := h.Controller.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range resp.GetEntries() {
			ids = append(ids, e.GetVolumeId())
		}
		sort.Strings(ids)
		return ids
	}
	wantStatus := func(what string, got []csi.VolumeHealthErrorType, want ...csi.VolumeHealthErrorType) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: health %v, want %v", what, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: health %v, want %v", what, got, want)
			}
		}
	}

	// Healthy.
	for _, id := range []string{"pvc-ok", "pvc-flaky"} {
		c, n := statuses(id)
		wantStatus(id+" controller", c)
		wantStatus(id+" node", n)
	}
	if ids := listed(); len(ids) != 0 {
		t.Fatalf("ControllerListVolumeHealth lists %v on a healthy node", ids)
	}

	// The backing store of pvc-flaky fails reads: a miss fails, the engine
	// counts the error, the volume is degraded.
	v, err := cs.Volume("pvc-flaky")
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	backs[v.Info().BackingPath].SetInjector(device.FailRange(device.OpRead, 0, 1<<20, nil))
	mu.Unlock()
	if err := v.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("a read of a failing backing store succeeded")
	}
	c, n := statuses("pvc-flaky")
	wantStatus("flaky backing, controller", c, csi.VolumeHealthErrorType_DEGRADED)
	wantStatus("flaky backing, node", n, csi.VolumeHealthErrorType_DEGRADED)
	c, _ = statuses("pvc-ok")
	wantStatus("the other volume", c)
	if ids := listed(); len(ids) != 1 || ids[0] != "pvc-flaky" {
		t.Fatalf("ControllerListVolumeHealth lists %v, want [pvc-flaky]", ids)
	}

	// The cache device is lost: every IO fails. A flush of a write fails,
	// which stops the cache set; every volume is then inaccessible.
	cache.SetInjector(device.FailRange(device.OpAny, 0, 1<<62, nil))
	ok, err := cs.Volume("pvc-ok")
	if err != nil {
		t.Fatal(err)
	}
	werr := ok.WriteAt(make([]byte, 4096), 0, false)
	if ferr := ok.Flush(); werr == nil && ferr == nil {
		t.Fatal("a write and flush on a lost cache device succeeded")
	}
	if cs.Err() == nil {
		t.Fatal("the cache set did not notice the lost cache device")
	}
	// pvc-ok: inaccessible, and degraded by the cache write error it saw.
	c, n = statuses("pvc-ok")
	wantStatus("lost cache, controller", c, csi.VolumeHealthErrorType_INACCESSIBLE, csi.VolumeHealthErrorType_DEGRADED)
	wantStatus("lost cache, node", n, csi.VolumeHealthErrorType_INACCESSIBLE, csi.VolumeHealthErrorType_DEGRADED)
	c, _ = statuses("pvc-flaky")
	wantStatus("lost cache, flaky volume", c, csi.VolumeHealthErrorType_INACCESSIBLE, csi.VolumeHealthErrorType_DEGRADED)
	if ids := listed(); len(ids) != 2 {
		t.Fatalf("ControllerListVolumeHealth lists %v, want both volumes", ids)
	}
	sh, err := h.Node.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil || len(sh.GetBackendHealth()) != 1 ||
		sh.GetBackendHealth()[0].GetStatus() != csi.StorageHealthErrorType_STORAGE_UNREACHABLE {
		t.Fatalf("NodeGetStorageHealth: %v, %v", sh, err)
	}
	_, err = h.Identity.Probe(ctx, &csi.ProbeRequest{})
	wantCode(t, err, codes.FailedPrecondition)
}
