package driver_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/driver/drivertest"
	"github.com/csi-cache/csi-cache/pkg/engine"
)

func TestNodeGetInfo(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{NodeID: "worker-7", MaxVolumes: 12})
	ni, err := h.Node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "worker-7" || ni.GetMaxVolumesPerNode() != 12 ||
		ni.GetAccessibleTopology().GetSegments()[driver.TopologyKey] != "worker-7" {
		t.Fatalf("NodeGetInfo: %v, %v", ni, err)
	}
	caps, err := h.Node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil || len(caps.GetCapabilities()) != 6 {
		t.Fatalf("NodeGetCapabilities: %v, %v", caps, err)
	}
}

func TestNodeStageVolumeValidation(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{MaxVolumes: 2})
	mustCreate(t, h, "pvc-a", 8*mib, nil)
	mustCreate(t, h, "pvc-b", 8*mib, nil)
	mustCreate(t, h, "pvc-c", 8*mib, nil)
	mustCreate(t, h, "pvc-xfs", 8*mib, map[string]string{driver.ParamFSType: "xfs"})
	sa, _ := paths(h, "pvc-a")
	sb, _ := paths(h, "pvc-b")
	sc, _ := paths(h, "pvc-c")
	sx, _ := paths(h, "pvc-xfs")
	req := func(id, path string, vc *csi.VolumeCapability) *csi.NodeStageVolumeRequest {
		return &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: path, VolumeCapability: vc}
	}
	type tc struct {
		name string
		req  *csi.NodeStageVolumeRequest
		code codes.Code
	}
	tests := []tc{
		{"no id", req("", sa, capFor(false)), codes.InvalidArgument},
		{"no staging path", req("pvc-a", "", capFor(false)), codes.InvalidArgument},
		{"relative staging path", req("pvc-a", "staging/a", capFor(false)), codes.InvalidArgument},
		{"nul in staging path", req("pvc-a", sa+"\x00x", capFor(false)), codes.InvalidArgument},
		{"no capability", req("pvc-a", sa, nil), codes.InvalidArgument},
		{"multi node", req("pvc-a", sa, mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)), codes.InvalidArgument},
		{"unsupported fs", req("pvc-a", sa, mountCap("vfat", snw)), codes.InvalidArgument},
		{"unknown volume", req("pvc-nope", sa, capFor(false)), codes.NotFound},
		{"stage", req("pvc-a", sa, capFor(false)), codes.OK},
		{"stage again", req("pvc-a", sa, capFor(false)), codes.OK},
		{"stage again, fs spelt out", req("pvc-a", sa, mountCap("ext4", snw)), codes.OK},
		{"other staging path", req("pvc-a", sa+"-2", capFor(false)), codes.AlreadyExists},
		{"other access type", req("pvc-a", sa, capFor(true)), codes.AlreadyExists},
		{"other fs", req("pvc-a", sa, mountCap("xfs", snw)), codes.AlreadyExists},
		{"read-only after read-write", req("pvc-a", sa, mountCap("", csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)), codes.AlreadyExists},
		{"fs from the volume context", &csi.NodeStageVolumeRequest{VolumeId: "pvc-xfs", StagingTargetPath: sx,
			VolumeCapability: capFor(false), VolumeContext: map[string]string{driver.ContextFSType: "xfs"}}, codes.OK},
		{"over max volumes", req("pvc-c", sc, capFor(true)), codes.ResourceExhausted},
	}
	for name, id := range badIDs {
		tests = append(tests, tc{"id " + name, req(id, sb, capFor(false)), codes.InvalidArgument})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.Node.NodeStageVolume(ctx, tt.req)
			wantCode(t, err, tt.code)
		})
	}
	if fs, _ := h.Opts.Mounter.Format(deviceOf(t, h, "pvc-xfs").Path); fs != "xfs" {
		t.Fatalf("pvc-xfs was formatted %q", fs)
	}
	if !h.Opts.Mounter.IsMounted(sa) {
		t.Fatal("pvc-a is not mounted at its staging path")
	}
	if n := len(h.Opts.Kernel.Devices()); n != 2 {
		t.Fatalf("%d devices attached, want 2", n)
	}
}

