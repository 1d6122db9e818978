package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// TestDataCrash crashes the cache device and the backing store together (power
// loss) at random points of a random workload, in every cache mode, reopens, and
// checks the durability contract sector by sector: a sector whose last write was
// made durable (a completed Flush, or a FUA write) reads back exactly that; any
// other sector reads back its durable content or one of the writes issued since
// (old or new, never anything else: not another sector's data, not garbage).
func TestDataCrash(t *testing.T) {
	points := 220 * stressScale()
	if s := os.Getenv("CRASHPOINTS"); s != "" {
		points, _ = strconv.Atoi(s)
	} // per configuration; 5 configurations
	for _, tc := range dataCrashConfigs {
		t.Run(tc.mode.String()+"-"+tc.backing.String(), func(t *testing.T) {
			t.Parallel()
			var crashed, ios int
			for p := 0; p < points; p++ {
				seed := uint64(p)*7919 + uint64(tc.mode)*31 + uint64(tc.backing)
				n, hit := runDataCrash(t, tc.mode, tc.backing, seed)
				ios += n
				if hit {
					crashed++
				}
			}
			t.Logf("%d runs, %d crashed inside the workload, %d device IOs", points, crashed, ios)
			if crashed < points/2 {
				t.Fatalf("only %d of %d crash points fell inside the workload", crashed, points)
			}
		})
	}
}

// dataCrashConfigs are the cache modes and backing kinds the crash tests run.
var dataCrashConfigs = []struct {
	mode    CacheMode
	backing BackingKind
}{
	{Writethrough, BackingFile}, {Writeback, BackingFile}, {Writearound, BackingFile},
	{NoCache, BackingFile}, {Writeback, BackingNone},
}

// TestDataProcessCrash is TestDataCrash for a crash of the process (kill -9 of
// the plugin, which the kernel's mounted NBD device outlives): on the same boot
// every acknowledged write is found, flushed or not.
func TestDataProcessCrash(t *testing.T) {
	points := 100 * stressScale()
	for _, tc := range dataCrashConfigs {
		t.Run(tc.mode.String()+"-"+tc.backing.String(), func(t *testing.T) {
			t.Parallel()
			var crashed int
			for p := 0; p < points; p++ {
				seed := uint64(p)*7919 + uint64(tc.mode)*31 + uint64(tc.backing) + 5
				_, hit, err := dataCrashRun(t, tc.mode, tc.backing, seed, true, testingKnobs{})
				if err != nil {
					t.Fatal(err)
				}
				if hit {
					crashed++
				}
			}
			t.Logf("%d runs, %d crashed inside the workload", points, crashed)
			if crashed < points/2 {
				t.Fatalf("only %d of %d crash points fell inside the workload", crashed, points)
			}
		})
	}
}

// sectorModel holds, per sector, the content that is durable and the contents
// written since then.
type sectorModel struct {
	durable [][]byte
	since   [][][]byte
}

func newSectorModel(sectors int) *sectorModel {
	m := &sectorModel{durable: make([][]byte, sectors), since: make([][][]byte, sectors)}
	zero := make([]byte, 512)
	for i := range m.durable {
		m.durable[i] = zero
	}
	return m
}

// issue records that data (len a multiple of 512) may be written at sector s.
func (m *sectorModel) issue(s int, data []byte) {
	for i := 0; i < len(data)/512; i++ {
		m.since[s+i] = append(m.since[s+i], data[i*512:(i+1)*512])
	}
}

// durableAt makes data at sector s the durable content (a FUA write returned).
func (m *sectorModel) durableAt(s int, data []byte) {
	for i := 0; i < len(data)/512; i++ {
		m.durable[s+i] = data[i*512 : (i+1)*512]
		m.since[s+i] = nil
	}
}

// flushed: every write issued so far is durable, the last one wins.
func (m *sectorModel) flushed() {
	for i := range m.durable {
		if n := len(m.since[i]); n > 0 {
			m.durable[i] = m.since[i][n-1]
			m.since[i] = nil
		}
	}
}

