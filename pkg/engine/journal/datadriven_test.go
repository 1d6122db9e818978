package journal

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A small datadriven runner in the style of cockroachdb/datadriven (standard
// library only). A test file is a sequence of cases:
//
//	# comment
//	command arg=value ...
//	----
//	expected output
//	<blank line>
//
// `go test -run TestDatadriven -rewrite` rewrites the expected outputs.
var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of datadriven tests")

type ddCase struct {
	pos      string // file:line
	cmd      string
	args     map[string]string
	expected string
}

func parseDatadriven(t *testing.T, path string) (cases []ddCase, comments map[int][]string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	comments = map[int][]string{}
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if text == "" || strings.HasPrefix(text, "#") {
			if text != "" {
				comments[len(cases)] = append(comments[len(cases)], text)
			}
			continue
		}
		fields := strings.Fields(text)
		c := ddCase{pos: fmt.Sprintf("%s:%d", path, line), cmd: fields[0], args: map[string]string{}}
		for _, a := range fields[1:] {
			k, v, _ := strings.Cut(a, "=")
			c.args[k] = v
		}
		if !sc.Scan() || sc.Text() != "----" {
			t.Fatalf("%s: want ---- after the command", c.pos)
		}
		line++
		var exp []string
		for sc.Scan() {
			line++
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

func runDatadriven(t *testing.T, path string, run func(t *testing.T, c ddCase) string) {
	cases, comments := parseDatadriven(t, path)
	var out strings.Builder
	for i, c := range cases {
		got := strings.TrimRight(run(t, c), "\n")
		if *rewrite {
			for _, cm := range comments[i] {
				out.WriteString(cm + "\n")
			}
			out.WriteString(c.cmd)
			for _, k := range sortedKeys(c.args) {
				fmt.Fprintf(&out, " %s=%s", k, c.args[k])
			}
			out.WriteString("\n----\n" + got + "\n\n")
			continue
		}
		if got != c.expected {
			t.Fatalf("%s: %s\ngot:\n%s\nwant:\n%s", c.pos, c.cmd, got, c.expected)
		}
	}
	if *rewrite {
		for _, cm := range comments[len(cases)] {
			out.WriteString(cm + "\n")
		}
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	for i := 1; i < len(ks); i++ {
		for j := i; j > 0 && ks[j] < ks[j-1]; j-- {
			ks[j], ks[j-1] = ks[j-1], ks[j]
		}
	}
	return ks
}

func ddUint(t *testing.T, c ddCase, key string) uint64 {
	v, err := strconv.ParseUint(c.args[key], 10, 64)
	if err != nil {
		t.Fatalf("%s: %s=%q: %v", c.pos, key, c.args[key], err)
	}
	return v
}

// TestDatadriven runs the journal state machine scripts in testdata/. Commands:
//
//	new blocks=N                a journal on a fresh N-block device, no delay timer
//	add keys=N                  Add N keys; prints the seq
//	pin seq=S / unpin seq=S     Pin / Unpin
//	commit seq=S / flush        Commit / Flush
//	reopen [crash=true]         Close (or crash: keep only synced data) and Open again;
//	                            prints the replay (its references stay held)
//	state                       the FIFO, the ring and the oldest pinned entry
//	check                       Check
func TestDatadriven(t *testing.T) {
	paths, _ := filepath.Glob("testdata/datadriven/*")
	if len(paths) == 0 {
		t.Fatal("no datadriven files")
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			var (
				dev *memDev
				j   *Journal
			)
			open := func(t *testing.T) *Replay {
				cfg := testConfig(dev)
				cfg.Delay = -1
				jj, rp, err := Open(cfg)
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				jj.Start()
				j = jj
				return rp
			}
			t.Cleanup(func() {
				if j != nil {
					j.Close()
				}
			})
			runDatadriven(t, path, func(t *testing.T, c ddCase) string {
				switch c.cmd {
				case "new":
					if j != nil {
						j.Close()
					}
					dev = newMemDev(int64(ddUint(t, c, "blocks")) * BlockSize)
					open(t)
					return j.dump()
				case "add":
					seq, err := j.Add(testKeys(1, 0, int(ddUint(t, c, "keys"))))
					if err != nil {
						return errString(err)
					}
					return fmt.Sprintf("seq=%d", seq)
				case "pin":
					return errString(j.Pin(ddUint(t, c, "seq")))
				case "unpin":
					return errString(j.Unpin(ddUint(t, c, "seq")))
				case "commit":
					return errString(j.Commit(ddUint(t, c, "seq")))
				case "flush":
					return errString(j.Flush())
				case "reopen":
					j.Close()
					if c.args["crash"] == "true" {
						dev = dev.crash()
					}
					rp := open(t)
					var b strings.Builder
					for _, e := range rp.Entries {
						fmt.Fprintf(&b, "replay %d: %d keys\n", e.Seq, len(e.Keys))
					}
					if len(rp.Entries) == 0 {
						b.WriteString("replay: empty\n")
					}
					return b.String() + j.dump()
				case "state":
					return j.dump()
				case "check":
					return errString(j.Check())
				}
				t.Fatalf("%s: unknown command %q", c.pos, c.cmd)
				return ""
			})
		})
	}
}
