package engine

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/journal"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// Golden tests of Inspect and CheckDevice on fixture cache sets and on
// deliberately corrupted copies of them, in the datadriven style (see the
// journal package): testdata/inspect/*.txt hold cases
//
//	command arg=value ...
//	----
//	expected output
//
// separated by blank lines. `go test -run TestInspectGolden -rewrite` rewrites
// the expected outputs; `-update-fixtures` regenerates the fixture images
// (then rewrite the outputs: UUIDs and dates change).
//
// Commands:
//
//	load image=NAME           load testdata/inspect/NAME.img.gz
//	inspect [json]            Inspect: the text report (or the JSON)
//	check                     CheckDevice: "clean" and the notes and warnings,
//	                          or the error (its type, IsCorruption) and problems
//	corrupt superblock copy=A|B|both
//	corrupt voltable copy=current|other|both
//	corrupt gens copy=both
//	corrupt jset which=newest|oldest
//	corrupt node level=N      a byte of the first bset of the first node of level N
//	corrupt key what=into-btree|future-gen|past-bucket|alias|unknown-volume|past-end
//	                          a bset appended to a leaf holding one bad extent
//	corrupt child what=gen    a bset appended to the root re-pointing a child
//	truncate size=N           keep the first N bytes of the device
//	zero                      zero the superblock area (not a cache set)
var (
	rewrite        = flag.Bool("rewrite", false, "rewrite the expected output of the inspect golden tests")
	updateFixtures = flag.Bool("update-fixtures", false, "regenerate the inspect fixture images")
)

const fixtureDir = "testdata/inspect"

func TestInspectGolden(t *testing.T) {
	if *updateFixtures {
		writeFixtures(t)
	}
	files, err := filepath.Glob(filepath.Join(fixtureDir, "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			runGolden(t, f)
		})
	}
}

type goldenCase struct {
	pos      string
	line     string // the command line as written
	cmd      string
	args     map[string]string
	expected string
}