// TestNodeStageNoNBD: without the kernel's nbd driver, Identity and
// Controller work and NodeStage fails with FailedPrecondition saying why.
func TestNodeStageNoNBD(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{})
	h.Opts.Kernel.SetNoDriver(true)
	mustCreate(t, h, "pvc-n", 8*mib, nil)
	staging, _ := paths(h, "pvc-n")
	_, err := h.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "pvc-n", StagingTargetPath: staging, VolumeCapability: capFor(false)})
	wantCode(t, err, codes.FailedPrecondition)
	if want := "modprobe nbd"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	// Nothing is left behind; once the driver is there, staging works.
	if ents, _ := os.ReadDir(filepath.Join(h.Opts.StateDir, "volumes")); len(ents) != 0 {
		t.Fatalf("state left after a failed stage: %v", ents)
	}
	h.Opts.Kernel.SetNoDriver(false)
	mustStage(t, h, "pvc-n", staging, capFor(false))
}

func TestNodeUnstageVolume(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{})
	mustCreate(t, h, "pvc-u", 8*mib, nil)
	mustCreate(t, h, "pvc-idle", 8*mib, nil)
	staging, target := paths(h, "pvc-u")
	mustStage(t, h, "pvc-u", staging, capFor(false))
	mustPublish(t, h, "pvc-u", staging, target, capFor(false), false)
	req := func(id, path string) *csi.NodeUnstageVolumeRequest {
		return &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: path}
	}
	type tc struct {
		name string
		req  *csi.NodeUnstageVolumeRequest
		code codes.Code
	}
	tests := []tc{
		{"no id", req("", staging), codes.InvalidArgument},
		{"no path", req("pvc-u", ""), codes.InvalidArgument},
		{"relative path", req("pvc-u", "x"), codes.InvalidArgument},
		{"unknown volume", req("pvc-nope", staging), codes.NotFound},
		{"not staged", req("pvc-idle", staging), codes.OK},
		{"other path", req("pvc-u", staging+"-2"), codes.NotFound},
		{"still published", req("pvc-u", staging), codes.FailedPrecondition},
	}
	for name, id := range badIDs {
		tests = append(tests, tc{"id " + name, req(id, staging), codes.InvalidArgument})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.Node.NodeUnstageVolume(ctx, tt.req)
			wantCode(t, err, tt.code)
		})
	}
	mustUnpublish(t, h, "pvc-u", target)
	mustUnstage(t, h, "pvc-u", staging)
	mustUnstage(t, h, "pvc-u", staging) // idempotent
	if h.Opts.Mounter.IsMounted(staging) || len(h.Opts.Kernel.Devices()) != 0 {
		t.Fatalf("after unstage: mounts %v, devices %v", h.Opts.Mounter.MountPoints(), h.Opts.Kernel.Devices())
	}
}

