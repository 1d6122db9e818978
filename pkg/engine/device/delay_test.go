package device

import (
	"sync"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var slept []time.Duration
	d := NewDelay(NewMem(1<<20), DelayOptions{
		Read: time.Millisecond, Write: 2 * time.Millisecond, Sync: 3 * time.Millisecond,
		Sleep: func(d time.Duration) { mu.Lock(); slept = append(slept, d); mu.Unlock() },
	})
	buf := make([]byte, 10)
	d.WriteAt(buf, 0)
	d.ReadAt(buf, 0)
	d.Sync()
	d.Discard(0, 10)
	want := []time.Duration{2 * time.Millisecond, time.Millisecond, 3 * time.Millisecond, 2 * time.Millisecond}
	if len(slept) != len(want) {
		t.Fatalf("slept %v, want %v", slept, want)
	}
	for i := range want {
		if slept[i] != want[i] {
			t.Fatalf("slept %v, want %v", slept, want)
		}
	}
}

func TestDelayDefaultSleep(t *testing.T) {
	t.Parallel()
	for _, lat := range []time.Duration{20 * time.Microsecond, 2 * time.Millisecond} {
		d := NewDelay(NewMem(4096), DelayOptions{Read: lat})
		start := time.Now()
		d.ReadAt(make([]byte, 1), 0)
		if el := time.Since(start); el < lat {
			t.Fatalf("read with latency %v took %v", lat, el)
		}
	}
}
