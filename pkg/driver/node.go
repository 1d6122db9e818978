package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// NodeGetCapabilities lists the node RPCs served.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
	} {
		caps = append(caps, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo returns the node id, its topology and the volume limit.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.cfg.NodeID,
		MaxVolumesPerNode:  d.cfg.MaxVolumes,
		AccessibleTopology: d.topology(),
	}, nil
}

// NodeStageVolume exports the volume, attaches a kernel NBD device to it and,
// for mount access, creates a filesystem if there is none and mounts it at
// the staging path. Raw block volumes stop after the attach.
func (d *Driver) NodeStageVolume(_ context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := checkPath("staging target path", path); err != nil {
		return nil, err
	}
	c, err := parseCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	fsType := ""
	if !c.block {
		if fsType, err = checkFSType(c.fsType); err != nil {
			return nil, err
		}
		if fsType == "" {
			if fsType, err = checkFSType(req.GetVolumeContext()[ContextFSType]); err != nil {
				return nil, err
			}
		}
		if fsType == "" {
			fsType = DefaultFSType
		}
	}

	unlock, err := d.locks.lock(id, "NodeStageVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := d.cfg.Store.Volume(id)
	if err != nil {
		return nil, err
	}
	rec, err := d.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec != nil {
		if err := stageCompatible(rec, path, c, fsType); err != nil {
			return nil, err
		}
	}
	dev := d.device(id)
	if rec != nil && rec.Staged && dev != nil {
		if c.block {
			return &csi.NodeStageVolumeResponse{}, nil
		}
		if mounted, err := d.cfg.Mounter.IsMountPoint(path); err != nil {
			return nil, err
		} else if mounted {
			return &csi.NodeStageVolumeResponse{}, nil
		}
		// The staging mount is gone (someone unmounted it): mount again below.
	}

	fresh := rec == nil
	if fresh {
		if err := d.reserveSlot(id); err != nil {
			return nil, err
		}
		rec = &stageRecord{VolumeID: id, StagingPath: path, Block: c.block, FSType: fsType,
			MountFlags: c.mountFlags, ReadOnly: c.readOnlyMode(), SingleWriter: c.singleWriter()}
	}
	// undo rolls a stage that failed back to nothing, so a retry starts clean.
	undo := func(cause error) error {
		if dev != nil {
			if err := dev.Detach(); err != nil {
				klog.ErrorS(err, "Detaching after a failed stage", "volume", id)
				return cause
			}
			d.setDevice(id, nil)
		}
		if err := d.state.remove(id); err != nil {
			klog.ErrorS(err, "Removing the stage record after a failed stage", "volume", id)
			return cause
		}
		d.releaseSlot(id)
		return cause
	}
	if dev == nil {
		if !fresh && !c.block {
			// Staged by an earlier process whose device is gone (node
			// reboot, or not taken back): drop its dead mount first.
			if mounted, err := d.cfg.Mounter.IsMountPoint(path); err != nil {
				return nil, err
			} else if mounted {
				if err := d.cfg.Mounter.Unmount(path); err != nil {
					return nil, fmt.Errorf("unmounting the stale mount at %s: %w", path, err)
				}
			}
		}
		dev, err = d.cfg.Attacher.Attach(id, v, rec.ReadOnly)
		if err != nil {
			if fresh {
				d.releaseSlot(id)
			}
			return nil, fmt.Errorf("attaching volume %q: %w", id, err)
		}
		d.setDevice(id, dev)
		rec.NBDIndex, rec.Device = dev.Index(), dev.Path()
		if err := d.state.save(rec); err != nil {
			return nil, undo(err)
		}
	}
	if !c.block {
		if err := os.MkdirAll(path, 0o750); err != nil {
			return nil, undo(fmt.Errorf("staging path: %w", err))
		}
		opts := append([]string(nil), c.mountFlags...)
		if rec.ReadOnly {
			opts = append(opts, "ro")
		}
		if err := d.cfg.Mounter.FormatAndMount(dev.Path(), path, fsType, opts); err != nil {
			return nil, undo(fmt.Errorf("mounting %s (%s) at %s: %w", dev.Path(), fsType, path, err))
		}
	}
	rec.Staged = true
	if err := d.state.save(rec); err != nil {
		return nil, err
	}
	klog.InfoS("Staged volume", "volume", id, "device", dev.Path(), "stagingPath", path, "block", c.block, "fsType", fsType)
	return &csi.NodeStageVolumeResponse{}, nil
}

// stageCompatible checks a repeated NodeStage against the record of the
// first.
func stageCompatible(rec *stageRecord, path string, c capability, fsType string) error {
	switch {
	case rec.StagingPath != path:
		return errorf(ErrExists, "volume %q is already staged at %s", rec.VolumeID, rec.StagingPath)
	case rec.Block != c.block:
		return errorf(ErrExists, "volume %q is staged for %s access, requested %s", rec.VolumeID, accessName(rec.Block), c.accessType())
	case !c.block && rec.FSType != fsType:
		return errorf(ErrExists, "volume %q is staged with %s, requested %s", rec.VolumeID, rec.FSType, fsType)
	case rec.ReadOnly != c.readOnlyMode():
		return errorf(ErrExists, "volume %q is staged read-only=%v, requested read-only=%v", rec.VolumeID, rec.ReadOnly, c.readOnlyMode())
	}
	return nil
}

func accessName(block bool) string {
	if block {
		return "block"
	}
	return "mount"
}

// reserveSlot counts id against MaxVolumes.
func (d *Driver) reserveSlot(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg.MaxVolumes > 0 && !d.staging[id] && int64(len(d.staging)) >= d.cfg.MaxVolumes {
		return errorf(ErrNoSpace, "node %s already has %d volumes staged (--max-volumes)", d.cfg.NodeID, len(d.staging))
	}
	d.staging[id] = true
	return nil
}

func (d *Driver) releaseSlot(id string) {
	d.mu.Lock()
	delete(d.staging, id)
	d.mu.Unlock()
}

// NodeUnstageVolume unmounts the staging path, detaches the device (the
// kernel flushes it; removing the export flushes the volume) and forgets the
// volume. A volume that is not staged is left alone.
func (d *Driver) NodeUnstageVolume(_ context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := checkPath("staging target path", path); err != nil {
		return nil, err
	}
	unlock, err := d.locks.lock(id, "NodeUnstageVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := d.stagedOrExisting(id)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if rec.StagingPath != path {
		return nil, errorf(ErrNotFound, "volume %q is staged at %s, not %s", id, rec.StagingPath, path)
	}
	for _, t := range sortedTargets(rec) {
		mounted, err := d.cfg.Mounter.IsMountPoint(t)
		if err != nil {
			return nil, err
		}
		if mounted {
			return nil, errorf(ErrPrecondition, "volume %q is still published at %s", id, t)
		}
		delete(rec.Targets, t)
	}
	if !rec.Block {
		mounted, err := d.cfg.Mounter.IsMountPoint(path)
		if err != nil {
			return nil, err
		}
		if mounted {
			if err := d.cfg.Mounter.Unmount(path); err != nil {
				return nil, fmt.Errorf("unmounting %s: %w", path, err)
			}
		}
	}
	if dev := d.device(id); dev != nil {
		if err := dev.Detach(); err != nil {
			return nil, fmt.Errorf("detaching %s from volume %q: %w", dev.Path(), id, err)
		}
		d.setDevice(id, nil)
	} else if rec.Device != "" {
		klog.InfoS("Unstaging a volume whose device was not taken back after a restart", "volume", id, "device", rec.Device)
	}
	if err := d.state.remove(id); err != nil {
		return nil, err
	}
	d.releaseSlot(id)
	klog.InfoS("Unstaged volume", "volume", id, "stagingPath", path)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func sortedTargets(rec *stageRecord) []string {
	ts := make([]string, 0, len(rec.Targets))
	for t := range rec.Targets {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	return ts
}

// NodePublishVolume bind-mounts the staging mount (or, for raw block, the
// device) at the target path, read-only if asked.
func (d *Driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := checkPath("target path", target); err != nil {
		return nil, err
	}
	c, err := parseCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	if err := checkPath("staging target path", staging); err != nil {
		return nil, err
	}
	unlock, err := d.locks.lock(id, "NodePublishVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := d.cfg.Store.Volume(id); err != nil {
		return nil, err
	}
	rec, err := d.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec == nil || !rec.Staged || rec.StagingPath != staging {
		return nil, errorf(ErrPrecondition, "volume %q is not staged at %s", id, staging)
	}
	if rec.Block != c.block {
		return nil, errorf(ErrExists, "volume %q is staged for %s access, requested %s", id, accessName(rec.Block), c.accessType())
	}
	ro := req.GetReadonly() || c.readOnlyMode() || rec.ReadOnly
	want := publishRecord{ReadOnly: ro, Block: c.block}
	if t, ok := rec.Targets[target]; ok {
		if t != want {
			return nil, errorf(ErrExists, "volume %q is already published at %s with read-only=%v", id, target, t.ReadOnly)
		}
		mounted, err := d.cfg.Mounter.IsMountPoint(target)
		if err != nil {
			return nil, err
		}
		if mounted {
			return &csi.NodePublishVolumeResponse{}, nil
		}
	} else if (rec.SingleWriter || c.singleWriter()) && len(rec.Targets) > 0 {
		return nil, errorf(ErrPrecondition, "volume %q has a single-writer access mode and is already published at %s", id, sortedTargets(rec)[0])
	}

	opts := []string{"bind"}
	if ro {
		opts = append(opts, "ro")
	}
	source := rec.StagingPath
	if c.block {
		source = rec.Device
		if err := makeFile(target); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, fmt.Errorf("target path: %w", err)
	}
	if err := d.cfg.Mounter.Mount(source, target, "", opts); err != nil {
		return nil, fmt.Errorf("bind-mounting %s at %s: %w", source, target, err)
	}
	if rec.Targets == nil {
		rec.Targets = make(map[string]publishRecord)
	}
	rec.Targets[target] = want
	if err := d.state.save(rec); err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// makeFile creates the regular file a block volume is bind-mounted on.
func makeFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("target path: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return fmt.Errorf("target path: %w", err)
	}
	return f.Close()
}

// NodeUnpublishVolume unmounts and removes the target path.
func (d *Driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := checkPath("target path", target); err != nil {
		return nil, err
	}
	unlock, err := d.locks.lock(id, "NodeUnpublishVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := d.stagedOrExisting(id)
	if err != nil {
		return nil, err
	}
	if err := d.cfg.Mounter.CleanupMountPoint(target); err != nil {
		return nil, fmt.Errorf("unmounting %s: %w", target, err)
	}
	if rec != nil {
		if _, ok := rec.Targets[target]; ok {
			delete(rec.Targets, target)
			if err := d.state.save(rec); err != nil {
				return nil, err
			}
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats reports bytes and inodes of a staged or published
// volume's filesystem, or the size of a block volume.
func (d *Driver) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if path == "" {
		return nil, invalidf("volume path is required")
	}
	v, err := d.cfg.Store.Volume(id)
	if err != nil {
		return nil, err
	}
	rec, err := d.state.load(id)
	if err != nil {
		return nil, err
	}
	if !volumeAt(rec, path) {
		return nil, errorf(ErrNotFound, "volume %q is not staged or published at %s", id, path)
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, errorf(ErrNotFound, "volume path %s does not exist", path)
	} else if err != nil {
		return nil, err
	}
	if rec.Block {
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: v.Size()},
		}}, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := int64(st.Bsize)
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs,
			Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree),
			Used: int64(st.Files - st.Ffree)},
	}}, nil
}