func TestNodePublishVolume(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{})
	mustCreate(t, h, "pvc-p", 8*mib, nil)
	mustCreate(t, h, "pvc-blk", 8*mib, nil, capFor(true))
	mustCreate(t, h, "pvc-sw", 8*mib, nil)
	mustCreate(t, h, "pvc-idle", 8*mib, nil)
	sp, tp := paths(h, "pvc-p")
	sbk, tbk := paths(h, "pvc-blk")
	ssw, tsw := paths(h, "pvc-sw")
	sw := mountCap("", csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	mustStage(t, h, "pvc-p", sp, capFor(false))
	mustStage(t, h, "pvc-blk", sbk, capFor(true))
	mustStage(t, h, "pvc-sw", ssw, sw)
	req := func(id, staging, target string, vc *csi.VolumeCapability, ro bool) *csi.NodePublishVolumeRequest {
		return &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, Readonly: ro}
	}
	type tc struct {
		name string
		req  *csi.NodePublishVolumeRequest
		code codes.Code
	}
	tests := []tc{
		{"no id", req("", sp, tp, capFor(false), false), codes.InvalidArgument},
		{"no target", req("pvc-p", sp, "", capFor(false), false), codes.InvalidArgument},
		{"relative target", req("pvc-p", sp, "t", capFor(false), false), codes.InvalidArgument},
		{"no capability", req("pvc-p", sp, tp, nil, false), codes.InvalidArgument},
		{"no staging path", req("pvc-p", "", tp, capFor(false), false), codes.InvalidArgument},
		{"multi node", req("pvc-p", sp, tp, mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY), false), codes.InvalidArgument},
		{"unknown volume", req("pvc-nope", sp, tp, capFor(false), false), codes.NotFound},
		{"not staged", req("pvc-idle", sp, tp, capFor(false), false), codes.FailedPrecondition},
		{"wrong staging path", req("pvc-p", sp+"-2", tp, capFor(false), false), codes.FailedPrecondition},
		{"block on a mount volume", req("pvc-p", sp, tp, capFor(true), false), codes.AlreadyExists},
		{"publish", req("pvc-p", sp, tp, capFor(false), false), codes.OK},
		{"publish again", req("pvc-p", sp, tp, capFor(false), false), codes.OK},
		{"again read-only", req("pvc-p", sp, tp, capFor(false), true), codes.AlreadyExists},
		{"second target read-only", req("pvc-p", sp, tp+"-ro", capFor(false), true), codes.OK},
		{"block", req("pvc-blk", sbk, tbk, capFor(true), false), codes.OK},
		{"single writer", req("pvc-sw", ssw, tsw, sw, false), codes.OK},
		{"single writer, second target", req("pvc-sw", ssw, tsw+"-2", sw, false), codes.FailedPrecondition},
	}
	for name, id := range badIDs {
		tests = append(tests, tc{"id " + name, req(id, sp, tp, capFor(false), false), codes.InvalidArgument})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.Node.NodePublishVolume(ctx, tt.req)
			wantCode(t, err, tt.code)
		})
	}
	// The mounts: bind of the staging mount, read-only where asked; the
	// block target is a file bind-mounted from the device.
	mps := map[string][]string{}
	devs := map[string]string{}
	for _, mp := range h.Opts.Mounter.MountPoints() {
		mps[mp.Path], devs[mp.Path] = mp.Opts, mp.Device
	}
	if !slices.Contains(mps[tp], "bind") || slices.Contains(mps[tp], "ro") || !slices.Contains(mps[tp+"-ro"], "ro") {
		t.Fatalf("mount options: %v", mps)
	}
	if fi, err := os.Stat(tbk); err != nil || !fi.Mode().IsRegular() || devs[tbk] != deviceOf(t, h, "pvc-blk").Path {
		t.Fatalf("block target: %v, %v, mounted from %q", fi, err, devs[tbk])
	}
}

