package driver

import (
	"context"
	"errors"
	"sort"
	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"k8s.io/klog/v2"

	"github.com/csi-cache/csi-cache/pkg/engine"
)

// ControllerGetCapabilities lists the controller RPCs served. There is no
// ControllerPublish: volumes are node-local and attached by NodeStage.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume creates a volume on this node's cache set. It is idempotent by
// name: a repeat with a compatible request returns the existing volume, one
// with a different size or parameters fails with AlreadyExists.
func (d *Driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, invalidf("name is required")
	}
	if err := checkVolumeID(name); err != nil {
		return nil, err
	}
	caps, err := parseCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	params, err := parseParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	fsType, err := createFSType(params.fsType, caps)
	if err != nil {
		return nil, err
	}
	if req.GetVolumeContentSource() != nil {
		return nil, invalidf("volume content sources (snapshots, clones) are not supported")
	}
	if len(req.GetMutableParameters()) > 0 {
		return nil, invalidf("mutable parameters are not supported")
	}
	size, err := volumeSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	if !d.accessibleHere(req.GetAccessibilityRequirements()) {
		return nil, errorf(ErrNoSpace, "the accessibility requirements do not include this node (%s=%s)", TopologyKey, d.cfg.NodeID)
	}

	unlock, err := d.locks.lock(name, "CreateVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()

	if v, err := d.cfg.Store.Volume(name); err == nil {
		info := v.Info()
		if !sizeFits(int64(info.Size), req.GetCapacityRange()) {
			return nil, errorf(ErrExists, "volume %q exists with %d bytes, outside the requested range [%d, %d]",
				name, info.Size, req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes())
		}
		if ok, why := params.matches(info); !ok {
			return nil, errorf(ErrExists, "volume %q exists with %s", name, why)
		}
		return &csi.CreateVolumeResponse{Volume: d.csiVolume(info, fsType)}, nil
	} else if !errors.Is(err, engine.ErrNoVolume) {
		return nil, err
	}

	d.spaceMu.Lock()
	defer d.spaceMu.Unlock()
	avail, err := d.cfg.Store.Capacity(params.backing)
	if err != nil {
		return nil, err
	}
	if size > avail {
		return nil, errorf(ErrNoSpace, "volume %q needs %d bytes; node %s has %d bytes free for %s-backed volumes",
			name, size, d.cfg.NodeID, avail, params.backing)
	}
	v, err := d.cfg.Store.CreateVolume(params.spec(name, size))
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v.Info(), fsType)}, nil
}

// createFSType is the filesystem of a new volume: the parameter's or the mount
// capabilities' (they must agree), ext4 by default, none for block-only.
func createFSType(param string, caps []capability) (string, error) {
	fs, mount := param, false
	for _, c := range caps {
		if c.block {
			continue
		}
		mount = true
		switch {
		case c.fsType == "":
		case fs == "":
			fs = c.fsType
		case fs != c.fsType:
			return "", invalidf("the request asks for both %s and %s filesystems", fs, c.fsType)
		}
	}
	if !mount {
		return "", nil
	}
	if fs == "" {
		fs = DefaultFSType
	}
	return fs, nil
}

// accessibleHere reports whether a volume with these requirements may live
// on this node: if any topology is requisite, one of them must include it.
func (d *Driver) accessibleHere(r *csi.TopologyRequirement) bool {
	if len(r.GetRequisite()) == 0 {
		return true
	}
	for _, t := range r.GetRequisite() {
		if d.onThisNode(t) {
			return true
		}
	}
	return false
}

func (d *Driver) csiVolume(info engine.VolumeInfo, fsType string) *csi.Volume {
	return &csi.Volume{
		VolumeId:           info.Name,
		CapacityBytes:      int64(info.Size),
		VolumeContext:      volumeContext(info, fsType),
		AccessibleTopology: []*csi.Topology{d.topology()},
	}
}

