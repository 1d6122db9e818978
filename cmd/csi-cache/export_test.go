package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// needTool skips (or fails under CSI_CACHE_REQUIRE_TOOLS=1) without an
// external program.
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CSI_CACHE_REQUIRE_TOOLS") == "1" {
			t.Fatalf("%s not found and CSI_CACHE_REQUIRE_TOOLS=1", name)
		}
		t.Skipf("%s not found", name)
	}
}

// runExportUntil runs `csi-cache export args...` in dir until fn returns.
func runExportUntil(t *testing.T, dir string, args []string, fn func(uri string)) string {
	t.Helper()
	var out bytes.Buffer
	c, err := parseExportFlags(args, &out)
	if err != nil {
		t.Fatal(err)
	}
	c.dataDir = filepath.Join(dir, c.dataDir)
	c.cacheDevice = filepath.Join(dir, "csi-cache-data", "cache.img")
	c.socket = filepath.Join(dir, "csi-cache-data", c.volumeName+".sock")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	c.ready = func(uri string) { ready <- uri }
	done := make(chan error, 1)
	go func() { done <- export(ctx, c, &out) }()
	select {
	case uri := <-ready:
		fn(uri)
	case err := <-done:
		t.Fatalf("export ended early: %v\n%s", err, out.String())
	case <-time.After(60 * time.Second):
		t.Fatal("export did not start")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("export: %v\n%s", err, out.String())
	}
	return out.String()
}

// TestExportRestartKeepsData is the README's main job: export the embedded
// default, write through a real NBD client, stop, start again, read back.
func TestExportRestartKeepsData(t *testing.T) {
	needTool(t, "nbdcopy")
	for _, mode := range []string{"writethrough", "writeback"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			data := make([]byte, 4<<20)
			rand.Read(data)
			src := filepath.Join(dir, "src")
			if err := os.WriteFile(src, data, 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"-size", "16Mi", "-cache-size", "64Mi", "-mode", mode}
			out := runExportUntil(t, dir, args, func(uri string) {
				if !strings.HasPrefix(uri, "nbd+unix:///vol0?socket=/") {
					t.Errorf("uri %q", uri)
				}
				if b, err := exec.Command("nbdcopy", src, uri).CombinedOutput(); err != nil {
					t.Fatalf("nbdcopy: %v\n%s", err, b)
				}
			})
			if !strings.Contains(out, "created volume \"vol0\"") {
				t.Errorf("first run did not create the volume:\n%s", out)
			}
			dst := filepath.Join(dir, "dst")
			out = runExportUntil(t, dir, args, func(uri string) {
				if b, err := exec.Command("nbdcopy", uri, dst).CombinedOutput(); err != nil {
					t.Fatalf("nbdcopy: %v\n%s", err, b)
				}
			})
			if !strings.Contains(out, "opened volume \"vol0\"") {
				t.Errorf("second run did not reopen the volume:\n%s", out)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[:len(data)], data) || !bytes.Equal(got[len(data):], make([]byte, len(got)-len(data))) {
				t.Fatal("data differs after a restart")
			}
		})
	}
}

func TestExportFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-mode", "fast"}, {"-backing", "tape"}, {"-size", "lots"}, {"-cache-size", "-1"}, {"-backing", "blockdev"},
	} {
		var out bytes.Buffer
		c, err := parseExportFlags(args, &out)
		if err == nil {
			c.dataDir = t.TempDir()
			c.cacheDevice = filepath.Join(c.dataDir, "cache.img")
			err = export(context.Background(), c, &out)
		}
		if err == nil {
			t.Errorf("export %v: no error", args)
		}
	}
}

// TestExportBackingFile serves an existing file as the backing store: the
// volume takes the file's size and content, survives a restart, and a
// writethrough write reaches the file itself.
func TestExportBackingFile(t *testing.T) {
	needTool(t, "nbdcopy")
	dir := t.TempDir()
	image := filepath.Join(dir, "image")
	orig := make([]byte, 3<<20)
	rand.Read(orig)
	if err := os.WriteFile(image, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	readAll := func(uri string) []byte {
		t.Helper()
		dst := filepath.Join(dir, "dst")
		if b, err := exec.Command("nbdcopy", uri, dst).CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy: %v\n%s", err, b)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	next := make([]byte, len(orig))
	rand.Read(next)
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, next, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-backing-file", image, "-cache-size", "64Mi", "-sequential-cutoff", "0", "-backing-delay", "1ms"}
	out := runExportUntil(t, dir, args, func(uri string) {
		if got := readAll(uri); !bytes.Equal(got, orig) {
			t.Fatalf("read %d bytes, not the file's %d bytes of content", len(got), len(orig))
		}
		if b, err := exec.Command("nbdcopy", src, uri).CombinedOutput(); err != nil {
			t.Fatalf("nbdcopy: %v\n%s", err, b)
		}
	})
	if !strings.Contains(out, "created volume \"vol0\" (3145728 bytes, writethrough, backing "+image+")") {
		t.Errorf("first run:\n%s", out)
	}
	if got, err := os.ReadFile(image); err != nil || !bytes.Equal(got, next) {
		t.Fatalf("the backing file does not hold the written data (err %v)", err)
	}
	prof := filepath.Join(dir, "cpu.pprof")
	out = runExportUntil(t, dir, []string{"-backing-file", image, "-cpuprofile", prof}, func(uri string) {
		if got := readAll(uri); !bytes.Equal(got, next) {
			t.Fatal("data differs after a restart")
		}
	})
	if !strings.Contains(out, "opened volume \"vol0\" (3145728 bytes") {
		t.Errorf("second run:\n%s", out)
	}
	if st, err := os.Stat(prof); err != nil || st.Size() == 0 {
		t.Errorf("-cpuprofile wrote no profile: %v", err)
	}

	// Reopening with another backing file is refused.
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c, err := parseExportFlags([]string{"-backing-file", other}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	c.dataDir = filepath.Join(dir, "csi-cache-data")
	c.cacheDevice = filepath.Join(c.dataDir, "cache.img")
	c.socket = filepath.Join(c.dataDir, "vol0.sock")
	if err := export(context.Background(), c, &buf); err == nil || !strings.Contains(err.Error(), "exists with backing "+image) {
		t.Errorf("reopen with another backing file: %v", err)
	}
}

func TestExportBackingFileErrors(t *testing.T) {
	dir := t.TempDir()
	odd := filepath.Join(dir, "odd")
	if err := os.WriteFile(odd, make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-backing-file", filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"-backing-file", dir}, "neither a regular file nor a block device"},
		{[]string{"-backing-file", odd}, "not a positive multiple of 512"},
		{[]string{"-backing-file", good, "-backing", "none"}, "cache-only"},
		{[]string{"-backing-file", good, "-size", "1Mi", "-cache-size", "64Mi"}, "has 4096 bytes, volume is 1048576"},
		{[]string{"-backing-delay", "-1ms"}, "negative"},
	} {
		var out bytes.Buffer
		c, err := parseExportFlags(tc.args, &out)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		c.dataDir = filepath.Join(t.TempDir(), "data")
		c.cacheDevice = filepath.Join(c.dataDir, "cache.img")
		c.socket = filepath.Join(c.dataDir, "vol0.sock")
		err = export(context.Background(), c, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("export %v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
