package engine

import (
	"testing"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// TestOpenJsetV1: cache sets written before unflushed jsets (jset version 1, a
// 64-byte header) open after the upgrade: the images are the inspect fixtures
// of that release, one closed cleanly and one left in use. Every volume reads,
// Check passes, and new writes go on in version 2 and survive a reopen.
func TestOpenJsetV1(t *testing.T) {
	for _, name := range []string{"jset-v1", "jset-v1-inuse"} {
		t.Run(name, func(t *testing.T) {
			img := loadImage(t, "testdata/compat/"+name+".img.gz")
			cfg := fixtureConfig()
			cfg.OpenBacking = func(_ BackingKind, _ string, size int64, _ bool) (device.Device, error) {
				return device.NewMem(size), nil
			}
			c, err := Open(img.Reopen(), cfg)
			if err != nil {
				t.Fatalf("open a version 1 cache set: %v", err)
			}
			if err := c.Check(); err != nil {
				t.Fatalf("Check: %v", err)
			}
			vols := c.Volumes()
			if len(vols) == 0 {
				t.Fatal("no volumes")
			}
			for _, info := range vols {
				v, err := c.Volume(info.Name)
				if err != nil {
					t.Fatal(err)
				}
				if err := v.ReadAt(make([]byte, info.Size), 0); err != nil {
					t.Fatalf("read volume %q: %v", info.Name, err)
				}
			}
			v, err := c.Volume(vols[0].Name)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.WriteAt(make([]byte, 4096), 0, true); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			c2, err := Open(img.Reopen(), cfg)
			if err != nil {
				t.Fatalf("reopen after writing version 2 jsets: %v", err)
			}
			defer c2.Close()
			if err := c2.Check(); err != nil {
				t.Fatalf("Check after the reopen: %v", err)
			}
		})
	}
}
