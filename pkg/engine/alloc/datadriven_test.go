package alloc

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata/*.txt")

// A datadriven test file is a sequence of cases:
//
//	# comments and blank lines
//	command arg key=value
//	----
//	expected output (no blank lines)
//	<blank line or end of file>
//
// Every case runs against one allocator (built by the "new" command), and Check
// runs after every command.
type ddCase struct {
	pre      []string // comment and blank lines before the command
	line     int
	cmd      string
	expected string
}

func parseDD(t *testing.T, path string) []ddCase {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var cases []ddCase
	var pre []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			pre = append(pre, l)
			continue
		}
		c := ddCase{pre: pre, line: i + 1, cmd: l}
		pre = nil
		if i+1 >= len(lines) || lines[i+1] != "----" {
			t.Fatalf("%s:%d: command without ----", path, i+1)
		}
		i += 2
		var out []string
		for ; i < len(lines) && lines[i] != ""; i++ {
			out = append(out, lines[i])
		}
		c.expected = strings.Join(out, "\n")
		cases = append(cases, c)
	}
	return cases
}

func TestDataDriven(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			cases := parseDD(t, path)
			d := &ddState{t: t}
			defer d.close()
			var sb strings.Builder
			for i, c := range cases {
				got := strings.TrimRight(d.run(c.cmd), "\n")
				if got == "" {
					got = "ok"
				}
				if *rewrite {
					if i > 0 {
						sb.WriteString("\n")
					}
					for _, p := range c.pre {
						sb.WriteString(p + "\n")
					}
					fmt.Fprintf(&sb, "%s\n----\n%s\n", c.cmd, got)
					continue
				}
				if got != c.expected {
					t.Errorf("%s:%d: %s\ngot:\n%s\nwant:\n%s", path, c.line, c.cmd, got, c.expected)
				}
			}
			if *rewrite {
				if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

type ddState struct {
	t     *testing.T
	a     *Allocator
	st    *recStore
	calls int // store calls already printed
}

func (d *ddState) close() {
	if d.a != nil {
		d.a.Close()
	}
}

var reserveByName = map[string]Reserve{"data": ReserveNone, "none": ReserveNone, "btree": ReserveBtree, "movinggc": ReserveMovingGC, "meta": ReserveMeta}
var kindByName = map[string]Kind{"free": KindFree, "data": KindData, "btree": KindBtree, "meta": KindMeta}

// run executes one command and returns its output: the PersistGens calls it caused,
// then its own output.
func (d *ddState) run(line string) string {
	f := strings.Fields(line)
	cmd, args := f[0], f[1:]
	kv := map[string]string{}
	var pos []string
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		} else {
			pos = append(pos, a)
		}
	}
	num := func(s string) int {
		n, err := strconv.Atoi(s)
		if err != nil {
			d.t.Fatalf("%q: bad number %q", line, s)
		}
		return n
	}
	arg := func(i int) int {
		if i >= len(pos) {
			d.t.Fatalf("%q: missing argument %d", line, i+1)
		}
		return num(pos[i])
	}
	opt := func(k string) int {
		if v, ok := kv[k]; ok {
			return num(v)
		}
		return 0
	}
	if cmd != "new" && d.a == nil {
		d.t.Fatalf("%q before new", line)
	}

	var out strings.Builder
	res := func(err error) {
		if err != nil {
			fmt.Fprintf(&out, "error: %v\n", err)
		}
	}
	switch cmd {
	case "new":
		d.close()
		d.st = newRecStore()
		d.calls = 0
		cfg := Config{
			NBuckets: uint32(opt("n")), BucketSectors: max(opt("sectors"), 8), Store: d.st,
			ReserveBtree: opt("btree"), ReserveMovingGC: opt("movinggc"), ReserveMeta: opt("meta"),
			LowWater: opt("low"), HighWater: opt("high"), MaxBatch: opt("batch"),
		}
		if g, ok := kv["gens"]; ok {
			for _, s := range strings.Split(g, ",") {
				cfg.Gens = append(cfg.Gens, uint32(num(s)))
			}
		}
		if kv["policy"] == "slru" {
			p, err := NewSLRU(cfg.NBuckets, SLRUConfig{ProtectedPercent: opt("protected"), PromoteHits: opt("hits")})
			if err != nil {
				return "error: " + err.Error()
			}
			cfg.Policy = p
		}
		a, err := New(cfg)
		if err != nil {
			d.a = nil
			return "error: " + err.Error()
		}
		d.a = a
		fmt.Fprintf(&out, "low %d high %d\n", a.low, a.high)
	case "load":
		k, ok := kindByName[pos[1]]
		if !ok {
			d.t.Fatalf("%q: bad kind", line)
		}
		res(d.a.Load(uint32(arg(0)), k, opt("live"), opt("dirty")))
	case "alloc":
		r, ok := reserveByName[pos[0]]
		if !ok {
			d.t.Fatalf("%q: bad reserve", line)
		}
		k := map[Reserve]Kind{ReserveNone: KindData, ReserveBtree: KindBtree, ReserveMovingGC: KindData, ReserveMeta: KindMeta}[r]
		if v, ok := kv["kind"]; ok {
			k = kindByName[v]
		}
		b, g, err := d.a.Alloc(r, k, false)
		if err != nil {
			res(err)
		} else {
			fmt.Fprintf(&out, "b%d g%d\n", b, g)
		}
	case "free":
		for i := range pos {
			res(d.a.Free(uint32(arg(i))))
		}
	case "open":
		res(d.a.Open(uint32(arg(0))))
	case "release":
		for i := range pos {
			res(d.a.Release(uint32(arg(i))))
		}
	case "touch":
		for i := range pos {
			d.a.Touch(uint32(arg(i)))
		}
	case "mark":
		res(d.a.MarkData(uint32(arg(0)), arg(1), kv["dirty"] == "true"))
	case "add":
		res(d.a.AddSectors(uint32(arg(0)), opt("live"), opt("dirty")))
	case "usage":
		res(d.a.SetUsage(uint32(arg(0)), opt("live"), opt("dirty")))
	case "refill":
		d.a.refill()
		res(d.a.Err())
		out.WriteString(d.lists())
	case "invalidate":
		n, err := d.a.invalidate(arg(0))
		res(err)
		fmt.Fprintf(&out, "invalidated %d\n", n)
	case "lists":
		out.WriteString(d.lists())
	case "policy":
		d.a.mu.Lock()
		order := d.a.policy.(interface{ order() []uint32 }).order()
		d.a.mu.Unlock()
		fmt.Fprintf(&out, "%v\n", order)
	case "victims":
		d.a.mu.Lock()
		v := d.a.policy.Victims(arg(0), d.a.eligible)
		d.a.mu.Unlock()
		fmt.Fprintf(&out, "%v\n", v)
	case "gen":
		for i := range pos {
			fmt.Fprintf(&out, "b%d g%d\n", arg(i), d.a.Gen(uint32(arg(i))))
		}
	case "stale":
		fmt.Fprintf(&out, "%v\n", d.a.IsStale(uint32(arg(0)), uint32(arg(1))))
	case "promote":
		fmt.Fprintf(&out, "%v\n", d.a.Promote(uint64(arg(0))))
	case "store":
		d.st.mu.Lock()
		d.st.fail = nil
		if pos[0] == "fail" {
			d.st.fail = errors.New("injected")
		}
		d.st.mu.Unlock()
	case "stats":
		s := d.a.Stats()
		fmt.Fprintf(&out, "free %d %v pending %d data %d btree %d meta %d dirty %d open %d live %d dirtysectors %d\n",
			s.Free, s.FreeByReserve, s.Pending, s.Data, s.Btree, s.Meta, s.Dirty, s.Open, s.LiveSectors, s.DirtySectors)
		fmt.Fprintf(&out, "allocs %d failures %d invalidations %d evictions %d persist %d/%d\n",
			s.Allocations, s.Failures, s.Invalidations, s.Evictions, s.PersistCalls, s.PersistedGens)
	default:
		d.t.Fatalf("unknown command %q", line)
	}
	if err := d.a.Check(); err != nil {
		d.t.Errorf("%q: %v", line, err)
	}
	persisted := d.st.formatCalls(d.calls)
	d.calls = d.st.ncalls()
	return persisted + out.String()
}

// lists prints the free lists and the freed queue.
func (d *ddState) lists() string {
	a := d.a
	a.mu.Lock()
	defer a.mu.Unlock()
	var sb strings.Builder
	sb.WriteString("free")
	for r := range a.free {
		var bs []uint32
		a.free[r].each(func(b uint32) { bs = append(bs, b) })
		fmt.Fprintf(&sb, " %s=%v", Reserve(r), bs)
	}
	var freed []uint32
	a.freed.each(func(b uint32) { freed = append(freed, b) })
	fmt.Fprintf(&sb, "\nfreed=%v\n", freed)
	return sb.String()
}
