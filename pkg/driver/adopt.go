package driver

import (
	"k8s.io/klog/v2"
)

// adopt takes back the volumes a previous plugin process staged. For each
// stage record:
//
//   - the volume is looked up in the (re-opened) cache set;
//   - if the kernel still has the record's NBD device set up (its sockets
//     died with the old process and it waits for new ones), the volume is
//     exported again and the device given new sockets (Attacher.Reattach,
//     NBD RECONFIGURE): the filesystem mounted on it never noticed;
//   - otherwise (the node rebooted, or the device gave up waiting) the
//     record stays without a device: NodeGetVolumeHealth reports it,
//     NodeStage attaches a new device (after dropping the dead mount) and
//     NodeUnstage forgets it.
//
// Records of volumes that are gone from the cache set are kept the same way,
// so that NodeUnstage can still clean up. Nothing here fails New: a volume
// that cannot be taken back is logged and reported by health.
func (d *Driver) adopt() {
	recs, errs := d.state.list()
	for _, err := range errs {
		klog.ErrorS(err, "Skipping an unreadable stage record")
	}
	for _, rec := range recs {
		d.staging[rec.VolumeID] = true
		log := klog.LoggerWithValues(klog.Background(), "volume", rec.VolumeID, "device", rec.Device, "stagingPath", rec.StagingPath)
		if rec.Device == "" {
			log.Info("Stage record without a device (stage did not get that far); NodeStage will redo it")
			continue
		}
		v, err := d.cfg.Store.Volume(rec.VolumeID)
		if err != nil {
			log.Error(err, "Staged volume is not in the cache set; its device cannot be taken back")
			continue
		}
		connected, err := d.cfg.Attacher.Connected(rec.NBDIndex)
		if err != nil {
			log.Error(err, "Cannot query the staged volume's device")
			continue
		}
		if !connected {
			log.Info("Staged volume's device is no longer set up (node reboot or dead-connection timeout); NodeStage will attach a new one")
			continue
		}
		dev, err := d.cfg.Attacher.Reattach(rec.VolumeID, v, rec.ReadOnly, rec.NBDIndex)
		if err != nil {
			log.Error(err, "Cannot reattach the staged volume's device")
			continue
		}
		d.devices[rec.VolumeID] = dev
		log.Info("Took back a staged volume", "published", len(rec.Targets))
	}
}
