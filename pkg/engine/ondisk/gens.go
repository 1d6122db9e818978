package ondisk

// Bucket-generation table page format, version 1. The table is an array of 4 KiB
// pages; page p holds the generations of buckets [p*GensPerPage, ...). Each page
// has two slots, one in copy A and one in copy B of the table. An update of a page
// is written, with Seq bumped, to the slot not holding the current page, so a
// torn write leaves the previous page intact; the reader keeps the valid slot
// with the higher Seq (PickGensPage). All integers are little-endian.
//
//	 0  magic        u64   SetMagic ^ MagicGens
//	 8  csum         u32   crc32c of bytes [12, 4096)
//	12  version      u32   1
//	16  seq          u64
//	24  first        u32   first bucket, p*GensPerPage
//	28  count        u32   1..GensPerPage; GensPerPage except on the last page
//	32  gens         u32 × count
//	    zero up to 4096
//
// The checksum covers the whole page after the csum field, including the zero
// tail, which must be zero.

import "fmt"

// GensVersion is the generation page format version.
const GensVersion = 1

const gensHeaderSize = 32

// GensPerPage is the number of bucket generations in one page.
const GensPerPage = (BlockSize - gensHeaderSize) / 4

// GensPage is one page of the bucket-generation table.
type GensPage struct {
	Seq   uint64
	First uint32   // first bucket, a multiple of GensPerPage
	Gens  []uint32 // generations of buckets First, First+1, ...
}

// GensPagesUsed is the number of generation pages that hold the NBuckets
// generations; GensPages may be larger.
func (l *Layout) GensPagesUsed() uint32 {
	return uint32((uint64(l.NBuckets) + GensPerPage - 1) / GensPerPage)
}

func (p *GensPage) check() string {
	switch {
	case p.First%GensPerPage != 0:
		return fmt.Sprintf("first bucket %d is not a multiple of %d", p.First, GensPerPage)
	case len(p.Gens) == 0 || len(p.Gens) > GensPerPage:
		return fmt.Sprintf("count %d not in [1, %d]", len(p.Gens), GensPerPage)
	case uint64(p.First)+uint64(len(p.Gens)) > 1<<32:
		return fmt.Sprintf("buckets [%d,+%d) past bucket 2^32", p.First, len(p.Gens))
	}
	return ""
}

// EncodeGensPage encodes p into one 4 KiB page. It panics if p would not decode.
func EncodeGensPage(p GensPage, setMagic uint64) []byte {
	if why := p.check(); why != "" {
		panic("ondisk: EncodeGensPage: " + why)
	}
	return encodeGensPage(p, setMagic)
}

func encodeGensPage(p GensPage, setMagic uint64) []byte {
	b := make([]byte, BlockSize)
	putHeader(b, setMagic^MagicGens, GensVersion)
	le.PutUint64(b[16:], p.Seq)
	le.PutUint32(b[24:], p.First)
	le.PutUint32(b[28:], uint32(len(p.Gens)))
	for i, g := range p.Gens {
		le.PutUint32(b[gensHeaderSize+4*i:], g)
	}
	sealSum(b, BlockSize)
	return b
}

// DecodeGensPage decodes a generation page read from device offset off.
func DecodeGensPage(b []byte, off int64, setMagic uint64) (GensPage, error) {
	const what = "gens page"
	if len(b) != BlockSize {
		return GensPage{}, Corruptf(what, off, "bad length %d, want %d", len(b), BlockSize)
	}
	if err := checkHeader(what, b, off, BlockSize, setMagic^MagicGens, GensVersion); err != nil {
		return GensPage{}, err
	}
	if err := checkSum(what, b, off, BlockSize); err != nil {
		return GensPage{}, err
	}
	count := le.Uint32(b[28:])
	if count == 0 || count > GensPerPage {
		return GensPage{}, Corruptf(what, off, "count %d not in [1, %d]", count, GensPerPage)
	}
	end := gensHeaderSize + 4*int(count)
	if !isZero(b[end:]) {
		return GensPage{}, Corruptf(what, off, "bytes after %d generations not zero", count)
	}
	p := GensPage{Seq: le.Uint64(b[16:]), First: le.Uint32(b[24:]), Gens: make([]uint32, count)}
	for i := range p.Gens {
		p.Gens[i] = le.Uint32(b[gensHeaderSize+4*i:])
	}
	if why := p.check(); why != "" {
		return GensPage{}, Corruptf(what, off, "%s", why)
	}
	return p, nil
}

// PickGensPage decodes the two slots of generation page page of layout l, a read
// from copy A and b from copy B, and returns the valid one with the higher Seq. A
// slot that does not hold the generations of exactly the buckets of that page is
// bad. The next update of the page is written to Picked.Copy.Other().
//
// page must be less than l.GensPagesUsed().
func PickGensPage(a, b []byte, l *Layout, page uint32, setMagic uint64) (GensPage, Picked, error) {
	if page >= l.GensPagesUsed() {
		panic(fmt.Sprintf("ondisk: PickGensPage: page %d of %d", page, l.GensPagesUsed()))
	}
	first := page * GensPerPage
	count := min(GensPerPage, l.NBuckets-first)
	decode := func(buf []byte, c Copy) (GensPage, error) {
		off := l.GensPageOffset(c, page)
		p, err := DecodeGensPage(buf, off, setMagic)
		if err == nil && (p.First != first || uint32(len(p.Gens)) != count) {
			err = Corruptf("gens page", off, "holds buckets [%d,+%d), want [%d,+%d)", p.First, len(p.Gens), first, count)
		}
		return p, err
	}
	pa, errA := decode(a, CopyA)
	pb, errB := decode(b, CopyB)
	p, err := choose("gens page", l.GensPageOffset(CopyA, page), errA, errB, pa.Seq, pb.Seq)
	switch {
	case err != nil:
		return GensPage{}, Picked{}, err
	case p.Copy == CopyB:
		return pb, p, nil
	}
	return pa, p, nil
}
