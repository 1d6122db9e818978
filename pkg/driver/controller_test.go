package driver_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/driver/drivertest"
	"github.com/csi-cache/csi-cache/pkg/engine"
)

// badIDs are volume ids every RPC must refuse with InvalidArgument.
var badIDs = map[string]string{
	"slash":       "pvc/1",
	"dotdot":      "pvc..1",
	"only dotdot": "..",
	"leading dot": ".pvc",
	"nul":         "pvc\x001",
	"space":       "pvc 1",
	"too long":    strings.Repeat("a", driver.MaxIDLength+1),
}

func TestCreateVolumeValidation(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{Store: drivertest.NewMemStore(1<<30, 256*mib)})
	good := func() *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{
			Name:               "pvc-ok",
			VolumeCapabilities: []*csi.VolumeCapability{mountCap("", snw)},
			CapacityRange:      &csi.CapacityRange{RequiredBytes: 64 * mib},
		}
	}
	tests := []struct {
		name string
		mod  func(r *csi.CreateVolumeRequest)
		code codes.Code
	}{
		{"ok", func(*csi.CreateVolumeRequest) {}, codes.OK},
		{"no name", func(r *csi.CreateVolumeRequest) { r.Name = "" }, codes.InvalidArgument},
		{"no capabilities", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }, codes.InvalidArgument},
		{"nil capability", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{nil} }, codes.InvalidArgument},
		{"no access mode", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0].AccessMode = nil }, codes.InvalidArgument},
		{"no access type", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0].AccessType = nil }, codes.InvalidArgument},
		{"multi node writer", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = append(r.VolumeCapabilities, mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER))
		}, codes.InvalidArgument},
		{"multi node reader", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)}
		}, codes.InvalidArgument},
		{"single node modes and block", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER),
				mountCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER),
				mountCap("", csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)}
		}, codes.OK},
		{"unsupported fs", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0] = mountCap("btrfs", snw) }, codes.InvalidArgument},
		{"fs parameter and capability differ", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities[0] = mountCap("ext4", snw)
			r.Parameters = map[string]string{driver.ParamFSType: "xfs"}
		}, codes.InvalidArgument},
		{"fs parameter", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{driver.ParamFSType: "xfs"} }, codes.OK},
		{"bad fs parameter", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{driver.ParamFSType: "ntfs"} }, codes.InvalidArgument},
		{"empty mount flag", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities[0] = mountCap("", snw, "") }, codes.InvalidArgument},
		{"mount group", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities[0].GetMount().VolumeMountGroup = "1000"
		}, codes.InvalidArgument},
		{"unknown cacheMode", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"cacheMode": "writesometimes"} }, codes.InvalidArgument},
		{"cacheMode writeback", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"cacheMode": "Writeback"} }, codes.OK},
		{"cacheMode none", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"cacheMode": "none"} }, codes.OK},
		{"sequentialCutoff not a size", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"sequentialCutoff": "4 apples"} }, codes.InvalidArgument},
		{"sequentialCutoff negative", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"sequentialCutoff": "-1"} }, codes.InvalidArgument},
		{"sequentialCutoff fractional bytes", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"sequentialCutoff": "1.5"} }, codes.InvalidArgument},
		{"sequentialCutoff empty", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"sequentialCutoff": ""} }, codes.InvalidArgument},
		{"sequentialCutoff 4Mi", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"sequentialCutoff": "4Mi"} }, codes.OK},
		{"sequentialCutoff 0 disables", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"sequentialCutoff": "0"} }, codes.OK},
		{"unknown backing", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"backing": "tape"} }, codes.InvalidArgument},
		{"blockdev backing", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"backing": "blockdev"} }, codes.InvalidArgument},
		{"cache-only", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"backing": "none"} }, codes.OK},
		{"cache-only writethrough", func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"backing": "none", "cacheMode": "writethrough"}
		}, codes.InvalidArgument},
		{"misspelt parameter", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"cachemode": "writeback"} }, codes.InvalidArgument},
		{"CO parameters", func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "default"}
		}, codes.OK},
		{"required above limit", func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 2 * mib, LimitBytes: mib}
		}, codes.InvalidArgument},
		{"negative required", func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: -1} }, codes.InvalidArgument},
		{"no aligned size in range", func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1000, LimitBytes: 2000}
		}, codes.OutOfRange},
		{"no capacity range", func(r *csi.CreateVolumeRequest) { r.CapacityRange = nil }, codes.OK},
		{"beyond free space", func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: 2 << 30} }, codes.ResourceExhausted},
		{"cache-only beyond the cache", func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"backing": "none"}
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 512 * mib}
		}, codes.ResourceExhausted},
		{"huge", func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1<<63 - 1} }, codes.OutOfRange},
		{"snapshot source", func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap"}}}
		}, codes.InvalidArgument},
		{"mutable parameters", func(r *csi.CreateVolumeRequest) { r.MutableParameters = map[string]string{"cacheMode": "none"} }, codes.InvalidArgument},
		{"topology of another node", func(r *csi.CreateVolumeRequest) {
			r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{
				{Segments: map[string]string{driver.TopologyKey: "node-2"}}}}
		}, codes.ResourceExhausted},
		{"topology including this node", func(r *csi.CreateVolumeRequest) {
			r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{
				{Segments: map[string]string{driver.TopologyKey: "node-2"}},
				{Segments: map[string]string{driver.TopologyKey: "node-1"}}}}
		}, codes.OK},
	}
	for name, id := range badIDs {
		tests = append(tests, struct {
			name string
			mod  func(r *csi.CreateVolumeRequest)
			code codes.Code
		}{"name " + name, func(r *csi.CreateVolumeRequest) { r.Name = id }, codes.InvalidArgument})
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good()
			r.Name = "pvc-" + strconv.Itoa(i)
			tt.mod(r)
			resp, err := h.Controller.CreateVolume(ctx, r)
			wantCode(t, err, tt.code)
			if err != nil {
				return
			}
			v := resp.GetVolume()
			if v.GetVolumeId() != r.Name || v.GetCapacityBytes() < r.GetCapacityRange().GetRequiredBytes() ||
				v.GetAccessibleTopology()[0].GetSegments()[driver.TopologyKey] != "node-1" {
				t.Fatalf("volume %v", v)
			}
			if _, err := h.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: r.Name}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCreateVolumeIdempotent(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{})
	req := func(size int64, params map[string]string) *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: "pvc-1", VolumeCapabilities: []*csi.VolumeCapability{mountCap("", snw)},
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: params}
	}
	first, err := h.Controller.CreateVolume(ctx, req(10*mib, map[string]string{"cacheMode": "writeback"}))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  *csi.CreateVolumeRequest
		code codes.Code
	}{
		{"same", req(10*mib, map[string]string{"cacheMode": "writeback"}), codes.OK},
		{"smaller required, same volume fits", req(5*mib, map[string]string{"cacheMode": "writeback"}), codes.OK},
		{"bigger", req(20*mib, map[string]string{"cacheMode": "writeback"}), codes.AlreadyExists},
		{"limit below", &csi.CreateVolumeRequest{Name: "pvc-1", VolumeCapabilities: []*csi.VolumeCapability{mountCap("", snw)},
			CapacityRange: &csi.CapacityRange{LimitBytes: 5 * mib}, Parameters: map[string]string{"cacheMode": "writeback"}}, codes.AlreadyExists},
		{"other cache mode", req(10*mib, nil), codes.AlreadyExists},
		{"other backing", req(10*mib, map[string]string{"cacheMode": "writeback", "backing": "none"}), codes.AlreadyExists},
		{"default cutoff spelt out", req(10*mib, map[string]string{"cacheMode": "writeback", "sequentialCutoff": "4Mi"}), codes.OK},
		{"other cutoff", req(10*mib, map[string]string{"cacheMode": "writeback", "sequentialCutoff": "0"}), codes.AlreadyExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := h.Controller.CreateVolume(ctx, tt.req)
			wantCode(t, err, tt.code)
			if err == nil && (resp.GetVolume().GetVolumeId() != first.GetVolume().GetVolumeId() ||
				resp.GetVolume().GetCapacityBytes() != first.GetVolume().GetCapacityBytes()) {
				t.Fatalf("repeat returned %v, first %v", resp.GetVolume(), first.GetVolume())
			}
		})
	}
	if n := len(h.Opts.Store.Volumes()); n != 1 {
		t.Fatalf("%d volumes after the repeats", n)
	}

	// A cache-only volume is writeback whether or not the request says so.
	for _, params := range []map[string]string{{"backing": "none"}, {"backing": "none", "cacheMode": "writeback"}, {"backing": "none"}} {
		r := req(10*mib, params)
		r.Name = "pvc-cache-only"
		resp, err := h.Controller.CreateVolume(ctx, r)
		if err != nil {
			t.Fatalf("cache-only %v: %v", params, err)
		}
		if m := resp.GetVolume().GetVolumeContext()["cacheMode"]; m != "writeback" {
			t.Fatalf("cache-only volume context cacheMode=%q", m)
		}
	}
}

