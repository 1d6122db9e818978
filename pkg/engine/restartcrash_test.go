package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// A kill of the process, a restart on the same boot, then a power loss: the
// restarted process must not take the dead process's unflushed writes for
// durable (found in review: Flush after a restart did nothing, and the journal
// reused ring blocks the last flushed jset still needed).

// keepOpen is a Crash device as one process sees it: its Close does not end
// the kernel's device, which the next process opens again.
type keepOpen struct{ *device.Crash }

func (keepOpen) Close() error { return nil }

// dieAt fails every IO from the k-th on (counted in count, which the devices
// of one process share): the process dies there.
func dieAt(count *atomic.Int64, k int64) device.Injector {
	return func(device.Op, int64, int64) error {
		if count.Add(1) >= k {
			return syscall.EIO
		}
		return nil
	}
}

// dieNow fails every IO: the process is dead (Sync included).
func dieNow(device.Op, int64, int64) error { return syscall.EIO }

// TestFlushAfterRestart: a write acknowledged unflushed, kill -9, restart
// on the same boot, Flush (returns nil), power loss: the flushed write must be
// there on the next boot.
func TestFlushAfterRestart(t *testing.T) {
	cfg := volTestConfig()
	cfg.JournalDelay = -1
	mem := device.NewMem(16 << 20)
	if err := Format(mem, cfg); err != nil {
		t.Fatal(err)
	}
	cacheDev := device.NewCrash(mem.Reopen())
	dead := device.NewFault(keepOpen{cacheDev}, nil)
	open := func(d device.Device, cfg Config) *CacheSet {
		c, err := Open(d, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := open(dead, cfg)
	v, err := c.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 20, Mode: Writeback, Backing: BackingNone})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	a := bytes.Repeat([]byte{'A'}, 4096)
	if err := v.WriteAt(a, 0, false); err != nil {
		t.Fatal(err)
	}
	dead.SetInjector(dieNow) // kill -9
	c.Close()

	c2 := open(cacheDev, cfg) // same boot
	v2, err := c2.Volume("v")
	if err != nil {
		t.Fatal(err)
	}
	if err := v2.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := cacheDev.Crash(nil, device.DropAll); err != nil { // power loss
		t.Fatal(err)
	}
	c2.Close()

	c3 := open(cacheDev.Image(), afterPowerLoss(cfg))
	defer c3.Close()
	v3, err := c3.Volume("v")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := v3.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, a) {
		t.Fatalf("a write acknowledged and then flushed (after a restart of the process) is lost with the power: reads %q...", got[:8])
	}
}

