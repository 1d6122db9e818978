package engine

import (
	"testing"
	"time"
)

// The PI controller: above the target the rate grows with the excess and, with
// the integral term, with how long the excess lasts; at or below the target it
// falls back to the trickle.
func TestWritebackRateController(t *testing.T) {
	e := newVolEnv(t, 16<<20, volTestConfig())
	// A cache-only volume has no writeback goroutine: the test drives the
	// controller alone.
	v, err := e.c.CreateVolume(VolumeSpec{Name: "pi", Size: 8 << 20, Backing: BackingNone})
	if err != nil {
		t.Fatal(err)
	}
	wb := v.wb
	target := float64(e.c.layout.NBuckets) * float64(e.c.sb.BucketSize) * 0.10
	step := func(dirtyBytes float64) float64 {
		v.dirty.Store(int64(dirtyBytes / sectorSize))
		wb.lastPI = time.Now().Add(-time.Second)
		wb.updateRate()
		return wb.rate()
	}
	if r := step(target / 2); r != writebackMinRate {
		t.Fatalf("below the target: rate %.0f, want the minimum %d", r, writebackMinRate)
	}
	r1 := step(2 * target)
	if r1 <= writebackMinRate {
		t.Fatalf("above the target: rate %.0f did not rise", r1)
	}
	r2 := step(2 * target)
	r3 := step(2 * target)
	if !(r3 > r2 && r2 > r1) {
		t.Fatalf("a lasting excess must keep raising the rate (integral term): %.0f, %.0f, %.0f", r1, r2, r3)
	}
	if r := step(4 * target); r <= r3 {
		t.Fatalf("a larger excess must give a larger rate: %.0f after %.0f", r, r3)
	}
	for range 50 {
		step(0)
	}
	if r := step(0); r != writebackMinRate {
		t.Fatalf("back at zero dirty data: rate %.0f, want the minimum", r)
	}
	t.Logf("target %.0f bytes; rates at 2x target: %.0f %.0f %.0f bytes/s", target, r1, r2, r3)
}