func TestDeleteVolume(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{})
	mustCreate(t, h, "pvc-del", 8*mib, nil)
	mustCreate(t, h, "pvc-staged", 8*mib, nil)
	staging, _ := paths(h, "pvc-staged")
	mustStage(t, h, "pvc-staged", staging, capFor(false))
	tests := []struct {
		name, id string
		code     codes.Code
	}{
		{"no id", "", codes.InvalidArgument},
		{"existing", "pvc-del", codes.OK},
		{"again", "pvc-del", codes.OK},
		{"never existed", "pvc-nope", codes.OK},
		{"staged", "pvc-staged", codes.FailedPrecondition},
	}
	for name, id := range badIDs {
		tests = append(tests, struct {
			name, id string
			code     codes.Code
		}{name, id, codes.InvalidArgument})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: tt.id})
			wantCode(t, err, tt.code)
		})
	}
	if _, err := h.Opts.Store.Volume("pvc-del"); !errors.Is(err, engine.ErrNoVolume) {
		t.Fatalf("deleted volume still there: %v", err)
	}
	if _, err := h.Opts.Store.Volume("pvc-staged"); err != nil {
		t.Fatalf("staged volume was deleted: %v", err)
	}
}

func TestControllerExpandVolume(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{Store: drivertest.NewMemStore(1<<30, 1<<30)})
	mustCreate(t, h, "pvc-x", 64*mib, nil)
	cr := func(req, lim int64) *csi.CapacityRange {
		return &csi.CapacityRange{RequiredBytes: req, LimitBytes: lim}
	}
	tests := []struct {
		name     string
		req      *csi.ControllerExpandVolumeRequest
		code     codes.Code
		wantSize int64
	}{
		{"no id", &csi.ControllerExpandVolumeRequest{CapacityRange: cr(mib, 0)}, codes.InvalidArgument, 0},
		{"bad id", &csi.ControllerExpandVolumeRequest{VolumeId: "../pvc-x", CapacityRange: cr(mib, 0)}, codes.InvalidArgument, 0},
		{"no capacity range", &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x"}, codes.InvalidArgument, 0},
		{"zero required", &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: cr(0, 100*mib)}, codes.InvalidArgument, 0},
		{"bad capability", &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: cr(100*mib, 0),
			VolumeCapability: mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}, codes.InvalidArgument, 0},
		// The resizer's leader may run on any node: a volume that is not here
		// is grown by NodeExpandVolume on its own node.
		{"volume on another node", &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-nope", CapacityRange: cr(100*mib, 0)}, codes.OK, 100 * mib},
		{"beyond free space", &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: cr(2<<30, 0)}, codes.OutOfRange, 0},
		{"grow", &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: cr(100*mib, 0)}, codes.OK, 100 * mib},
		{"grow again (idempotent)", &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: cr(100*mib, 0)}, codes.OK, 100 * mib},
		{"smaller: no shrink", &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: cr(10*mib, 0)}, codes.OK, 100 * mib},
		{"limit below the size", &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: cr(10*mib, 20*mib)}, codes.OutOfRange, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := h.Controller.ControllerExpandVolume(ctx, tt.req)
			wantCode(t, err, tt.code)
			if err == nil && (resp.GetCapacityBytes() != tt.wantSize || !resp.GetNodeExpansionRequired()) {
				t.Fatalf("response %v, want %d bytes and node expansion", resp, tt.wantSize)
			}
		})
	}
	if v, _ := h.Opts.Store.Volume("pvc-x"); v.Size() != 100*mib {
		t.Fatalf("volume size %d", v.Size())
	}
}