func parseGolden(t *testing.T, path string) (cases []goldenCase, comments map[int][]string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	comments = map[int][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		n++
		text := sc.Text()
		if text == "" || strings.HasPrefix(text, "#") {
			if text != "" {
				comments[len(cases)] = append(comments[len(cases)], text)
			}
			continue
		}
		fields := strings.Fields(text)
		c := goldenCase{pos: fmt.Sprintf("%s:%d", path, n), line: text, cmd: fields[0], args: map[string]string{}}
		for _, a := range fields[1:] {
			k, v, _ := strings.Cut(a, "=")
			c.args[k] = v
		}
		if !sc.Scan() || sc.Text() != "----" {
			t.Fatalf("%s: want ---- after the command", c.pos)
		}
		n++
		var exp []string
		for sc.Scan() {
			n++
			if sc.Text() == "" {
				break
			}
			exp = append(exp, sc.Text())
		}
		c.expected = strings.Join(exp, "\n")
		cases = append(cases, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cases, comments
}

func runGolden(t *testing.T, path string) {
	cases, comments := parseGolden(t, path)
	g := &golden{t: t}
	var out strings.Builder
	for i, c := range cases {
		got := strings.TrimRight(g.run(c), "\n")
		if strings.Contains(got, "\n\n") {
			t.Fatalf("%s: output has a blank line, which the file format cannot hold", c.pos)
		}
		for _, cm := range comments[i] {
			out.WriteString(cm + "\n")
		}
		fmt.Fprintf(&out, "%s\n----\n", c.line)
		if got != "" {
			out.WriteString(got + "\n")
		}
		out.WriteString("\n")
		if !*rewrite && got != c.expected {
			t.Errorf("%s: %s\n got:\n%s\nwant:\n%s", c.pos, c.line, got, c.expected)
		}
	}
	for _, cm := range comments[len(cases)] {
		out.WriteString(cm + "\n")
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(strings.TrimRight(out.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// golden is the state of one golden file: the loaded image.
type golden struct {
	t   *testing.T
	img *device.Mem
}

func (g *golden) run(c goldenCase) string {
	t := g.t
	if c.cmd != "load" && g.img == nil {
		t.Fatalf("%s: no image loaded", c.pos)
	}
	switch c.cmd {
	case "load":
		g.img = loadFixture(t, c.args["image"])
		return ""
	case "inspect":
		r, err := Inspect(g.img)
		var b strings.Builder
		if _, ok := c.args["json"]; ok {
			js, jerr := json.MarshalIndent(r, "", "  ")
			if jerr != nil {
				t.Fatal(jerr)
			}
			b.Write(js)
			b.WriteString("\n")
		} else if werr := r.WriteText(&b); werr != nil {
			t.Fatal(werr)
		}
		if err != nil {
			fmt.Fprintf(&b, "error: %v\n", err)
		}
		return b.String()
	case "check":
		return checkText(CheckDevice(g.img))
	case "corrupt":
		return g.corrupt(c)
	case "truncate":
		size, err := strconv.ParseInt(c.args["size"], 10, 64)
		if err != nil {
			t.Fatalf("%s: %v", c.pos, err)
		}
		small := device.NewMem(size)
		buf := make([]byte, size)
		noErr(t, ioErr(g.img.ReadAt(buf, 0)))
		noErr(t, ioErr(small.WriteAt(buf, 0)))
		g.img = small
		return ""
	case "zero":
		noErr(t, ioErr(g.img.WriteAt(make([]byte, 2*ondisk.BlockSize), ondisk.SuperblockOffsetA)))
		return ""
	}
	t.Fatalf("%s: unknown command %q", c.pos, c.cmd)
	return ""
}

// checkText renders CheckDevice's result as the golden files hold it.
func checkText(r *Inspection, err error) string {
	var b strings.Builder
	if err == nil {
		b.WriteString("clean\n")
	} else {
		fmt.Fprintf(&b, "error (%T, IsCorruption=%v): %v\n", err, IsCorruption(err), err)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "  %s\n", p)
	}
	return b.String()
}

func ioErr(_ int, err error) error { return err }

func noErr(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// flip inverts one byte of the image.
func (g *golden) flip(off int64) {
	b := make([]byte, 1)
	noErr(g.t, ioErr(g.img.ReadAt(b, off)))
	b[0] ^= 0xff
	noErr(g.t, ioErr(g.img.WriteAt(b, off)))
}

// walk inspects the image, returning the inspector's state and the nodes.
func (g *golden) walk() (*inspector, []inspectedNode) {
	var nodes []inspectedNode
	in := &inspector{dev: g.img, r: &Inspection{}, onNode: func(n inspectedNode) { nodes = append(nodes, n) }}
	if err := in.run(); err != nil {
		g.t.Fatalf("inspecting the image to corrupt it: %v", err)
	}
	return in, nodes
}

func (g *golden) corrupt(c goldenCase) string {
	t := g.t
	in, nodes := g.walk()
	l := &in.layout
	switch what := c.cmd + " " + c.line[len("corrupt "):]; {
	case strings.HasPrefix(c.line, "corrupt superblock"):
		for _, cp := range copiesOf(c.args["copy"], ondisk.CopyA) {
			g.flip(ondisk.SuperblockOffset(cp) + 100)
		}
	case strings.HasPrefix(c.line, "corrupt voltable"):
		cur := ondisk.CopyA
		if in.r.VolumeTable.CopyB.State == "current" {
			cur = ondisk.CopyB
		}
		for _, cp := range copiesOf(c.args["copy"], cur) {
			g.flip(l.VolTableCopyOffset(cp) + 20)
		}
	case strings.HasPrefix(c.line, "corrupt gens"):
		for _, cp := range copiesOf(c.args["copy"], ondisk.CopyA) {
			g.flip(l.GensPageOffset(cp, 0) + 40)
		}
	case strings.HasPrefix(c.line, "corrupt jset"):
		seq := in.r.Journal.NewestSeq
		if c.args["which"] == "oldest" {
			seq = in.r.Journal.LastSeq
		}
		g.flip(g.jsetOffset(in, seq) + 40)
		return fmt.Sprintf("flipped jset %d", seq)
	case strings.HasPrefix(c.line, "corrupt node"):
		level, _ := strconv.Atoi(c.args["level"])
		for _, n := range nodes {
			if int(n.Level) == level {
				g.flip(l.BucketOffset(n.Bucket) + 30)
				return fmt.Sprintf("flipped the first bset of the level %d node in bucket %d", level, n.Bucket)
			}
		}
		t.Fatalf("%s: no node of level %d", c.pos, level)
	case strings.HasPrefix(c.line, "corrupt key"):
		return g.corruptKey(c, in, nodes)
	case strings.HasPrefix(c.line, "corrupt child"):
		for _, n := range nodes {
			if n.Level > 0 && len(n.Keys) > 0 {
				k := n.Keys[0]
				k.Ptr.Gen++
				g.appendBset(in, n, k)
				return fmt.Sprintf("re-pointed the child ending at %s of the level %d node in bucket %d", posText(k.EndPos()), n.Level, n.Bucket)
			}
		}
		t.Fatalf("%s: no interior node", c.pos)
	default:
		t.Fatalf("%s: unknown corruption %q", c.pos, what)
	}
	return ""
}

func copiesOf(arg string, current ondisk.Copy) []ondisk.Copy {
	switch arg {
	case "A":
		return []ondisk.Copy{ondisk.CopyA}
	case "B":
		return []ondisk.Copy{ondisk.CopyB}
	case "current":
		return []ondisk.Copy{current}
	case "other":
		return []ondisk.Copy{current.Other()}
	}
	return []ondisk.Copy{ondisk.CopyA, ondisk.CopyB}
}

// jsetOffset finds the jset of seq in the ring.
func (g *golden) jsetOffset(in *inspector, seq uint64) int64 {
	l := &in.layout
	buf := make([]byte, journal.MaxJsetSize)
	for off := l.JournalOffset; off < l.JournalOffset+l.JournalSize; off += journal.BlockSize {
		n := min(int64(len(buf)), l.JournalOffset+l.JournalSize-off)
		noErr(g.t, ioErr(g.img.ReadAt(buf[:n], off)))
		if js, err := journal.DecodeJset(buf[:n], off, in.sb.SetMagic); err == nil && js.Seq == seq {
			return off
		}
	}
	g.t.Fatalf("no jset %d in the ring", seq)
	return 0
}

// appendBset appends a bset holding keys to node n's log.
func (g *golden) appendBset(in *inspector, n inspectedNode, keys ...bkey.Key) {
	h := ondisk.BsetHeader{NodeSeq: n.NodeSeq, JournalSeq: n.JournalSeq, MinPos: n.Min, MaxPos: n.Max, Index: uint32(n.Bsets), Level: n.Level}
	b := ondisk.EncodeBset(h, keys, in.sb.SetMagic)
	if n.LogEnd+len(b) > int(in.layout.BucketSize) {
		g.t.Fatalf("node in bucket %d has no room for another bset", n.Bucket)
	}
	noErr(g.t, ioErr(g.img.WriteAt(b, in.layout.BucketOffset(n.Bucket)+int64(n.LogEnd))))
}

// corruptKey appends to a leaf a bset with one extent that is wrong in the
// way c asks.
func (g *golden) corruptKey(c goldenCase, in *inspector, nodes []inspectedNode) string {
	t := g.t
	// Buckets in use, to find an empty one for extents that must not alias.
	used := slices.Clone(in.treeNodes)
	var leaves []inspectedNode
	for _, n := range nodes {
		if n.Level == 0 {
			leaves = append(leaves, n)
			for _, k := range n.Keys {
				if k.Ptr.Bucket < uint32(len(used)) {
					used[k.Ptr.Bucket] = true
				}
			}
		}
	}
	empty := slices.Index(used, false)
	if empty < 0 {
		t.Fatalf("%s: no empty bucket", c.pos)
	}
	emptyPtr := bkey.Ptr{Bucket: uint32(empty), Gen: in.gens[empty]}
	// A live extent of a leaf.
	live := func(minKeys int) (inspectedNode, []bkey.Key) {
		for _, n := range leaves {
			var ks []bkey.Key
			for _, k := range n.Keys {
				if !in.isStale(k.Ptr.Bucket, k.Ptr.Gen) && k.Len >= 2 {
					ks = append(ks, k)
				}
			}
			if len(ks) >= minKeys {
				return n, ks
			}
		}
		t.Fatalf("%s: no leaf with %d live extents", c.pos, minKeys)
		return inspectedNode{}, nil
	}
	// The leaf holding pos.
	leafAt := func(pos bkey.Pos) inspectedNode {
		for _, n := range leaves {
			if !pos.Less(n.Min) && pos.Less(n.Max) {
				return n
			}
		}
		t.Fatalf("%s: no leaf holds %v", c.pos, pos)
		return inspectedNode{}
	}
	var n inspectedNode
	var k bkey.Key
	switch c.args["what"] {
	case "into-btree":
		var ks []bkey.Key
		n, ks = live(1)
		k = ks[0]
		k.Ptr = bkey.Ptr{Bucket: in.root.Bucket, Gen: in.root.Gen}
	case "future-gen":
		var ks []bkey.Key
		n, ks = live(1)
		k = ks[0]
		k.Ptr.Gen += 5
	case "past-bucket":
		var ks []bkey.Key
		n, ks = live(1)
		k = ks[0]
		k.Ptr.Offset = in.layout.BucketSize/ondisk.SectorSize - 1
	case "alias":
		var ks []bkey.Key
		n, ks = live(2)
		k = ks[1]
		k.Len = min(k.Len, ks[0].Len)
		k.Ptr = ks[0].Ptr
	case "unknown-volume":
		k = bkey.Key{Vol: 99, Start: 0, Len: 8, Ptr: emptyPtr}
		n = leafAt(k.StartPos())
	case "past-end":
		v := in.r.Volumes[0]
		k = bkey.Key{Vol: v.ID, Start: v.Size / ondisk.SectorSize, Len: 8, Ptr: emptyPtr}
		n = leafAt(k.StartPos())
	default:
		t.Fatalf("%s: unknown key corruption %q", c.pos, c.args["what"])
	}
	g.appendBset(in, n, k)
	return fmt.Sprintf("appended %v to the leaf in bucket %d", k, n.Bucket)
}

// loadFixture reads testdata/inspect/NAME.img.gz.
func loadFixture(t testing.TB, name string) *device.Mem {
	return loadImage(t, filepath.Join(fixtureDir, name+".img.gz"))
}

// loadImage reads a gzipped device image into memory.
func loadImage(t testing.TB, path string) *device.Mem {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	m := device.NewMem(int64(len(data)))
	noErr(t, ioErr(m.WriteAt(data, 0)))
	return m
}

func saveFixture(t *testing.T, name string, img *device.Mem) {
	data := make([]byte, img.Size())
	noErr(t, ioErr(img.ReadAt(data, 0)))
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fixtureDir, name+".img.gz"), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fixtureConfig is the geometry of the fixtures: 16 MiB devices, 64 KiB
// buckets, a 64 KiB journal and at most 12 keys per node, so that a few hundred
// extents make a three-level tree.
func fixtureConfig() Config {
	return Config{
		BucketSize: 64 << 10, JournalSize: 64 << 10, MaxVolumes: 8, NodeMaxKeys: 12, NodeCacheNodes: 512,
		ReaperInterval: time.Hour, GCInterval: time.Hour, JournalDelay: -1,
		BackingDir: "/backing", Logf: func(string, ...any) {},
	}
}

// writeFixtures builds the fixture images:
//
//	clean  closed cleanly; volumes: "wt" writethrough (clean cached data),
//	       "wb" writeback whose backing store fails writes (dirty data stays),
//	       "scratch" cache-only, "wa" writearound (empty), and a deleted one
//	       (its id is not reused)
//	inuse  the device of an open cache set: dirty nodes not yet written,
//	       several journal entries to replay
func writeFixtures(t *testing.T) {
	if err := os.MkdirAll(fixtureDir, 0o755); err != nil {
		t.Fatal(err)
	}
	build := func(close bool) *device.Mem {
		cfg := fixtureConfig()
		cfg.OpenBacking = func(kind BackingKind, path string, size int64, create bool) (device.Device, error) {
			// Writes fail: writeback cannot drain; writethrough writes fail
			// too, so "wt" is filled by reads (fills) instead.
			return device.NewFault(device.NewMem(size), device.FailRange(device.OpWrite, 0, size, nil)), nil
		}
		img := device.NewMem(16 << 20)
		if err := Format(img, cfg); err != nil {
			t.Fatal(err)
		}
		c, err := Open(img.Reopen(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		mk := func(spec VolumeSpec) *Volume {
			spec.SeqCutoff = NoSeqCutoff
			v, err := c.CreateVolume(spec)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		wt := mk(VolumeSpec{Name: "wt", Size: 2 << 20, Mode: Writethrough})
		gone := mk(VolumeSpec{Name: "gone", Size: 1 << 20, Mode: Writeback, Backing: BackingNone})
		wb := mk(VolumeSpec{Name: "wb", Size: 1 << 20, Mode: Writeback})
		scratch := mk(VolumeSpec{Name: "scratch", Size: 512 << 10, Backing: BackingNone})
		mk(VolumeSpec{Name: "wa", Size: 1 << 20, Mode: Writearound})
		rng := rand.New(rand.NewPCG(1, 2))
		pattern := func(n int) []byte { return bytes.Repeat([]byte{byte(rng.IntN(256))}, n) }
		if err := gone.WriteAt(pattern(64<<10), 0, false); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteVolume("gone"); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 120; i++ {
			if err := wt.ReadAt(make([]byte, 4096), int64(rng.IntN(512))*4096); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < 100; i++ {
			if err := wb.WriteAt(pattern(4096), int64(rng.IntN(256))*4096, false); err != nil {
				t.Fatal(err)
			}
			if err := scratch.WriteAt(pattern(2048), int64(rng.IntN(256))*2048, false); err != nil {
				t.Fatal(err)
			}
			if i%25 == 24 {
				if err := c.Commit(); err != nil {
					t.Fatal(err)
				}
			}
		}
		time.Sleep(100 * time.Millisecond) // let the fills land
		if err := c.Commit(); err != nil {
			t.Fatal(err)
		}
		snap := img.Clone()
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if close {
			return img
		}
		return snap
	}
	saveFixture(t, "clean", build(true))
	saveFixture(t, "inuse", build(false))
}