// DeleteVolume deletes a volume: its cached data is invalidated and its
// backing data removed. Deleting a volume that does not exist succeeds; one
// still staged on this node is refused with FailedPrecondition.
func (d *Driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	unlock, err := d.locks.lock(id, "DeleteVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := d.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec != nil {
		return nil, errorf(ErrPrecondition, "volume %q is staged at %s on this node; unstage it first", id, rec.StagingPath)
	}
	if err := d.cfg.Store.DeleteVolume(id); err != nil && !errors.Is(err, engine.ErrNoVolume) {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ControllerExpandVolume grows a volume in the cache set. The kernel device
// and the filesystem grow in NodeExpandVolume, which is always required.
func (d *Driver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	cr := req.GetCapacityRange()
	if cr == nil {
		return nil, invalidf("capacity range is required")
	}
	if cr.GetRequiredBytes() <= 0 {
		return nil, invalidf("capacity range: required bytes must be positive")
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if _, err := parseCapability(vc); err != nil {
			return nil, err
		}
	}
	size, err := volumeSize(cr)
	if err != nil {
		return nil, err
	}
	unlock, err := d.locks.lock(id, "ControllerExpandVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := d.cfg.Store.Volume(id)
	if errors.Is(err, engine.ErrNoVolume) {
		// The external-resizer runs beside every node plugin and only its
		// leader calls this, so the volume usually lives on another node:
		// the node plugin that has it grows it in NodeExpandVolume.
		klog.V(2).InfoS("ControllerExpandVolume for a volume not on this node; leaving the growth to NodeExpandVolume", "volume", id, "bytes", size)
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: true}, nil
	}
	if err != nil {
		return nil, err
	}
	info := v.Info()
	cur := int64(info.Size)
	if size <= cur {
		if lim := cr.GetLimitBytes(); lim > 0 && cur > lim {
			return nil, errorf(ErrOutOfRange, "volume %q has %d bytes, more than the limit %d; volumes do not shrink", id, cur, lim)
		}
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: cur, NodeExpansionRequired: true}, nil
	}
	if err := d.growLocked(v, info, size); err != nil {
		return nil, err
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: true}, nil
}

// growLocked resizes v to size after checking the free space. The caller
// holds the volume lock.
func (d *Driver) growLocked(v Volume, info engine.VolumeInfo, size int64) error {
	d.spaceMu.Lock()
	defer d.spaceMu.Unlock()
	avail, err := d.cfg.Store.Capacity(info.Backing)
	if err != nil {
		return err
	}
	if grow := size - int64(info.Size); grow > avail {
		return errorf(ErrOutOfRange, "growing volume %q to %d bytes needs %d more; node %s has %d bytes free",
			info.Name, size, grow, d.cfg.NodeID, avail)
	}
	return v.Resize(uint64(size))
}

// ValidateVolumeCapabilities confirms the capabilities (and parameters, if
// given) when a volume of this driver supports them all.
func (d *Driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalidf("volume capabilities are required")
	}
	v, err := d.cfg.Store.Volume(id)
	if err != nil {
		return nil, err
	}
	refuse := func(err error) (*csi.ValidateVolumeCapabilitiesResponse, error) {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if _, err := parseCapabilities(req.GetVolumeCapabilities()); err != nil {
		return refuse(err)
	}
	if len(req.GetParameters()) > 0 {
		params, err := parseParams(req.GetParameters())
		if err != nil {
			return refuse(err)
		}
		if ok, why := params.matches(v.Info()); !ok {
			return refuse(errorf(ErrInvalid, "volume %q has %s", id, why))
		}
	}
	if len(req.GetMutableParameters()) > 0 {
		return refuse(invalidf("mutable parameters are not supported"))
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// page picks the volumes of one ListVolumes-style page: the token is the
// engine id of the first volume to return (ids are never reused, so a page
// boundary survives deletions).
func page(vols []engine.VolumeInfo, token string, max int32) (out []engine.VolumeInfo, next string, err error) {
	if max < 0 {
		return nil, "", invalidf("max_entries %d is negative", max)
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].ID < vols[j].ID })
	start := 0
	if token != "" {
		from, perr := strconv.ParseUint(token, 10, 64)
		if perr != nil {
			return nil, "", errorf(ErrBadToken, "%q was not issued by this driver", token)
		}
		start = sort.Search(len(vols), func(i int) bool { return vols[i].ID >= from })
	}
	end := len(vols)
	if max > 0 && start+int(max) < end {
		end = start + int(max)
		next = strconv.FormatUint(vols[end].ID, 10)
	}
	return vols[start:end], next, nil
}

// ListVolumes lists this node's volumes, paginated.
func (d *Driver) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	vols, next, err := page(d.cfg.Store.Volumes(), req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, info := range vols {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{
			Volume: d.csiVolume(info, ""),
			Status: &csi.ListVolumesResponse_VolumeStatus{},
		})
	}
	return resp, nil
}

