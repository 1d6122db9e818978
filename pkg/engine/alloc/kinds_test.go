package alloc

import "testing"

func TestKinds(t *testing.T) {
	a, _ := newTest(t, Config{NBuckets: 64, ReserveBtree: 2})
	fill(t, a)
	d, _, err := a.Alloc(ReserveNone, KindData, false)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := a.Alloc(ReserveBtree, KindBtree, false)
	if err != nil {
		t.Fatal(err)
	}
	kinds := a.Kinds()
	if len(kinds) != 64 {
		t.Fatalf("%d kinds for 64 buckets", len(kinds))
	}
	for i, k := range kinds {
		want := KindFree
		switch uint32(i) {
		case d:
			want = KindData
		case b:
			want = KindBtree
		}
		if k != want {
			t.Errorf("bucket %d: %s, want %s", i, k, want)
		}
	}
	if err := a.Release(b); err != nil {
		t.Fatal(err)
	}
	if err := a.Free(b); err != nil {
		t.Fatal(err)
	}
	if k := a.Kinds()[b]; k != KindFree {
		t.Errorf("freed bucket %d is %s", b, k)
	}
}