func TestValidateVolumeCapabilities(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{})
	mustCreate(t, h, "pvc-v", 8*mib, map[string]string{"cacheMode": "writearound"})
	tests := []struct {
		name      string
		req       *csi.ValidateVolumeCapabilitiesRequest
		code      codes.Code
		confirmed bool
	}{
		{"no id", &csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csi.VolumeCapability{capFor(false)}}, codes.InvalidArgument, false},
		{"bad id", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "a\x00", VolumeCapabilities: []*csi.VolumeCapability{capFor(false)}}, codes.InvalidArgument, false},
		{"no capabilities", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-v"}, codes.InvalidArgument, false},
		{"unknown volume", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-nope", VolumeCapabilities: []*csi.VolumeCapability{capFor(false)}}, codes.NotFound, false},
		{"mount and block", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-v",
			VolumeCapabilities: []*csi.VolumeCapability{capFor(false), capFor(true)}}, codes.OK, true},
		{"multi node", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-v",
			VolumeCapabilities: []*csi.VolumeCapability{mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER)}}, codes.OK, false},
		{"same parameters", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-v", VolumeCapabilities: []*csi.VolumeCapability{capFor(false)},
			Parameters: map[string]string{"cacheMode": "writearound"}}, codes.OK, true},
		{"other parameters", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-v", VolumeCapabilities: []*csi.VolumeCapability{capFor(false)},
			Parameters: map[string]string{"cacheMode": "writeback"}}, codes.OK, false},
		{"bad parameters", &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-v", VolumeCapabilities: []*csi.VolumeCapability{capFor(false)},
			Parameters: map[string]string{"sequentialCutoff": "big"}}, codes.OK, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := h.Controller.ValidateVolumeCapabilities(ctx, tt.req)
			wantCode(t, err, tt.code)
			if err != nil {
				return
			}
			if got := resp.GetConfirmed() != nil; got != tt.confirmed {
				t.Fatalf("confirmed=%v (message %q), want %v", got, resp.GetMessage(), tt.confirmed)
			}
			if !tt.confirmed && resp.GetMessage() == "" {
				t.Fatal("refused without a message")
			}
		})
	}
}