// volumeAt reports whether a staged volume is at path (its staging path or
// one of its targets).
func volumeAt(rec *stageRecord, path string) bool {
	if rec == nil {
		return false
	}
	if filepath.Clean(path) == filepath.Clean(rec.StagingPath) {
		return true
	}
	_, ok := rec.Targets[path]
	return ok
}

// NodeExpandVolume grows the volume (if ControllerExpandVolume has not), the
// kernel device, and the filesystem of a mount volume.
func (d *Driver) NodeExpandVolume(_ context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if path == "" {
		return nil, invalidf("volume path is required")
	}
	blockCap := false
	if vc := req.GetVolumeCapability(); vc != nil {
		c, err := parseCapability(vc)
		if err != nil {
			return nil, err
		}
		blockCap = c.block
	}
	cr := req.GetCapacityRange()
	if cr.GetRequiredBytes() < 0 || cr.GetLimitBytes() < 0 {
		return nil, invalidf("capacity range has a negative bound")
	}
	unlock, err := d.locks.lock(id, "NodeExpandVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := d.cfg.Store.Volume(id)
	if err != nil {
		return nil, err
	}
	rec, err := d.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec == nil || !rec.Staged {
		return nil, errorf(ErrPrecondition, "volume %q is not staged on this node", id)
	}
	if !volumeAt(rec, path) {
		return nil, errorf(ErrNotFound, "volume %q is not staged or published at %s", id, path)
	}
	info := v.Info()
	size := int64(info.Size)
	if req := cr.GetRequiredBytes(); req > size {
		want, err := volumeSize(cr)
		if err != nil {
			return nil, err
		}
		if err := d.growLocked(v, info, want); err != nil {
			return nil, err
		}
		size = want
	}
	if lim := cr.GetLimitBytes(); lim > 0 && size > lim {
		return nil, errorf(ErrOutOfRange, "volume %q has %d bytes, more than the limit %d", id, size, lim)
	}
	dev := d.device(id)
	if dev == nil {
		return nil, errorf(ErrPrecondition, "volume %q has no attached device (it was not taken back after a plugin restart); unstage and stage it again", id)
	}
	if err := dev.Resize(size); err != nil {
		return nil, fmt.Errorf("resizing %s: %w", dev.Path(), err)
	}
	if !rec.Block && !blockCap {
		if err := d.cfg.Mounter.ResizeFS(dev.Path(), rec.StagingPath); err != nil {
			return nil, err
		}
	}
	klog.InfoS("Expanded volume", "volume", id, "size", size, "device", dev.Path())
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// NodeGetVolumeHealth reports the volume's health in the cache set and
// whether its kernel device is still connected.
func (d *Driver) NodeGetVolumeHealth(_ context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	id := req.GetVolumeId()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	v, err := d.cfg.Store.Volume(id)
	if err != nil {
		return nil, err
	}
	h := volumeHealth(v)
	rec, err := d.state.load(id)
	if err != nil {
		return nil, err
	}
	if rec != nil && rec.Staged {
		if dev := d.device(id); dev == nil {
			h = append(h, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE,
				Reason: "DeviceNotReattached", Message: fmt.Sprintf("%s was not taken back after a plugin restart", rec.Device)})
		} else if ok, err := d.cfg.Attacher.Connected(dev.Index()); err != nil || !ok {
			msg := dev.Path() + " is disconnected"
			if err != nil {
				msg = err.Error()
			}
			h = append(h, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE,
				Reason: "DeviceDisconnected", Message: msg})
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{VolumeId: id, HealthStatuses: h}}, nil
}

// NodeGetStorageHealth reports the cache set's health.
func (d *Driver) NodeGetStorageHealth(context.Context, *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	resp := &csi.NodeGetStorageHealthResponse{}
	if err := d.cfg.Store.Health(); err != nil {
		resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
			Status: csi.StorageHealthErrorType_STORAGE_UNREACHABLE, Reason: "CacheSetError", Message: err.Error()})
	}
	return resp, nil
}

// stagedOrExisting returns volume id's stage record, or nil if it is not
// staged; a volume that is neither staged nor known is an error (NotFound).
func (d *Driver) stagedOrExisting(id string) (*stageRecord, error) {
	rec, err := d.state.load(id)
	if err != nil || rec != nil {
		return rec, err
	}
	if _, err := d.cfg.Store.Volume(id); err != nil {
		return nil, err
	}
	return nil, nil
}
