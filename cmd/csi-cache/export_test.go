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
