package engine

import (
	"bytes"
	"testing"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// A crash of the process (kill -9 of the plugin) is not a power loss: what was
// written to the devices stays. Every acknowledged write, flushed or not, must
// then be found by the next process (the kernel keeps a mounted NBD device and
// the filesystem on it across a plugin restart).
func TestProcessCrashKeepsAcknowledgedWrites(t *testing.T) {
	for _, tc := range []struct {
		mode    CacheMode
		backing BackingKind
	}{{Writethrough, BackingFile}, {Writeback, BackingFile}, {Writearound, BackingFile}, {Writeback, BackingNone}} {
		t.Run(tc.mode.String()+"-"+tc.backing.String(), func(t *testing.T) {
			cfg := volTestConfig()
			cfg.JournalDelay = -1 // nothing but the data path writes jsets
			mem := device.NewMem(16 << 20)
			if err := Format(mem, cfg); err != nil {
				t.Fatal(err)
			}
			back := device.NewMem(1 << 20)
			dead := device.NewFault(mem.Reopen(), nil)
			deadBack := device.NewFault(back.Reopen(), nil)
			open := func(cache, b device.Device) *CacheSet {
				cfg := cfg
				cfg.BackingDir = "/b"
				cfg.OpenBacking = func(BackingKind, string, int64, bool) (device.Device, error) { return b, nil }
				c, err := Open(cache, cfg)
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			c := open(dead, deadBack)
			v, err := c.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 20, Mode: tc.mode, Backing: tc.backing, SeqCutoff: NoSeqCutoff})
			if err != nil {
				t.Fatal(err)
			}
			a, b := bytes.Repeat([]byte{'A'}, 4096), bytes.Repeat([]byte{'B'}, 4096)
			if err := v.WriteAt(a, 0, false); err != nil {
				t.Fatal(err)
			}
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			for _, off := range []int64{0, 512 << 10} {
				if err := v.WriteAt(b, off, false); err != nil {
					t.Fatal(err)
				}
			}
			// The process dies: nothing it does from now on reaches a device.
			fail := device.Injector(dieNow) // Sync fails too
			dead.SetInjector(fail)
			deadBack.SetInjector(fail)
			c2 := open(mem.Reopen(), back.Reopen())
			defer c2.Close()
			v2, err := c2.Volume("v")
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 4096)
			for _, off := range []int64{0, 512 << 10} {
				if err := v2.ReadAt(got, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, b) {
					t.Fatalf("offset %d reads %q...: an acknowledged write was lost with the process", off, got[:8])
				}
			}
			c.Close() // its goroutines end; its IO fails
		})
	}
}
