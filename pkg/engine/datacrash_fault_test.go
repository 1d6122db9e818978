//go:build invariants

package engine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// TestWhiteoutOverDirtyData is the unsynced-whiteout bug made deterministic: a
// flushed dirty write, then a zeroing (or a write around the cache) over it,
// then a power loss in which the cache device kept the journal entry of the
// whiteout and the backing store lost the unsynced new content. The sector must
// read the flushed write or the new content, never what the backing store held
// before; with the fix switched off, it does.
func TestWhiteoutOverDirtyData(t *testing.T) {
	for _, fault := range []bool{false, true} {
		for _, op := range []string{"zero", "trim", "writearound", "writethrough"} {
			t.Run(fmt.Sprintf("%s/fault=%v", op, fault), func(t *testing.T) {
				got, back, allowed := whiteoutOverDirty(t, op, fault)
				in := func(p []byte) bool {
					for _, a := range allowed {
						if bytes.Equal(p, a) {
							return true
						}
					}
					return false
				}
				// The volume reads got now. Once the cache drops its clean copy
				// (or there is none, after a whiteout), it reads back.
				ok := in(got) && in(back)
				switch {
				case !fault && !ok:
					t.Fatalf("sector 0 reads %s, the backing store holds %s: stale content uncovered", describe(got), describe(back))
				case fault && ok:
					t.Fatalf("with the backing sync switched off the stale content was not uncovered (read %s, backing %s): the test does not see the bug", describe(got), describe(back))
				}
			})
		}
	}
}

func whiteoutOverDirty(t *testing.T, op string, fault bool) (got, back []byte, allowed [][]byte) {
	cfg := volTestConfig()
	cfg.JournalDelay = -1
	cfg.knobs = testingKnobs{NoWriteback: true, SkipHiddenDirtySync: fault}
	mem := device.NewMem(16 << 20)
	if err := Format(mem, cfg); err != nil {
		t.Fatal(err)
	}
	const size = 1 << 20
	stale, a, b := bytes.Repeat([]byte{'X'}, 4096), bytes.Repeat([]byte{'A'}, 4096), bytes.Repeat([]byte{'B'}, 4096)
	backImg := device.NewMem(size)
	if _, err := backImg.WriteAt(stale, 0); err != nil {
		t.Fatal(err)
	}
	cacheDev := device.NewFault(mem.Reopen(), nil)
	backDev := device.NewCrash(backImg.Reopen())
	open := func(cache, back device.Device, cfg Config) *CacheSet {
		cfg.BackingDir = "/b"
		cfg.OpenBacking = func(BackingKind, string, int64, bool) (device.Device, error) { return back, nil }
		c, err := Open(cache, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := open(cacheDev, backDev, cfg)
	v, err := c.CreateVolume(VolumeSpec{Name: "v", Size: size, Mode: Writeback, Backing: BackingFile, SeqCutoff: NoSeqCutoff})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(a, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	allowed = [][]byte{a}
	switch op {
	case "zero":
		err = v.WriteZeroes(0, 4096, false)
		allowed = append(allowed, make([]byte, 4096))
	case "trim":
		err = v.Trim(0, 4096)
		allowed = append(allowed, make([]byte, 4096))
	case "writearound", "writethrough":
		// A write in the new mode while SetCacheMode drains the dirty data
		// (which the knob keeps from happening, so the mode is set directly).
		m := Writearound
		if op == "writethrough" {
			m = Writethrough
		}
		v.mode.Store(uint32(m))
		err = v.WriteAt(b, 0, false)
		allowed = append(allowed, b)
	}
	if err != nil {
		t.Fatal(err)
	}
	// Power loss: the cache device happens to keep everything written to it,
	// the backing store keeps only what was synced.
	cacheDev.SetInjector(device.FailRange(device.OpAny, 0, 1<<62, syscall.EIO))
	if err := backDev.Crash(rand.New(rand.NewPCG(1, 2)), device.DropAll); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c2 := open(mem.Reopen(), backDev.Image(), afterPowerLoss(cfg))
	defer c2.Close()
	if err := c2.Check(); err != nil {
		t.Fatalf("Check after the crash: %v", err)
	}
	v2, err := c2.Volume("v")
	if err != nil {
		t.Fatal(err)
	}
	got = make([]byte, 4096)
	if err := v2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	back = make([]byte, 4096)
	if _, err := backDev.Image().ReadAt(back, 0); err != nil {
		t.Fatal(err)
	}
	return got, back, allowed
}