// violation returns the first sector of got (the whole volume) that holds
// neither its durable content nor a write issued since.
func (m *sectorModel) violation(got []byte) (int, bool) {
	for i := range m.durable {
		if !m.allowed(i, got[i*512:(i+1)*512]) {
			return i, true
		}
	}
	return 0, false
}

// opMix sets the odds of randomOp, in percent: writes below write, trims
// below trim, zeroings below zero, flushes below flush, reads the rest; 1 in
// writeFUA writes and 1 in zeroFUA zeroings are FUA.
type opMix struct {
	write, trim, zero, flush int
	writeFUA, zeroFUA        int
}

// dataCrashMix is TestDataCrash's workload.
var dataCrashMix = opMix{write: 50, trim: 60, zero: 68, flush: 80, writeFUA: 5, zeroFUA: 2}

// randomOp runs one random IO of up to 16 sectors on v and records it in m:
// issued, and durable once a FUA write or a flush returned.
func (m *sectorModel) randomOp(rng *rand.Rand, v *Volume, mix opMix) error {
	s := rng.IntN(len(m.durable) - 16)
	n := 1 + rng.IntN(16)
	var err error
	switch r := rng.IntN(100); {
	case r < mix.write:
		data := randBytes(rng, n*512)
		fua := rng.IntN(mix.writeFUA) == 0
		m.issue(s, data)
		if err = v.WriteAt(data, int64(s)*512, fua); err == nil && fua {
			m.durableAt(s, data)
		}
	case r < mix.trim:
		z := make([]byte, n*512)
		m.issue(s, z)
		err = v.Trim(int64(s)*512, int64(n)*512)
	case r < mix.zero:
		z := make([]byte, n*512)
		fua := rng.IntN(mix.zeroFUA) == 0
		m.issue(s, z)
		if err = v.WriteZeroes(int64(s)*512, int64(n)*512, fua); err == nil && fua {
			m.durableAt(s, z)
		}
	case r < mix.flush:
		if err = v.Flush(); err == nil {
			m.flushed()
		}
	default:
		err = v.ReadAt(make([]byte, n*512), int64(s)*512) // fills write to the cache
	}
	return err
}

func (m *sectorModel) allowed(i int, got []byte) bool {
	if bytes.Equal(got, m.durable[i]) {
		return true
	}
	for _, c := range m.since[i] {
		if bytes.Equal(got, c) {
			return true
		}
	}
	return false
}

// runDataCrash runs one workload with a crash armed at a random IO and checks the
// result. It returns the IOs done and whether the crash hit inside the workload.
func runDataCrash(t *testing.T, mode CacheMode, backing BackingKind, seed uint64) (int, bool) {
	t.Helper()
	n, hit, err := dataCrashRun(t, mode, backing, seed, false, testingKnobs{})
	if err != nil {
		t.Fatal(err)
	}
	return n, hit
}