func TestNodeUnpublishVolume(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{})
	mustCreate(t, h, "pvc-p", 8*mib, nil)
	mustCreate(t, h, "pvc-blk", 8*mib, nil, capFor(true))
	sp, tp := paths(h, "pvc-p")
	sbk, tbk := paths(h, "pvc-blk")
	mustStage(t, h, "pvc-p", sp, capFor(false))
	mustStage(t, h, "pvc-blk", sbk, capFor(true))
	mustPublish(t, h, "pvc-p", sp, tp, capFor(false), false)
	mustPublish(t, h, "pvc-blk", sbk, tbk, capFor(true), false)
	req := func(id, target string) *csi.NodeUnpublishVolumeRequest {
		return &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}
	}
	for _, tt := range []struct {
		name string
		req  *csi.NodeUnpublishVolumeRequest
		code codes.Code
	}{
		{"no id", req("", tp), codes.InvalidArgument},
		{"bad id", req("..", tp), codes.InvalidArgument},
		{"no target", req("pvc-p", ""), codes.InvalidArgument},
		{"unknown volume", req("pvc-nope", tp), codes.NotFound},
		{"unpublish", req("pvc-p", tp), codes.OK},
		{"again", req("pvc-p", tp), codes.OK},
		{"block", req("pvc-blk", tbk), codes.OK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.Node.NodeUnpublishVolume(ctx, tt.req)
			wantCode(t, err, tt.code)
		})
	}
	for _, p := range []string{tp, tbk} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after unpublish: %v", p, err)
		}
	}
	if !h.Opts.Mounter.IsMounted(sp) {
		t.Fatal("unpublish unmounted the staging path")
	}
}

func TestNodeGetVolumeStats(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{})
	mustCreate(t, h, "pvc-s", 8*mib, nil)
	mustCreate(t, h, "pvc-blk", 8*mib, nil, capFor(true))
	sp, tp := paths(h, "pvc-s")
	sbk, tbk := paths(h, "pvc-blk")
	mustStage(t, h, "pvc-s", sp, capFor(false))
	mustPublish(t, h, "pvc-s", sp, tp, capFor(false), false)
	mustStage(t, h, "pvc-blk", sbk, capFor(true))
	mustPublish(t, h, "pvc-blk", sbk, tbk, capFor(true), false)
	req := func(id, path string) *csi.NodeGetVolumeStatsRequest {
		return &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path}
	}
	for _, tt := range []struct {
		name  string
		req   *csi.NodeGetVolumeStatsRequest
		code  codes.Code
		units []csi.VolumeUsage_Unit
	}{
		{"no id", req("", tp), codes.InvalidArgument, nil},
		{"bad id", req("a/b", tp), codes.InvalidArgument, nil},
		{"no path", req("pvc-s", ""), codes.InvalidArgument, nil},
		{"unknown volume", req("pvc-nope", tp), codes.NotFound, nil},
		{"not at that path", req("pvc-s", "/some/path"), codes.NotFound, nil},
		{"target", req("pvc-s", tp), codes.OK, []csi.VolumeUsage_Unit{csi.VolumeUsage_BYTES, csi.VolumeUsage_INODES}},
		{"staging path", req("pvc-s", sp), codes.OK, []csi.VolumeUsage_Unit{csi.VolumeUsage_BYTES, csi.VolumeUsage_INODES}},
		{"block", req("pvc-blk", tbk), codes.OK, []csi.VolumeUsage_Unit{csi.VolumeUsage_BYTES}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := h.Node.NodeGetVolumeStats(ctx, tt.req)
			wantCode(t, err, tt.code)
			if err != nil {
				return
			}
			var units []csi.VolumeUsage_Unit
			for _, u := range resp.GetUsage() {
				units = append(units, u.GetUnit())
				if u.GetTotal() <= 0 || u.GetAvailable() < 0 || u.GetUsed() < 0 {
					t.Errorf("usage %v", u)
				}
			}
			if !slices.Equal(units, tt.units) {
				t.Fatalf("units %v, want %v", units, tt.units)
			}
			if tt.name == "block" && resp.GetUsage()[0].GetTotal() != 8*mib {
				t.Fatalf("block volume total %d", resp.GetUsage()[0].GetTotal())
			}
		})
	}
}

