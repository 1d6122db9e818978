package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// fixture writes the engine's clean fixture cache set (16 MiB) to a file.
func fixture(t *testing.T) string {
	t.Helper()
	f, err := os.Open("../../pkg/engine/testdata/inspect/clean.img.gz")
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
	path := filepath.Join(t.TempDir(), "cache.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// flip inverts the byte at off of the file.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestInspectCheckCLI runs inspect and check on a fixture cache set, clean
// and damaged: exit codes, text and JSON output, and the file left unchanged.
func TestInspectCheckCLI(t *testing.T) {
	clean := fixture(t)
	sum := fileSum(t, clean)

	code, out, errOut := runCLI("inspect", clean)
	if code != 0 || !strings.Contains(out, `"wb"`) || !strings.Contains(out, "problems           none") {
		t.Fatalf("inspect: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = runCLI("inspect", clean, "-json") // flags after the device work too
	var r engine.Inspection
	if err := json.Unmarshal([]byte(out), &r); code != 0 || err != nil {
		t.Fatalf("inspect -json: exit %d, %v\n%s", code, err, out)
	}
	names := []string{}
	for _, v := range r.Volumes {
		names = append(names, v.Name)
	}
	if strings.Join(names, ",") != "wt,wb,scratch,wa" || r.Btree.Depth != 3 || r.Volumes[1].DirtyBytes == 0 {
		t.Fatalf("inspect -json: volumes %v, depth %d, %+v", names, r.Btree.Depth, r.Volumes)
	}
	code, out, errOut = runCLI("check", clean)
	if code != 0 || !strings.Contains(out, clean+": clean") || errOut != "" {
		t.Fatalf("check: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = runCLI("check", "-json", clean)
	var res checkResult
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil || !res.Clean || res.Errors != 0 {
		t.Fatalf("check -json: exit %d, %v\n%s", code, err, out)
	}
	if fileSum(t, clean) != sum {
		t.Fatal("inspect or check modified the cache file")
	}

	// The root node damaged: check fails with the problem; inspect still
	// reports everything else.
	root := r.Superblock.BucketsOffset + int64(r.Btree.RootBucket)*int64(r.Superblock.BucketSize)
	flip(t, clean, root+30)
	code, out, errOut = runCLI("check", clean)
	if code != 1 || !strings.Contains(out, "CORRUPT (1 errors)") || !strings.Contains(out, "error: btree at offset") ||
		!strings.Contains(errOut, "is corrupt: 1 error(s)") {
		t.Fatalf("check of a damaged root: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = runCLI("check", "-json", clean)
	if err := json.Unmarshal([]byte(out), &res); code != 1 || err != nil || res.Clean || res.Errors != 1 || res.Report.Problems[0].Area != "btree" {
		t.Fatalf("check -json of a damaged root: exit %d, %v\n%s", code, err, out)
	}
	code, out, _ = runCLI("inspect", clean)
	if code != 0 || !strings.Contains(out, "problems           1 (1 errors)") || !strings.Contains(out, "csi-cache check") {
		t.Fatalf("inspect of a damaged root: exit %d\n%s", code, out)
	}

	// No superblock: not a cache set.
	flip(t, clean, 4096+100)
	flip(t, clean, 8192+100)
	for _, cmd := range []string{"inspect", "check"} {
		code, _, errOut = runCLI(cmd, clean)
		if code != 1 || !strings.Contains(errOut, "not a csi-cache cache set") {
			t.Fatalf("%s without a superblock: exit %d\n%s", cmd, code, errOut)
		}
	}
	// Usage errors.
	for _, args := range [][]string{{"check"}, {"inspect", "a", "b"}, {"check", "/nonexistent/cache.img"}} {
		if code, _, errOut := runCLI(args...); code != 1 || errOut == "" {
			t.Fatalf("%q: exit %d, stderr %q", args, code, errOut)
		}
	}
}

// TestInspectInUse inspects a cache file while a cache set has it open and
// writes to it: every run exits 0 with a report (whatever in-flight updates it
// sees), the file is never written by inspect, and check on the closed file
// is clean.
func TestInspectInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.img")
	cfg := engine.Config{BucketSize: 64 << 10, JournalSize: 256 << 10, MaxVolumes: 8, NodeMaxKeys: 8,
		ReaperInterval: 5 * time.Millisecond, Logf: func(string, ...any) {}}
	dev, err := device.OpenFile(path, device.FileOptions{Create: true, Size: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := engine.Format(dev, cfg); err != nil {
		t.Fatal(err)
	}
	cs, err := engine.Open(dev, cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.CreateVolume(engine.VolumeSpec{Name: "busy", Size: 2 << 20, Backing: engine.BackingNone, SeqCutoff: engine.NoSeqCutoff})
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 1))
		buf := make([]byte, 4096)
		for i := 0; !stop.Load(); i++ {
			if err := v.WriteAt(buf, int64(rng.IntN(512))*4096, false); err != nil {
				t.Error(err)
				return
			}
			if i%16 == 0 {
				if err := v.Flush(); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	for i := 0; i < 10; i++ {
		code, out, errOut := runCLI("inspect", path)
		if code != 0 || !strings.Contains(out, `"busy"`) {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("inspect of a cache set in use, run %d: exit %d\n%s\n%s", i, code, out, errOut)
		}
		if code, _, _ := runCLI("inspect", "-json", path); code != 0 {
			t.Fatalf("inspect -json of a cache set in use: exit %d", code)
		}
	}
	stop.Store(true)
	wg.Wait()
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCLI("check", path); code != 0 {
		t.Fatalf("check after close: exit %d\n%s\n%s", code, out, errOut)
	}
}