// TestBackingFlushAfterRestart: a write around the cache (backing store
// only) is acknowledged, the process is killed, the restarted process's Flush
// returns nil, power loss: the flushed write must survive.
func TestBackingFlushAfterRestart(t *testing.T) {
	cfg := volTestConfig()
	cfg.JournalDelay = -1
	mem := device.NewMem(16 << 20)
	if err := Format(mem, cfg); err != nil {
		t.Fatal(err)
	}
	backImg := device.NewMem(1 << 20)
	back := device.NewCrash(backImg.Reopen())
	deadBack := device.NewFault(keepOpen{back}, nil)
	open := func(b device.Device) *CacheSet {
		cfg := cfg
		cfg.BackingDir = "/b"
		cfg.OpenBacking = func(BackingKind, string, int64, bool) (device.Device, error) { return b, nil }
		c, err := Open(mem.Reopen(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := open(deadBack)
	v, err := c.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 20, Mode: Writearound, Backing: BackingFile, SeqCutoff: NoSeqCutoff})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	a := bytes.Repeat([]byte{'A'}, 4096)
	if err := v.WriteAt(a, 0, false); err != nil {
		t.Fatal(err)
	}
	deadBack.SetInjector(dieNow) // kill -9
	c.Close()

	c2 := open(back)
	defer c2.Close()
	v2, err := c2.Volume("v")
	if err != nil {
		t.Fatal(err)
	}
	if err := v2.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := back.Crash(nil, device.DropAll); err != nil { // power loss
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := back.Image().ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, a) {
		t.Fatalf("a write acknowledged, then flushed by the restarted process, is lost with the power: backing holds %q...", got[:8])
	}
}

// TestRestartThenPowerLoss: kill -9 of the process at a random IO (the
// devices keep every write, synced or not: the kernel has them), restart on the
// same boot, run a little more, then a power loss at a random IO of the second
// process, and reopen on a new boot. Every sector must hold its durable content
// or a write issued since.
func TestRestartThenPowerLoss(t *testing.T) {
	for _, tc := range []struct {
		mode    CacheMode
		backing BackingKind
	}{{Writeback, BackingFile}, {Writethrough, BackingFile}, {Writeback, BackingNone}} {
		t.Run(tc.mode.String()+"-"+tc.backing.String(), func(t *testing.T) {
			t.Parallel()
			bad := 0
			for p := 0; p < 100*stressScale(); p++ {
				if err := restartRun(t, tc.mode, tc.backing, uint64(p)*104729+uint64(tc.mode)*7+uint64(tc.backing)); err != nil {
					t.Error(err)
					if bad++; bad > 3 {
						return
					}
				}
			}
		})
	}
}

func restartRun(t *testing.T, mode CacheMode, backing BackingKind, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 17))
	const volSize = 128 << 10
	const sectors = volSize / 512
	cfg := volTestConfig()
	cfg.BucketSize = 64 << 10
	cfg.JournalSize = 64 << 10
	cfg.JournalDelay = time.Duration(rng.IntN(3)) * time.Millisecond
	cfg.NodeMaxKeys = 8
	if rng.IntN(2) == 0 {
		cfg.WritebackPercent = -1
	}
	cacheImg := device.NewMem(4 << 20)
	if err := Format(cacheImg, cfg); err != nil {
		t.Fatal(err)
	}
	backImg := device.NewMem(volSize)
	cacheDev := device.NewCrash(cacheImg.Reopen())
	backDev := device.NewCrash(backImg.Reopen())
	cacheFault := device.NewFault(keepOpen{cacheDev}, nil)
	backFault := device.NewFault(keepOpen{backDev}, nil)
	open := func(cache, back device.Device, cfg Config) (*CacheSet, error) {
		cfg.BackingDir = "/b"
		cfg.OpenBacking = func(BackingKind, string, int64, bool) (device.Device, error) { return back, nil }
		return Open(cache, cfg)
	}
	c, err := open(cacheFault, backFault, cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.CreateVolume(VolumeSpec{Name: "crash", Size: volSize, Mode: mode, Backing: backing, SeqCutoff: NoSeqCutoff})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	m := newSectorModel(sectors)
	// No zeroings (zero == trim), fewer flushes than TestDataCrash: more
	// unflushed writes for the kill and the power loss to find.
	mix := opMix{write: 60, trim: 68, zero: 68, flush: 72, writeFUA: 8}
	workload := func(v *Volume, ops int) {
		for op := 0; op < ops; op++ {
			if err := m.randomOp(rng, v, mix); err != nil {
				return
			}
		}
	}
	// Process 1 dies at IO k1.
	var count atomic.Int64
	k1 := int64(1 + rng.IntN(80))
	die := dieAt(&count, k1)
	cacheFault.SetInjector(die)
	backFault.SetInjector(die)
	workload(v, 60)
	c.Close()

	// Process 2, same boot, same devices (their unsynced writes still volatile).
	c2, err := open(cacheDev, backDev, cfg)
	if err != nil {
		t.Fatalf("seed %d: restart: %v", seed, err)
	}
	v2, err := c2.Volume("crash")
	if err != nil {
		t.Fatal(err)
	}
	// What the restarted process sees is the latest content of each sector: a
	// Flush now makes it durable.
	seen := make([]byte, volSize)
	if err := v2.ReadAt(seen, 0); err != nil {
		t.Fatalf("seed %d: read after restart: %v", seed, err)
	}
	for i := range sectors {
		x := seen[i*512 : (i+1)*512]
		if !m.allowed(i, x) {
			t.Fatalf("seed %d: after the kill, sector %d: %s", seed, i, describe(x))
		}
		m.since[i] = append(m.since[i], x)
	}
	var count2 atomic.Int64
	k2 := int64(1 + rng.IntN(40))
	crashMode := device.CrashMode(1 + rng.IntN(2))
	when := func(uint64, device.Op, int64, int64) bool { return count2.Add(1) >= k2 }
	cacheDev.CrashWhen(when, rand.New(rand.NewPCG(seed, 1)), crashMode)
	backDev.CrashWhen(when, rand.New(rand.NewPCG(seed, 2)), crashMode)
	workload(v2, 20)
	c2.Close()
	for _, d := range []*device.Crash{cacheDev, backDev} {
		if !d.Crashed() {
			if err := d.Crash(rand.New(rand.NewPCG(seed, 3)), crashMode); err != nil && !errors.Is(err, device.ErrCrashed) {
				t.Fatal(err)
			}
		}
	}
	c3, err := open(cacheDev.Image(), backDev.Image(), afterPowerLoss(cfg))
	if err != nil {
		return fmt.Errorf("seed %d (kill at IO %d, power loss at IO %d of the restarted process, %s): reopen: %v", seed, k1, k2, crashMode, err)
	}
	defer func() {
		done := make(chan struct{})
		go func() { c3.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			seq, pins, ok := c3.jnl.OldestPinned()
			used, total := c3.jnl.Fill()
			t.Fatalf("seed %d: Close of the reopened set hangs: open seq %d durable %d last_seq %d oldest pinned %d (%d pins, %v) fill %d/%d check %v",
				seed, c3.jnl.Seq(), c3.jnl.DurableSeq(), c3.jnl.LastSeq(), seq, pins, ok, used, total, c3.jnl.Check())
		}
	}()
	if err := c3.Check(); err != nil {
		return fmt.Errorf("seed %d: Check: %v", seed, err)
	}
	v3, err := c3.Volume("crash")
	if err != nil {
		return fmt.Errorf("seed %d: %v", seed, err)
	}
	got := make([]byte, volSize)
	if err := v3.ReadAt(got, 0); err != nil {
		return fmt.Errorf("seed %d: read: %v", seed, err)
	}
	if i, bad := m.violation(got); bad {
		return fmt.Errorf("seed %d (kill at IO %d, power loss at IO %d, %s, mode %s): sector %d holds neither its durable content nor a write issued since: %s",
			seed, k1, k2, crashMode, mode, i, describe(got[i*512:(i+1)*512]))
	}
	return nil
}
