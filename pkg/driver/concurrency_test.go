package driver_test

import (
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-cache/csi-cache/pkg/driver/drivertest"
)

// concurrently runs f from n goroutines released together and returns the
// codes they got.
func concurrently(n int, f func(i int) error) map[codes.Code]int {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		start = make(chan struct{})
		got   = map[codes.Code]int{}
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := f(i)
			mu.Lock()
			got[status.Code(err)]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return got
}

// onlyCodes fails t if got has codes other than allowed, or no OK.
func onlyCodes(t *testing.T, what string, got map[codes.Code]int, allowed ...codes.Code) {
	t.Helper()
	for c, n := range got {
		ok := false
		for _, a := range allowed {
			ok = ok || c == a
		}
		if !ok {
			t.Errorf("%s: %d calls got %v", what, n, c)
		}
	}
	if got[codes.OK] == 0 {
		t.Errorf("%s: no call succeeded: %v", what, got)
	}
	t.Logf("%s: %v", what, got)
}

// TestConcurrentCallsOnOneVolume races the calls of a volume's life against
// copies of themselves: each call either does the work, finds it done, or is
// turned away with Aborted while another is in progress — and the end state
// is exactly one volume, one device, one record.
func TestConcurrentCallsOnOneVolume(t *testing.T) {
	const n = 16
	h := drivertest.Start(t, drivertest.Options{})
	staging, target := paths(h, "pvc-race")

	got := concurrently(n, func(int) error {
		_, err := h.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-race",
			VolumeCapabilities: []*csi.VolumeCapability{capFor(false)}, CapacityRange: &csi.CapacityRange{RequiredBytes: 8 * mib}})
		return err
	})
	onlyCodes(t, "CreateVolume", got, codes.OK, codes.Aborted)
	if n := len(h.Opts.Store.Volumes()); n != 1 {
		t.Fatalf("%d volumes", n)
	}

	got = concurrently(n, func(int) error {
		_, err := h.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "pvc-race", StagingTargetPath: staging, VolumeCapability: capFor(false)})
		return err
	})
	onlyCodes(t, "NodeStageVolume", got, codes.OK, codes.Aborted)
	mustStage(t, h, "pvc-race", staging, capFor(false)) // whoever was turned away retries
	if devs := h.Opts.Kernel.Devices(); len(devs) != 1 {
		t.Fatalf("devices after concurrent stages: %+v", devs)
	}

	got = concurrently(n, func(int) error {
		_, err := h.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "pvc-race", StagingTargetPath: staging,
			TargetPath: target, VolumeCapability: capFor(false)})
		return err
	})
	onlyCodes(t, "NodePublishVolume", got, codes.OK, codes.Aborted)

	// Delete races with expansion and unpublish: delete must never remove a
	// staged volume.
	got = concurrently(n, func(i int) error {
		var err error
		switch i % 3 {
		case 0:
			_, err = h.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "pvc-race"})
			if status.Code(err) == codes.FailedPrecondition {
				err = nil // refused because it is staged: what we want
			}
		case 1:
			_, err = h.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-race",
				CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mib}})
		case 2:
			_, err = h.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "pvc-race", VolumePath: target})
		}
		return err
	})
	onlyCodes(t, "DeleteVolume/ControllerExpandVolume/NodeGetVolumeStats", got, codes.OK, codes.Aborted)
	if _, err := h.Opts.Store.Volume("pvc-race"); err != nil {
		t.Fatalf("staged volume deleted: %v", err)
	}

	got = concurrently(n, func(int) error {
		_, err := h.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "pvc-race", TargetPath: target})
		return err
	})
	onlyCodes(t, "NodeUnpublishVolume", got, codes.OK, codes.Aborted)
	mustUnpublish(t, h, "pvc-race", target)

	got = concurrently(n, func(int) error {
		_, err := h.Node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "pvc-race", StagingTargetPath: staging})
		return err
	})
	onlyCodes(t, "NodeUnstageVolume", got, codes.OK, codes.Aborted)
	mustUnstage(t, h, "pvc-race", staging)
	if devs := h.Opts.Kernel.Devices(); len(devs) != 0 {
		t.Fatalf("devices after unstage: %+v", devs)
	}
	if ents, _ := os.ReadDir(filepath.Join(h.Opts.StateDir, "volumes")); len(ents) != 0 {
		t.Fatalf("records after unstage: %v", ents)
	}

	got = concurrently(n, func(int) error {
		_, err := h.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "pvc-race"})
		return err
	})
	onlyCodes(t, "DeleteVolume", got, codes.OK, codes.Aborted)
	if n := len(h.Opts.Store.Volumes()); n != 0 {
		t.Fatalf("%d volumes after delete", n)
	}
}

// TestConcurrentStagesOfManyVolumes stages and unstages many volumes at once
// under a volume limit: no more than the limit are ever staged, and each
// volume gets its own device.
func TestConcurrentStagesOfManyVolumes(t *testing.T) {
	const n, limit = 12, 5
	h := drivertest.Start(t, drivertest.Options{MaxVolumes: limit})
	for i := range n {
		mustCreate(t, h, volName(i), 4*mib, nil)
	}
	got := concurrently(n, func(i int) error {
		staging, _ := paths(h, volName(i))
		_, err := h.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volName(i), StagingTargetPath: staging, VolumeCapability: capFor(i%2 == 0)})
		return err
	})
	if got[codes.OK] != limit || got[codes.ResourceExhausted] != n-limit {
		t.Fatalf("stages: %v, want %d OK and %d ResourceExhausted", got, limit, n-limit)
	}
	devs := h.Opts.Kernel.Devices()
	seen := map[string]bool{}
	for _, d := range devs {
		if seen[d.Export] {
			t.Fatalf("two devices for %s", d.Export)
		}
		seen[d.Export] = true
	}
	if len(devs) != limit {
		t.Fatalf("%d devices", len(devs))
	}
	got = concurrently(n, func(i int) error {
		staging, _ := paths(h, volName(i))
		_, err := h.Node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volName(i), StagingTargetPath: staging})
		return err
	})
	if got[codes.OK] != n {
		t.Fatalf("unstages: %v", got)
	}
	if len(h.Opts.Kernel.Devices()) != 0 {
		t.Fatalf("devices left: %v", h.Opts.Kernel.Devices())
	}
}

func volName(i int) string { return "pvc-" + string(rune('a'+i)) }