func TestListVolumesPagination(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{})
	var names []string
	for i := range 7 {
		names = append(names, mustCreate(t, h, "pvc-"+strconv.Itoa(i), mib, nil).GetVolumeId())
	}
	for _, tt := range []struct {
		name string
		req  *csi.ListVolumesRequest
		code codes.Code
	}{
		{"negative max", &csi.ListVolumesRequest{MaxEntries: -1}, codes.InvalidArgument},
		{"foreign token", &csi.ListVolumesRequest{StartingToken: "invalid-token"}, codes.Aborted},
		{"all", &csi.ListVolumesRequest{}, codes.OK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.Controller.ListVolumes(ctx, tt.req)
			wantCode(t, err, tt.code)
		})
	}

	// Page through by twos, deleting the first volume of the next page
	// between calls: no volume is listed twice, and every volume that
	// still exists is listed.
	seen := map[string]int{}
	token := ""
	deleted := ""
	for pages := 0; ; pages++ {
		resp, err := h.Controller.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEntries()) > 2 {
			t.Fatalf("page of %d entries", len(resp.GetEntries()))
		}
		for _, e := range resp.GetEntries() {
			seen[e.GetVolume().GetVolumeId()]++
		}
		token = resp.GetNextToken()
		if token == "" {
			break
		}
		if pages == 1 {
			// Delete the volume the token points at.
			all, _ := h.Controller.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token, MaxEntries: 1})
			deleted = all.GetEntries()[0].GetVolume().GetVolumeId()
			if _, err := h.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: deleted}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range names {
		switch {
		case n == deleted && seen[n] != 0:
			t.Errorf("deleted %s was listed", n)
		case n != deleted && seen[n] != 1:
			t.Errorf("%s listed %d times", n, seen[n])
		}
	}
}

