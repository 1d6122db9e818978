//go:build invariants

package engine

import (
	"testing"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// TestReplaceKeyOverManyKeys: a compare-and-swap insert over a range holding
// more keys than a node has room for after a split must still go in (in parts),
// not fail with a rewrite that never makes room.
func TestReplaceKeyOverManyKeys(t *testing.T) {
	cfg := testConfig() // NodeMaxKeys 16
	c, _ := newTestSet(t, 64<<20, cfg)
	defer c.Close()
	m := model{}
	// 40 one-sector keys with one-sector gaps: [0,1) [2,3) ... [78,79).
	for i := uint64(0); i < 40; i++ {
		k := bkey.Key{Vol: 1, Start: 2 * i, Len: 1, Flags: bkey.FlagDirty, Ptr: bkey.Ptr{Bucket: 100, Offset: uint32(2 * i)}}
		if err := c.InsertKeys([]bkey.Key{k}); err != nil {
			t.Fatal(err)
		}
		m.insert(k)
	}
	// A fill over all of it takes the gaps.
	fill := bkey.Key{Vol: 1, Start: 0, Len: 80, Ptr: bkey.Ptr{Bucket: 101}}
	n, err := c.ReplaceKey(fill, nil)
	if err != nil {
		t.Fatalf("fill over 40 keys: %v", err)
	}
	if n != 40 {
		t.Fatalf("fill inserted %d sectors, want the 40 gaps", n)
	}
	for i := uint64(0); i < 40; i++ {
		m.insert(bkey.Key{Vol: 1, Start: 2*i + 1, Len: 1, Ptr: bkey.Ptr{Bucket: 101, Offset: uint32(2*i + 1)}})
	}
	// Writeback completion of one key, with a range as wide as the fill.
	e := bkey.Key{Vol: 1, Start: 10, Len: 1, Flags: bkey.FlagDirty, Ptr: bkey.Ptr{Bucket: 100, Offset: 10}}
	clean := bkey.Key{Vol: 1, Start: 0, Len: 80, Ptr: bkey.Ptr{Bucket: 100, Offset: 0}}
	if n, err := c.ReplaceKey(clean, &e); err != nil || n != 1 {
		t.Fatalf("writeback completion: %d sectors, %v; want 1", n, err)
	}
	m.insert(bkey.Key{Vol: 1, Start: 10, Len: 1, Ptr: bkey.Ptr{Bucket: 100, Offset: 10}})
	mustCheck(t, c)
	compareModel(t, c, m, 1, 100)
}
