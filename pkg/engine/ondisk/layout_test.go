package ondisk

import (
	"errors"
	"strings"
	"testing"
)

func TestComputeLayout(t *testing.T) {
	l := testLayout(t)
	if err := l.Check(); err != nil {
		t.Fatal(err)
	}
	want := Layout{
		DeviceSize:    1 << 30,
		BucketSize:    1 << 20,
		MaxVolumes:    64,
		VolTableSize:  VolTableAreaSize(64),
		GensOffset:    VolTableOffset + 2*VolTableAreaSize(64),
		GensSize:      BlockSize,
		GensPages:     1,
		JournalOffset: VolTableOffset + 2*VolTableAreaSize(64) + 2*BlockSize,
		JournalSize:   8 << 20,
		BucketsOffset: 9 << 20,
		NBuckets:      1024 - 9,
	}
	if l != want {
		t.Fatalf("layout\n got %+v\nwant %+v", l, want)
	}
	if got := l.BucketOffset(3); got != 12<<20 {
		t.Errorf("BucketOffset(3) = %d", got)
	}
	if got := l.GensPageOffset(CopyB, 0); got != l.GensOffset+BlockSize {
		t.Errorf("GensPageOffset(B, 0) = %d", got)
	}
	if got := l.VolTableCopyOffset(CopyB); got != VolTableOffset+l.VolTableSize {
		t.Errorf("VolTableCopyOffset(B) = %d", got)
	}
}

// TestComputeLayoutSweep checks the invariants of many layouts, including the
// ones where the upper bound of the gens table is off by a page.
func TestComputeLayoutSweep(t *testing.T) {
	for _, bs := range []uint32{MinBucketSize, 1 << 20, MaxBucketSize} {
		for _, dev := range []int64{1 << 24, 1<<28 + 12345, 1 << 34, 1<<40 + 1, 1 << 50} {
			for _, nv := range []int{1, 100, MaxVolumes} {
				for _, js := range []int64{MinJournalSize, 1 << 26} {
					l, err := ComputeLayout(dev, bs, js, nv)
					if errors.Is(err, ErrDeviceTooSmall) || (err != nil && strings.Contains(err.Error(), "2^32")) {
						continue
					}
					if err != nil {
						t.Fatalf("ComputeLayout(%d, %d, %d, %d): %v", dev, bs, js, nv, err)
					}
					if err := l.Check(); err != nil {
						t.Fatalf("ComputeLayout(%d, %d, %d, %d): %v", dev, bs, js, nv, err)
					}
					if l.GensPagesUsed() > l.GensPages || l.GensPages > l.GensPagesUsed()+1 {
						t.Fatalf("gens pages %d for %d used", l.GensPages, l.GensPagesUsed())
					}
					if end := l.BucketOffset(l.NBuckets); end > dev || dev-end >= int64(bs) {
						t.Fatalf("buckets end at %d on a %d-byte device", end, dev)
					}
				}
			}
		}
	}
}

func TestComputeLayoutErrors(t *testing.T) {
	tests := []struct {
		name        string
		dev         int64
		bucket      uint32
		journal     int64
		vols        int
		err         error
		errContains string
	}{
		{"bucket not power of two", 1 << 30, 3 << 16, 1 << 20, 8, ErrInvalidLayout, "bucket size"},
		{"bucket too small", 1 << 30, 32 << 10, 1 << 20, 8, ErrInvalidLayout, "bucket size"},
		{"bucket too large", 1 << 30, 16 << 20, 1 << 20, 8, ErrInvalidLayout, "bucket size"},
		{"journal unaligned", 1 << 30, 1 << 20, 1<<20 + 512, 8, ErrInvalidLayout, "journal size"},
		{"journal too small", 1 << 30, 1 << 20, BlockSize, 8, ErrInvalidLayout, "journal size"},
		{"no volumes", 1 << 30, 1 << 20, 1 << 20, 0, ErrInvalidLayout, "max volumes"},
		{"too many volumes", 1 << 30, 1 << 20, 1 << 20, MaxVolumes + 1, ErrInvalidLayout, "max volumes"},
		{"negative device", -1, 1 << 20, 1 << 20, 8, ErrInvalidLayout, "device size"},
		{"huge device", 1 << 62, 1 << 20, 1 << 20, 8, ErrInvalidLayout, "device size"},
		{"too many buckets", 1 << 50, MinBucketSize, 1 << 20, 8, ErrInvalidLayout, "more than 2^32"},
		{"journal fills device", 1 << 20, 1 << 16, 1 << 20, 8, ErrDeviceTooSmall, "buckets"},
		{"device too small", 8 << 20, 1 << 20, 1 << 20, 8, ErrDeviceTooSmall, "need 16"},
		{"journal larger than device", 1 << 20, 1 << 16, 2 << 20, 8, ErrDeviceTooSmall, "journal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ComputeLayout(tt.dev, tt.bucket, tt.journal, tt.vols)
			if !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.errContains) {
				t.Fatalf("err = %v, want %v naming %q", err, tt.err, tt.errContains)
			}
		})
	}
}

func TestLayoutCheck(t *testing.T) {
	for name, mutate := range map[string]func(*Layout){
		"overlap":       func(l *Layout) { l.JournalOffset -= BlockSize },
		"past end":      func(l *Layout) { l.NBuckets++ },
		"unaligned":     func(l *Layout) { l.GensOffset += 512 },
		"bucket align":  func(l *Layout) { l.BucketsOffset += BlockSize; l.NBuckets-- },
		"gens too few":  func(l *Layout) { l.GensPages, l.GensSize = 0, 0 },
		"gens capacity": func(l *Layout) { l.NBuckets = GensPerPage + 1; l.DeviceSize = 1 << 40 },
	} {
		l := testLayout(t)
		mutate(&l)
		if err := l.Check(); err == nil {
			t.Errorf("%s: Check passed", name)
		}
	}
}