func TestControllerGetVolumeAndHealth(t *testing.T) {
	store := drivertest.NewMemStore(1<<30, 1<<30)
	h := drivertest.Start(t, drivertest.Options{Store: store})
	mustCreate(t, h, "pvc-ok", mib, nil)
	mustCreate(t, h, "pvc-sick", mib, nil)
	mustCreate(t, h, "pvc-degraded", mib, nil)
	store.MemVolume("pvc-sick").SetHealth(engine.ErrIO)
	store.MemVolume("pvc-degraded").SetIOErrors(3, 0)

	for _, tt := range []struct {
		name, id string
		code     codes.Code
		status   []csi.VolumeHealthErrorType
	}{
		{"no id", "", codes.InvalidArgument, nil},
		{"bad id", "a/b", codes.InvalidArgument, nil},
		{"unknown", "pvc-nope", codes.NotFound, nil},
		{"healthy", "pvc-ok", codes.OK, nil},
		{"io error", "pvc-sick", codes.OK, []csi.VolumeHealthErrorType{csi.VolumeHealthErrorType_INACCESSIBLE}},
		{"worked around io errors", "pvc-degraded", codes.OK, []csi.VolumeHealthErrorType{csi.VolumeHealthErrorType_DEGRADED}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			get, err := h.Controller.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: tt.id})
			wantCode(t, err, tt.code)
			if err == nil && get.GetVolume().GetVolumeId() != tt.id {
				t.Fatalf("ControllerGetVolume: %v", get)
			}
			resp, err := h.Controller.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: tt.id})
			wantCode(t, err, tt.code)
			if err != nil {
				return
			}
			var got []csi.VolumeHealthErrorType
			for _, e := range resp.GetVolumeHealth().GetHealthStatuses() {
				got = append(got, e.GetStatus())
				if e.GetReason() == "" {
					t.Errorf("entry without a reason: %v", e)
				}
			}
			if len(got) != len(tt.status) || len(got) > 0 && got[0] != tt.status[0] {
				t.Fatalf("health %v, want %v", got, tt.status)
			}
		})
	}
	list, err := h.Controller.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	rest, err := h.Controller.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{StartingToken: list.GetNextToken()})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range append(list.GetEntries(), rest.GetEntries()...) {
		ids = append(ids, e.GetVolumeId())
	}
	if strings.Join(ids, ",") != "pvc-sick,pvc-degraded" {
		t.Fatalf("ControllerListVolumeHealth listed %v", ids)
	}
}

func TestGetCapacity(t *testing.T) {
	h := drivertest.Start(t, drivertest.Options{Store: drivertest.NewMemStore(1<<30, 256*mib)})
	get := func(req *csi.GetCapacityRequest) (int64, error) {
		resp, err := h.Controller.GetCapacity(ctx, req)
		return resp.GetAvailableCapacity(), err
	}
	for _, tt := range []struct {
		name string
		req  *csi.GetCapacityRequest
		code codes.Code
		want int64
	}{
		{"file", &csi.GetCapacityRequest{}, codes.OK, 1 << 30},
		{"cache-only", &csi.GetCapacityRequest{Parameters: map[string]string{"backing": "none"}}, codes.OK, 256 * mib},
		{"this node", &csi.GetCapacityRequest{AccessibleTopology: &csi.Topology{Segments: map[string]string{driver.TopologyKey: "node-1"}}}, codes.OK, 1 << 30},
		{"another node", &csi.GetCapacityRequest{AccessibleTopology: &csi.Topology{Segments: map[string]string{driver.TopologyKey: "node-2"}}}, codes.OK, 0},
		{"unsupported capability", &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{
			mountCap("", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}}, codes.OK, 0},
		{"bad parameter", &csi.GetCapacityRequest{Parameters: map[string]string{"cacheMode": "sometimes"}}, codes.InvalidArgument, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := get(tt.req)
			wantCode(t, err, tt.code)
			if err == nil && got != tt.want {
				t.Fatalf("capacity %d, want %d", got, tt.want)
			}
		})
	}
	mustCreate(t, h, "pvc-c", 100*mib, nil)
	if got, _ := get(&csi.GetCapacityRequest{}); got != 1<<30-100*mib {
		t.Fatalf("capacity after a 100 MiB volume: %d", got)
	}
}

func TestIdentity(t *testing.T) {
	store := drivertest.NewMemStore(1<<30, 1<<30)
	h := drivertest.Start(t, drivertest.Options{Store: store})
	info, err := h.Identity.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != driver.DefaultDriverName || info.GetVendorVersion() == "" {
		t.Fatalf("GetPluginInfo: %v, %v", info, err)
	}
	caps, err := h.Identity.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil || len(caps.GetCapabilities()) != 3 {
		t.Fatalf("GetPluginCapabilities: %v, %v", caps, err)
	}
	if p, err := h.Identity.Probe(ctx, &csi.ProbeRequest{}); err != nil || !p.GetReady().GetValue() {
		t.Fatalf("Probe: %v, %v", p, err)
	}
	store.SetHealth(engine.ErrIO)
	_, err = h.Identity.Probe(ctx, &csi.ProbeRequest{})
	wantCode(t, err, codes.FailedPrecondition)
	sh, err := h.Node.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil || len(sh.GetBackendHealth()) != 1 || sh.GetBackendHealth()[0].GetStatus() != csi.StorageHealthErrorType_STORAGE_UNREACHABLE {
		t.Fatalf("NodeGetStorageHealth: %v, %v", sh, err)
	}
}