// dataCrashRun is runDataCrash with test knobs; a lost or stale sector is
// returned as an error, anything else that goes wrong fails t.
//
// With process, the crash is one of the process, not a power loss: every IO
// from the k-th on fails, and everything written before stays on the devices
// (the kernel has it). Every acknowledged write must then be found, flushed or
// not, on the same boot.
func dataCrashRun(t *testing.T, mode CacheMode, backing BackingKind, seed uint64, process bool, knobs testingKnobs) (int, bool, error) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 17))
	const volSize = 128 << 10
	const sectors = volSize / 512
	cfg := volTestConfig()
	cfg.BucketSize = 64 << 10
	cfg.JournalSize = 64 << 10
	cfg.JournalDelay = time.Duration(rng.IntN(3)) * time.Millisecond
	cfg.NodeMaxKeys = 8
	cfg.knobs = knobs
	if rng.IntN(2) == 0 {
		cfg.WritebackPercent = -1 // write back at full speed: more interleavings
	}
	cacheImg := device.NewMem(4 << 20)
	if err := Format(cacheImg, cfg); err != nil {
		t.Fatal(err)
	}
	backImg := device.NewMem(volSize)
	cacheDev := device.NewCrash(cacheImg.Reopen())
	backDev := device.NewCrash(backImg.Reopen())
	cacheFault := device.NewFault(cacheImg.Reopen(), nil)
	backFault := device.NewFault(backImg.Reopen(), nil)
	open := func(cache, back device.Device, cfg Config) (*CacheSet, error) {
		cfg.BackingDir = "/b"
		cfg.OpenBacking = func(BackingKind, string, int64, bool) (device.Device, error) { return back, nil }
		return Open(cache, cfg)
	}
	var c *CacheSet
	var err error
	if process {
		c, err = open(cacheFault, backFault, cfg)
	} else {
		c, err = open(cacheDev, backDev, cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.CreateVolume(VolumeSpec{Name: "crash", Size: volSize, Mode: mode, Backing: backing, SeqCutoff: NoSeqCutoff})
	if err != nil {
		t.Fatal(err)
	}
	// Arm: every IO from the k-th on, on either device, is the power loss.
	var count atomic.Int64
	k := int64(1 + rng.IntN(60))
	crashMode := device.CrashMode(rng.IntN(3))
	when := func(uint64, device.Op, int64, int64) bool { return count.Add(1) >= k }
	if process {
		die := dieAt(&count, k)
		cacheFault.SetInjector(die)
		backFault.SetInjector(die)
	} else {
		cacheDev.CrashWhen(when, rand.New(rand.NewPCG(seed, 1)), crashMode)
		backDev.CrashWhen(when, rand.New(rand.NewPCG(seed, 2)), crashMode)
	}

	m := newSectorModel(sectors)
	for op := 0; op < 60; op++ {
		if err := m.randomOp(rng, v, dataCrashMix); err != nil {
			break
		}
		if process {
			m.flushed() // acknowledged: it must survive the process
		}
	}
	hit := count.Load() >= k
	// Power loss now, whichever device did not see it yet.
	c.Close() // fails on the crashed devices; releases goroutines
	for _, d := range []*device.Crash{cacheDev, backDev} {
		if !process && !d.Crashed() {
			if err := d.Crash(rand.New(rand.NewPCG(seed, 3)), crashMode); err != nil && !errors.Is(err, device.ErrCrashed) {
				t.Fatal(err)
			}
		}
	}
	ios := int(count.Load())

	var c2 *CacheSet
	if process {
		c2, err = open(cacheImg.Reopen(), backImg.Reopen(), cfg)
	} else {
		c2, err = open(cacheDev.Image(), backDev.Image(), afterPowerLoss(cfg))
	}
	if err != nil {
		t.Fatalf("seed %d: reopen after a crash at IO %d (%s): %v", seed, k, crashMode, err)
	}
	defer c2.Close()
	if err := c2.Check(); err != nil {
		t.Fatalf("seed %d: Check after the crash: %v", seed, err)
	}
	v2, err := c2.Volume("crash")
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	got := make([]byte, volSize)
	if err := v2.ReadAt(got, 0); err != nil {
		t.Fatalf("seed %d: read after the crash: %v", seed, err)
	}
	if i, bad := m.violation(got); bad {
		how := crashMode.String()
		if process {
			how = "process crash"
		}
		return ios, hit, fmt.Errorf("seed %d (crash at IO %d, %s, mode %s): sector %d holds neither its durable content nor a write issued since: %s",
			seed, k, how, mode, i, describe(got[i*512:(i+1)*512]))
	}
	return ios, hit, nil
}

func describe(b []byte) string {
	if bytes.Equal(b, make([]byte, len(b))) {
		return "zeroes"
	}
	return fmt.Sprintf("%x...", b[:8])
}
