package engine

import (
	"fmt"
	"sync"

	"github.com/csi-cache/csi-cache/pkg/engine/alloc"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// genStore persists bucket generations in the double-buffered gens table (see
// ondisk/gens.go): an updated page is written to the copy that does not hold its
// newest valid version, with a higher sequence number, so a torn page write leaves
// the previous version readable. It implements alloc.GenStore.
type genStore struct {
	dev      device.Device
	layout   ondisk.Layout
	setMagic uint64

	mu   sync.Mutex // guards the fields below; held across the page writes (one writer: the allocator goroutine)
	gens []uint32
	seq  []uint64      // per page: seq of the newest valid version
	cur  []ondisk.Copy // per page: the copy holding it
}

// loadGens reads the gens table. A page whose copies are both bad is a
// corruption error.
func loadGens(dev device.Device, l ondisk.Layout, setMagic uint64) (*genStore, error) {
	gs := &genStore{dev: dev, layout: l, setMagic: setMagic, gens: make([]uint32, l.NBuckets)}
	pages := l.GensPagesUsed()
	gs.seq = make([]uint64, pages)
	gs.cur = make([]ondisk.Copy, pages)
	a, b := make([]byte, ondisk.BlockSize), make([]byte, ondisk.BlockSize)
	for p := uint32(0); p < pages; p++ {
		if _, err := dev.ReadAt(a, l.GensPageOffset(ondisk.CopyA, p)); err != nil {
			return nil, fmt.Errorf("engine: read gens page %d: %w", p, err)
		}
		if _, err := dev.ReadAt(b, l.GensPageOffset(ondisk.CopyB, p)); err != nil {
			return nil, fmt.Errorf("engine: read gens page %d: %w", p, err)
		}
		page, picked, err := ondisk.PickGensPage(a, b, &l, p, setMagic)
		if err != nil {
			return nil, err
		}
		copy(gs.gens[page.First:], page.Gens)
		gs.seq[p], gs.cur[p] = page.Seq, picked.Copy
	}
	return gs, nil
}

// formatGens writes generation 0 for every bucket into copy A.
func formatGens(dev device.Device, l ondisk.Layout, setMagic uint64) error {
	gs := &genStore{dev: dev, layout: l, setMagic: setMagic, gens: make([]uint32, l.NBuckets)}
	pages := l.GensPagesUsed()
	gs.seq = make([]uint64, pages)
	gs.cur = make([]ondisk.Copy, pages)
	for p := range gs.cur {
		gs.cur[p] = ondisk.CopyB // so the first write goes to A
	}
	for p := uint32(0); p < pages; p++ {
		if err := gs.writePageLocked(p); err != nil {
			return err
		}
	}
	return nil
}

// PersistGens writes the pages holding the changed generations and syncs.
func (gs *genStore) PersistGens(changes []alloc.GenChange) error {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	dirty := map[uint32]bool{}
	for _, ch := range changes {
		if ch.Bucket >= uint32(len(gs.gens)) {
			return fmt.Errorf("engine: persist gen of bucket %d: out of range", ch.Bucket)
		}
		gs.gens[ch.Bucket] = ch.Gen
		dirty[ch.Bucket/ondisk.GensPerPage] = true
	}
	for p := range dirty {
		if err := gs.writePageLocked(p); err != nil {
			return err
		}
	}
	if err := gs.dev.Sync(); err != nil {
		return fmt.Errorf("engine: sync gens: %w", err)
	}
	return nil
}

// writePageLocked writes page p to the copy not holding its newest version.
// Caller holds mu.
func (gs *genStore) writePageLocked(p uint32) error {
	first := p * ondisk.GensPerPage
	end := min(first+ondisk.GensPerPage, uint32(len(gs.gens)))
	page := ondisk.GensPage{Seq: gs.seq[p] + 1, First: first, Gens: gs.gens[first:end]}
	to := gs.cur[p].Other()
	if _, err := gs.dev.WriteAt(ondisk.EncodeGensPage(page, gs.setMagic), gs.layout.GensPageOffset(to, p)); err != nil {
		return fmt.Errorf("engine: write gens page %d: %w", p, err)
	}
	gs.seq[p], gs.cur[p] = page.Seq, to
	return nil
}

// snapshot returns a copy of the generations.
func (gs *genStore) snapshot() []uint32 {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	return append([]uint32(nil), gs.gens...)
}
