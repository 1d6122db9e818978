package driver_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/driver/drivertest"
)

// restartStore is a cache set that survives a plugin restart: open returns
// the store of the first process, reopen that of the next.
type restartStore struct {
	name   string
	open   func(t *testing.T) driver.VolumeStore
	reopen func(t *testing.T) driver.VolumeStore
}

func restartStores() []restartStore {
	mem := restartStore{name: "memstore"}
	var ms *drivertest.MemStore
	mem.open = func(*testing.T) driver.VolumeStore { ms = drivertest.NewMemStore(1<<40, 1<<30); return ms }
	mem.reopen = func(*testing.T) driver.VolumeStore { return ms }

	eng := restartStore{name: "engine"}
	var e *drivertest.Engine
	eng.open = func(t *testing.T) driver.VolumeStore {
		drivertest.SkipUnlessEngineVolumes(t)
		e = drivertest.OpenEngine(t, t.TempDir(), 512<<20)
		return e.Store
	}
	eng.reopen = func(t *testing.T) driver.VolumeStore { return e.Reopen(t) }
	return []restartStore{mem, eng}
}

// pattern is recognizable data for offset off.
func pattern(off int64, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte((off+int64(i))*7 + 3)
	}
	return p
}

// TestRestartReadopts stages and publishes a volume, writes through its
// device, stops the plugin without unstaging and starts a new one on the same
// state: the new process takes the device back (RECONFIGURE), the data reads
// back intact through the device, the mounts are untouched, and expand,
// unpublish, unstage and delete work.
func TestRestartReadopts(t *testing.T) {
	for _, st := range restartStores() {
		for _, block := range []bool{false, true} {
			t.Run(st.name+"/"+accessName(block), func(t *testing.T) {
				h1 := drivertest.Start(t, drivertest.Options{Store: st.open(t)})
				vc := capFor(block)
				vol := mustCreate(t, h1, "pvc-restart", 64*mib, nil, vc)
				id := vol.GetVolumeId()
				staging, target := paths(h1, id)
				mustStage(t, h1, id, staging, vc)
				mustPublish(t, h1, id, staging, target, vc, false)
				dev := deviceOf(t, h1, id)
				const off = 1 << 20
				data := pattern(off, 64<<10)
				if err := h1.Opts.Kernel.WriteAt(dev.Index, data, off); err != nil {
					t.Fatal(err)
				}

				// The plugin exits: the device stays, with no server.
				if err := h1.Stop(); err != nil {
					t.Fatal(err)
				}
				if err := h1.Opts.Kernel.ReadAt(dev.Index, make([]byte, 512), 0); err == nil {
					t.Fatal("device IO works with no plugin process serving it")
				}

				h2 := h1.Restart(t, st.reopen(t))
				after := deviceOf(t, h2, id)
				if after.Index != dev.Index || !after.Served {
					t.Fatalf("after restart the volume is on %+v, want nbd%d served", after, dev.Index)
				}
				got := make([]byte, len(data))
				if err := h2.Opts.Kernel.ReadAt(after.Index, got, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, data) {
					t.Fatal("data read through the re-adopted device differs from what was written")
				}
				if !block {
					if fs, err := h2.Opts.Mounter.Format(after.Path); err != nil || fs != "ext4" {
						t.Fatalf("filesystem on the re-adopted device: %q, %v", fs, err)
					}
				}
				for _, p := range []string{staging, target} {
					if p == staging && block {
						continue
					}
					if !h2.Opts.Mounter.IsMounted(p) {
						t.Errorf("%s is no longer mounted after the restart", p)
					}
				}
				health, err := h2.Node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
				if err != nil || len(health.GetVolumeHealth().GetHealthStatuses()) != 0 {
					t.Fatalf("health after restart: %v, %v", health, err)
				}
				if _, err := h2.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target}); err != nil {
					t.Fatal(err)
				}
				if _, err := h2.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
					VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 96 * mib}}); err != nil {
					t.Fatal(err)
				}
				if _, err := h2.Node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
					VolumeId: id, VolumePath: target, CapacityRange: &csi.CapacityRange{RequiredBytes: 96 * mib}}); err != nil {
					t.Fatal(err)
				}
				if d := deviceOf(t, h2, id); d.Size != 96*mib {
					t.Fatalf("device size after expand: %d", d.Size)
				}

				mustUnpublish(t, h2, id, target)
				mustUnstage(t, h2, id, staging)
				if devs := h2.Opts.Kernel.Devices(); len(devs) != 0 {
					t.Fatalf("devices left after unstage: %+v", devs)
				}
				if ents, _ := os.ReadDir(filepath.Join(h2.Opts.StateDir, "volumes")); len(ents) != 0 {
					t.Fatalf("state records left after unstage: %v", ents)
				}
				if _, err := h2.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestRestartAfterReboot: the node rebooted, so the kernel devices and the
// mounts are gone, but the state directory says the volume is staged. The new
// plugin reports the volume inaccessible; NodeStage attaches a new device and
// mounts the existing filesystem (no reformat), and unstage cleans up.
func TestRestartAfterReboot(t *testing.T) {
	for _, st := range restartStores() {
		t.Run(st.name, func(t *testing.T) {
			h1 := drivertest.Start(t, drivertest.Options{Store: st.open(t)})
			vc := capFor(false)
			id := mustCreate(t, h1, "pvc-reboot", 64*mib, nil, vc).GetVolumeId()
			staging, _ := paths(h1, id)
			mustStage(t, h1, id, staging, vc)
			dev := deviceOf(t, h1, id)
			data := pattern(4096, 4096)
			if err := h1.Opts.Kernel.WriteAt(dev.Index, data, 4096); err != nil {
				t.Fatal(err)
			}
			if err := h1.Stop(); err != nil {
				t.Fatal(err)
			}

			// Reboot: a new kernel with no devices, no mounts.
			o := h1.Opts
			o.Store = st.reopen(t)
			o.Kernel = drivertest.NewFakeKernel(t.TempDir())
			o.Mounter = drivertest.NewFakeMounter(o.Kernel)
			h2 := drivertest.Start(t, o)
			health, err := h2.Node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
			if err != nil {
				t.Fatal(err)
			}
			if hs := health.GetVolumeHealth().GetHealthStatuses(); len(hs) != 1 || hs[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE {
				t.Fatalf("health of a staged volume without a device: %v", hs)
			}
			mustStage(t, h2, id, staging, vc)
			d2 := deviceOf(t, h2, id)
			got := make([]byte, len(data))
			if err := h2.Opts.Kernel.ReadAt(d2.Index, got, 4096); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("data after reboot and restage: %v", err)
			}
			if fs, _ := h2.Opts.Mounter.Format(d2.Path); fs != "ext4" {
				t.Fatalf("filesystem after restage: %q", fs)
			}
			mustUnstage(t, h2, id, staging)
			if _, err := h2.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func accessName(block bool) string {
	if block {
		return "block"
	}
	return "mount"
}
