package ondisk

import (
	"errors"
	"strings"
	"testing"
)

const testSetMagic uint64 = 0x0123456789abcdef

// wantCorrupt fails unless err is a *CorruptionError whose message contains substr.
func wantCorrupt(t testing.TB, err error, substr string) {
	t.Helper()
	var ce *CorruptionError
	switch {
	case err == nil:
		t.Fatalf("no error, want corruption %q", substr)
	case !IsCorruption(err) || !errors.As(err, &ce):
		t.Fatalf("error %v is not a corruption error", err)
	case !strings.Contains(err.Error(), substr):
		t.Fatalf("error %q does not name %q", err, substr)
	}
}

// testLayout is a 1 GiB device with 1 MiB buckets, an 8 MiB journal, 64 volumes.
func testLayout(t testing.TB) Layout {
	t.Helper()
	l, err := ComputeLayout(1<<30, 1<<20, 8<<20, 64)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// flip returns a copy of b with bit i flipped.
func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i/8] ^= 1 << (i % 8)
	return c
}
