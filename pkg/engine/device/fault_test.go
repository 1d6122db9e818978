package device

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
)

func TestInjectors(t *testing.T) {
	t.Parallel()
	errX := errors.New("x")
	type call struct {
		op     Op
		off, n int64
	}
	reads := func(offs ...int64) []call {
		var cs []call
		for _, off := range offs {
			cs = append(cs, call{OpRead, off, 10})
		}
		return cs
	}
	tests := []struct {
		name  string
		inj   Injector
		calls []call
		fail  []bool
	}{
		{"FailRange", FailRange(OpRead, 100, 50, nil),
			append(reads(80, 91, 149, 150), call{OpWrite, 100, 1}, call{OpSync, 0, 0}),
			[]bool{false, true, true, false, false, false}},
		{"FailRange any", FailRange(OpAny, 100, 50, errX),
			[]call{{OpWrite, 100, 1}, {OpDiscard, 0, 1 << 20}, {OpSync, 0, 0}},
			[]bool{true, true, false}},
		{"FailAfter", FailAfter(OpWrite, 2, nil),
			[]call{{OpWrite, 0, 1}, {OpRead, 0, 1}, {OpWrite, 0, 1}, {OpWrite, 0, 1}, {OpRead, 0, 1}, {OpWrite, 0, 1}},
			[]bool{false, false, false, true, false, true}},
		{"OnIndex", OnIndex(OpSync, 1, nil),
			[]call{{OpSync, 0, 0}, {OpWrite, 0, 1}, {OpSync, 0, 0}, {OpSync, 0, 0}},
			[]bool{false, false, true, false}},
		{"Randomly never", Randomly(OpAny, 0, 1, nil), reads(1, 2, 3), []bool{false, false, false}},
		{"Randomly always", Randomly(OpRead, 1, 1, nil),
			append(reads(1, 2), call{OpWrite, 0, 1}), []bool{true, true, false}},
		{"AnyOf", AnyOf(OnIndex(OpRead, 0, nil), OnIndex(OpRead, 2, nil)), reads(1, 2, 3, 4), []bool{true, false, false, true}}, // the second sees calls 1..3 only
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, c := range tt.calls {
				if err := tt.inj(c.op, c.off, c.n); (err != nil) != tt.fail[i] {
					t.Fatalf("call %d %v [%d,+%d): %v, want failure %v", i, c.op, c.off, c.n, err, tt.fail[i])
				}
			}
		})
	}
}

func TestRandomlyReproducible(t *testing.T) {
	t.Parallel()
	run := func(seed uint64) string {
		inj, s := Randomly(OpAny, 0.3, seed, nil), ""
		for range 64 {
			s += fmt.Sprint(inj(OpRead, 0, 1) != nil)
		}
		return s
	}
	if a, b := run(1), run(1); a != b || a == run(2) {
		t.Fatal("Randomly is not reproducible by seed, or ignores it")
	}
}

func TestFault(t *testing.T) {
	t.Parallel()
	mem := NewMem(1 << 20)
	f := NewFault(mem, AnyOf(FailRange(OpAny, 4096, 4096, nil), OnIndex(OpSync, 0, nil)))
	_, err := f.WriteAt([]byte("abc"), 4096)
	var ie *InjectedError
	if !errors.Is(err, ErrInjected) || !errors.Is(err, syscall.EIO) || !errors.As(err, &ie) || ie.Op != OpWrite || ie.Off != 4096 {
		t.Fatalf("injected write error %v does not match ErrInjected, EIO and the op", err)
	}
	buf := make([]byte, 3)
	if mem.ReadAt(buf, 4096); string(buf) != "\x00\x00\x00" {
		t.Fatal("a failed write reached the device")
	}
	if _, err := f.WriteAt([]byte("abc"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); !errors.Is(err, ErrInjected) {
		t.Fatalf("first Sync: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("second Sync: %v", err)
	}
	if err := f.Discard(0, 8192); !errors.Is(err, ErrInjected) {
		t.Fatalf("Discard over the failing range: %v", err)
	}
	if err := f.Discard(0, 4096); err != nil {
		t.Fatal(err)
	}
	if f.Injected(OpWrite) != 1 || f.Injected(OpSync) != 1 || f.Injected(OpDiscard) != 1 || f.Injected(OpRead) != 0 || f.Injected(OpAny) != 3 {
		t.Fatalf("injected counts: write %d sync %d discard %d read %d any %d",
			f.Injected(OpWrite), f.Injected(OpSync), f.Injected(OpDiscard), f.Injected(OpRead), f.Injected(OpAny))
	}
	f.SetInjector(nil)
	if _, err := f.WriteAt([]byte("abc"), 4096); err != nil {
		t.Fatal(err)
	}
}

// noDiscard hides a device's Discard method.
type noDiscard struct{ Device }

// TestDiscardFallback: wrappers over a device without Discard write zeroes.
func TestDiscardFallback(t *testing.T) {
	t.Parallel()
	mem := NewMem(1 << 20)
	mem.WriteAt([]byte{1, 2, 3, 4}, 10)
	for name, d := range map[string]Discarder{
		"Fault":    NewFault(noDiscard{mem}, nil),
		"Counting": NewCounting(noDiscard{mem}),
		"Delay":    NewDelay(noDiscard{mem}, DelayOptions{}),
	} {
		mem.WriteAt([]byte{1, 2, 3, 4}, 10)
		if err := d.Discard(11, 2); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		buf := make([]byte, 4)
		if mem.ReadAt(buf, 10); string(buf) != "\x01\x00\x00\x04" {
			t.Fatalf("%s: after Discard(11, 2): %v", name, buf)
		}
		if err := d.Discard(1<<20, 1); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("%s: Discard past the end: %v", name, err)
		}
	}
}

func TestOpString(t *testing.T) {
	t.Parallel()
	for op, want := range map[Op]string{OpRead: "read", OpWrite: "write", OpSync: "sync", OpDiscard: "discard", OpAny: "any", 9: "Op(9)"} {
		if op.String() != want {
			t.Errorf("%d.String() = %q, want %q", op, op.String(), want)
		}
	}
}
