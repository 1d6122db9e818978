package driver_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-cache/csi-cache/pkg/driver/drivertest"
)

var ctx = context.Background()

const (
	snw = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	mib = int64(1 << 20)
)

func mountCap(fs string, mode csi.VolumeCapability_AccessMode_Mode, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs, MountFlags: flags}},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	}
}

func capFor(block bool) *csi.VolumeCapability {
	if block {
		return blockCap(snw)
	}
	return mountCap("", snw)
}

// wantCode fails t unless err has code want.
func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got %v (%v), want %v", got, err, want)
	}
}

func mustCreate(t *testing.T, h *drivertest.Harness, name string, size int64, params map[string]string, caps ...*csi.VolumeCapability) *csi.Volume {
	t.Helper()
	if len(caps) == 0 {
		caps = []*csi.VolumeCapability{mountCap("", snw)}
	}
	resp, err := h.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: caps, Parameters: params,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size},
	})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

// paths returns a staging and a target path in the harness's directory.
func paths(h *drivertest.Harness, id string) (staging, target string) {
	return filepath.Join(h.Dir, "staging", id), filepath.Join(h.Dir, "pods", id, "mount")
}

func mustStage(t *testing.T, h *drivertest.Harness, id, staging string, vc *csi.VolumeCapability) {
	t.Helper()
	if _, err := h.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc,
	}); err != nil {
		t.Fatalf("NodeStageVolume %s: %v", id, err)
	}
}

func mustPublish(t *testing.T, h *drivertest.Harness, id, staging, target string, vc *csi.VolumeCapability, ro bool) {
	t.Helper()
	if _, err := h.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, Readonly: ro,
	}); err != nil {
		t.Fatalf("NodePublishVolume %s: %v", id, err)
	}
}

func mustUnpublish(t *testing.T, h *drivertest.Harness, id, target string) {
	t.Helper()
	if _, err := h.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume %s: %v", id, err)
	}
}

func mustUnstage(t *testing.T, h *drivertest.Harness, id, staging string) {
	t.Helper()
	if _, err := h.Node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstageVolume %s: %v", id, err)
	}
}

// deviceOf returns the fake kernel device serving export id.
func deviceOf(t *testing.T, h *drivertest.Harness, id string) drivertest.DeviceInfo {
	t.Helper()
	for _, d := range h.Opts.Kernel.Devices() {
		if d.Export == id {
			return d
		}
	}
	t.Fatalf("no device serves volume %s (devices %+v)", id, h.Opts.Kernel.Devices())
	return drivertest.DeviceInfo{}
}