// ControllerGetVolume describes one volume.
func (d *Driver) ControllerGetVolume(_ context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	v, err := d.cfg.Store.Volume(id)
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: d.csiVolume(v.Info(), ""),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{},
	}, nil
}

// GetCapacity reports the space for new volumes with the given parameters on
// this node; 0 for another node's topology or unsupported capabilities.
func (d *Driver) GetCapacity(_ context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	params, err := parseParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	none := &csi.GetCapacityResponse{AvailableCapacity: 0}
	if t := req.GetAccessibleTopology(); t != nil && !d.onThisNode(t) {
		return none, nil
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if _, err := parseCapability(vc); err != nil {
			return none, nil
		}
	}
	avail, err := d.cfg.Store.Capacity(params.backing)
	if err != nil {
		return nil, err
	}
	avail = avail / volumeAlign * volumeAlign
	return &csi.GetCapacityResponse{
		AvailableCapacity: avail,
		MaximumVolumeSize: wrapperspb.Int64(avail),
		MinimumVolumeSize: wrapperspb.Int64(volumeAlign),
	}, nil
}

// ControllerGetVolumeHealth reports a volume's health as the cache set sees
// it.
func (d *Driver) ControllerGetVolumeHealth(_ context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	id := req.GetVolumeId()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	v, err := d.cfg.Store.Volume(id)
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{
		VolumeId: id, HealthStatuses: volumeHealth(v)}}, nil
}

// ControllerListVolumeHealth lists the volumes with an adverse health
// condition, paginated like ListVolumes.
func (d *Driver) ControllerListVolumeHealth(_ context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	var sick []engine.VolumeInfo
	health := map[string][]*csi.VolumeHealth_VolumeHealthEntry{}
	for _, info := range d.cfg.Store.Volumes() {
		v, err := d.cfg.Store.Volume(info.Name)
		if errors.Is(err, engine.ErrNoVolume) {
			continue // deleted meanwhile
		}
		var h []*csi.VolumeHealth_VolumeHealthEntry
		if err != nil {
			h = []*csi.VolumeHealth_VolumeHealthEntry{{Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "VolumeUnavailable", Message: err.Error()}}
		} else {
			h = volumeHealth(v)
		}
		if len(h) > 0 {
			sick = append(sick, info)
			health[info.Name] = h
		}
	}
	vols, next, err := page(sick, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ControllerListVolumeHealthResponse{NextToken: next}
	for _, info := range vols {
		resp.Entries = append(resp.Entries, &csi.VolumeHealth{VolumeId: info.Name, HealthStatuses: health[info.Name]})
	}
	return resp, nil
}

// volumeHealth describes a volume's adverse conditions (none when healthy):
// INACCESSIBLE once it cannot serve IO (DATA_LOSS for metadata corruption),
// DEGRADED after device IO errors it worked around.
func volumeHealth(v Volume) []*csi.VolumeHealth_VolumeHealthEntry {
	var out []*csi.VolumeHealth_VolumeHealthEntry
	if err := v.Health(); err != nil {
		e := &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "VolumeError", Message: err.Error()}
		switch {
		case engine.IsCorruption(err):
			e.Status, e.Reason = csi.VolumeHealthErrorType_DATA_LOSS, "MetadataCorruption"
		case errors.Is(err, engine.ErrIO):
			e.Reason = "IOError"
		case errors.Is(err, engine.ErrClosed), errors.Is(err, engine.ErrVolumeClosed):
			e.Reason = "CacheSetClosed"
		}
		out = append(out, e)
	}
	if st := v.Info().Stats; st.CacheIOErrors+st.BackingIOErrors > 0 {
		out = append(out, &csi.VolumeHealth_VolumeHealthEntry{
			Status:  csi.VolumeHealthErrorType_DEGRADED,
			Reason:  "DeviceIOErrors",
			Message: strconv.FormatUint(st.CacheIOErrors, 10) + " cache and " + strconv.FormatUint(st.BackingIOErrors, 10) + " backing device IO errors",
		})
	}
	return out
}