func TestNodeExpandVolume(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{Store: drivertest.NewMemStore(1<<30, 1<<30)})
	mustCreate(t, h, "pvc-e", 64*mib, nil)
	mustCreate(t, h, "pvc-blk", 64*mib, nil, capFor(true))
	mustCreate(t, h, "pvc-idle", 64*mib, nil)
	sp, tp := paths(h, "pvc-e")
	sbk, _ := paths(h, "pvc-blk")
	mustStage(t, h, "pvc-e", sp, capFor(false))
	mustPublish(t, h, "pvc-e", sp, tp, capFor(false), false)
	mustStage(t, h, "pvc-blk", sbk, capFor(true))
	cr := func(n int64) *csi.CapacityRange { return &csi.CapacityRange{RequiredBytes: n} }
	req := func(id, path string, c *csi.CapacityRange) *csi.NodeExpandVolumeRequest {
		return &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: path, CapacityRange: c}
	}
	for _, tt := range []struct {
		name string
		req  *csi.NodeExpandVolumeRequest
		code codes.Code
		size int64
	}{
		{"no id", req("", tp, cr(80*mib)), codes.InvalidArgument, 0},
		{"bad id", req("a\x00", tp, cr(80*mib)), codes.InvalidArgument, 0},
		{"no path", req("pvc-e", "", cr(80*mib)), codes.InvalidArgument, 0},
		{"unknown volume", req("pvc-nope", tp, cr(80*mib)), codes.NotFound, 0},
		{"not staged", req("pvc-idle", tp, cr(80*mib)), codes.FailedPrecondition, 0},
		{"not at that path", req("pvc-e", "/elsewhere", cr(80*mib)), codes.NotFound, 0},
		{"beyond free space", req("pvc-e", tp, cr(4<<30)), codes.OutOfRange, 0},
		{"grow", req("pvc-e", tp, cr(80*mib)), codes.OK, 80 * mib},
		{"again", req("pvc-e", tp, cr(80*mib)), codes.OK, 80 * mib},
		{"after controller expansion", req("pvc-e", sp, nil), codes.OK, 80 * mib},
		{"block", &csi.NodeExpandVolumeRequest{VolumeId: "pvc-blk", VolumePath: sbk, CapacityRange: cr(72 * mib), VolumeCapability: capFor(true)}, codes.OK, 72 * mib},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := h.Node.NodeExpandVolume(ctx, tt.req)
			wantCode(t, err, tt.code)
			if err == nil && resp.GetCapacityBytes() != tt.size {
				t.Fatalf("capacity %d, want %d", resp.GetCapacityBytes(), tt.size)
			}
		})
	}
	if d := deviceOf(t, h, "pvc-e"); d.Size != 80*mib {
		t.Fatalf("device size %d", d.Size)
	}
	resized := h.Opts.Mounter.Resized()
	if !slices.Contains(resized, deviceOf(t, h, "pvc-e").Path) || slices.Contains(resized, deviceOf(t, h, "pvc-blk").Path) {
		t.Fatalf("filesystems resized: %v", resized)
	}
}

func TestNodeGetVolumeHealth(t *testing.T) {
	store := drivertest.NewMemStore(1<<30, 1<<30)
	h := drivertest.Start(t, drivertest.Options{Store: store})
	mustCreate(t, h, "pvc-h", 8*mib, nil)
	mustCreate(t, h, "pvc-sick", 8*mib, nil)
	store.MemVolume("pvc-sick").SetHealth(engine.ErrIO)
	for _, tt := range []struct {
		name, id string
		code     codes.Code
		entries  int
	}{
		{"no id", "", codes.InvalidArgument, 0},
		{"bad id", "a/b", codes.InvalidArgument, 0},
		{"unknown", "pvc-nope", codes.NotFound, 0},
		{"healthy", "pvc-h", codes.OK, 0},
		{"sick", "pvc-sick", codes.OK, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := h.Node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: tt.id})
			wantCode(t, err, tt.code)
			if err == nil && (len(resp.GetVolumeHealth().GetHealthStatuses()) != tt.entries || resp.GetVolumeHealth().GetVolumeId() != tt.id) {
				t.Fatalf("health %v", resp.GetVolumeHealth())
			}
		})
	}
}
