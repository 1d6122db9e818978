package nbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Interop tests run real NBD clients (libnbd's nbdinfo and nbdcopy, qemu-io,
// qemu-img, fio's nbd engine) against the server on a unix socket. They are
// skipped when a tool is missing, unless CSI_CACHE_REQUIRE_TOOLS=1.
//
//	apt-get install -y libnbd-bin qemu-utils fio

func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not installed (apt-get install %s)", name, pkg)
	if os.Getenv("CSI_CACHE_REQUIRE_TOOLS") == "1" {
		t.Fatalf("%s and CSI_CACHE_REQUIRE_TOOLS=1", msg)
	}
	t.Skipf("%s; set CSI_CACHE_REQUIRE_TOOLS=1 to make this a failure", msg)
	return ""
}

// interopServer serves a memory export "disk" of size bytes on a unix socket
// and returns the server, the backend and the NBD URI of the export.
func interopServer(t *testing.T, size int64) (*Server, *MemoryBackend, string) {
	t.Helper()
	s := NewServer(Options{})
	mb := NewMemoryBackend(size)
	if err := s.AddExport("disk", mb, false); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := s.check(); err != nil {
			t.Error(err)
		}
	})
	return s, mb, "nbd+unix:///disk?socket=" + sock
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestInteropNbdinfo(t *testing.T) {
	requireTool(t, "nbdinfo", "libnbd-bin")
	_, _, uri := interopServer(t, 64<<20)
	out := run(t, "nbdinfo", "--json", uri)
	var info struct {
		Protocol   string `json:"protocol"`
		Structured bool   `json:"structured"`
		Exports    []struct {
			Name         string `json:"export-name"`
			Size         int64  `json:"export-size"`
			ReadOnly     bool   `json:"is_read_only"`
			CanFlush     bool   `json:"can_flush"`
			CanFUA       bool   `json:"can_fua"`
			CanTrim      bool   `json:"can_trim"`
			CanZero      bool   `json:"can_zero"`
			CanMultiConn bool   `json:"can_multi_conn"`
			CanFastZero  bool   `json:"can_fast_zero"`
			CanCache     bool   `json:"can_cache"`
			MinBlock     int    `json:"block_size_minimum"`
			PrefBlock    int    `json:"block_size_preferred"`
			MaxBlock     int    `json:"block_size_maximum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo output: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" || info.Structured || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %s", out)
	}
	e := info.Exports[0]
	if e.Name != "disk" || e.Size != 64<<20 || e.ReadOnly || !e.CanFlush || !e.CanFUA || !e.CanTrim ||
		!e.CanZero || !e.CanMultiConn || e.CanFastZero || e.CanCache {
		t.Fatalf("nbdinfo: %+v", e)
	}
	if e.MinBlock != 512 || e.PrefBlock != 4096 || e.MaxBlock != 32<<20 {
		t.Fatalf("nbdinfo block sizes: %+v", e)
	}
	// The LIST path.
	if out := run(t, "nbdinfo", "--list", "--json", strings.Replace(uri, "/disk?", "/?", 1)); !strings.Contains(out, `"disk"`) {
		t.Fatalf("nbdinfo --list: %s", out)
	}
}

func TestInteropNbdcopy(t *testing.T) {
	requireTool(t, "nbdcopy", "libnbd-bin")
	const size = 32 << 20
	for _, conns := range []int{1, 4} {
		t.Run(fmt.Sprintf("connections=%d", conns), func(t *testing.T) {
			s, mb, uri := interopServer(t, size)
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			data := make([]byte, size)
			rand.Read(data)
			clear(data[size/2 : size/2+4<<20]) // a zero run, which nbdcopy may zero instead of write
			if err := os.WriteFile(src, data, 0o600); err != nil {
				t.Fatal(err)
			}
			c := fmt.Sprintf("--connections=%d", conns)
			run(t, "nbdcopy", c, fmt.Sprintf("--threads=%d", conns), "--requests=16", "--flush", src, uri)
			if !bytes.Equal(mb.Bytes(), data) {
				t.Fatal("export differs from the source after nbdcopy upload")
			}
			if mb.Stats().Flushes == 0 {
				t.Fatal("nbdcopy --flush did not reach the backend")
			}
			if st := s.Stats(); st.TotalConnections != uint64(conns) {
				t.Fatalf("nbdcopy upload used %d connections, want %d (CAN_MULTI_CONN)", st.TotalConnections, conns)
			}
			run(t, "nbdcopy", c, fmt.Sprintf("--threads=%d", conns), uri, dst)
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("download differs from the source")
			}
		})
	}
}

func TestInteropQemuIO(t *testing.T) {
	requireTool(t, "qemu-io", "qemu-utils")
	_, mb, uri := interopServer(t, 16<<20)
	args := []string{"-f", "raw"}
	for _, c := range []string{
		"write -P 0xab 0 64k",
		"write -f -P 0xcd 64k 64k", // FUA
		"read -P 0xab 0 64k",
		"read -P 0xcd 64k 64k",
		"write -z 32k 64k", // WRITE_ZEROES
		"read -P 0 32k 64k",
		"read -P 0xcd 96k 32k",
		"discard 1m 1m",
		"write -P 0x11 3m 512", // 512-aligned small write
		"read -P 0x11 3m 512",
		"write -P 0x22 5m 513", // unaligned: qemu does read-modify-write
		"read -P 0x22 5m 513",
		"aio_write -P 0x33 8m 1m",
		"aio_write -P 0x44 9m 1m",
		"aio_flush",
		"read -P 0x33 8m 1m",
		"read -P 0x44 9m 1m",
		"flush",
	} {
		args = append(args, "-c", c)
	}
	args = append(args, uri)
	out := run(t, "qemu-io", args...)
	for _, bad := range []string{"failed", "error", "Error", "Pattern verification"} {
		if strings.Contains(out, bad) {
			t.Fatalf("qemu-io reported %q:\n%s", bad, out)
		}
	}
	if b := mb.Bytes(); b[0] != 0xab || b[32<<10] != 0 || b[3<<20] != 0x11 || b[9<<20] != 0x44 {
		t.Fatal("backend content does not match the qemu-io writes")
	}
	if st := mb.Stats(); st.FUAWrites == 0 || st.Flushes == 0 || st.Trims == 0 {
		t.Fatalf("qemu-io commands did not reach the backend: %+v", st)
	}
}

func TestInteropQemuImgCompare(t *testing.T) {
	requireTool(t, "qemu-img", "qemu-utils")
	const size = 8 << 20
	_, mb, uri := interopServer(t, size)
	img := filepath.Join(t.TempDir(), "img")
	data := make([]byte, size)
	rand.Read(data[:size/2])
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", img, uri)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, uri)
	// A difference is found.
	mb.WriteAt([]byte{^data[12345]}, 12345, false)
	cmd := exec.CommandContext(t.Context(), "qemu-img", "compare", "-f", "raw", "-F", "raw", img, uri)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("qemu-img compare on differing images: %v\n%s", err, out)
	}
}

func TestInteropFio(t *testing.T) {
	requireTool(t, "fio", "fio")
	if out, _ := exec.Command("fio", "--enghelp=nbd").CombinedOutput(); !strings.Contains(string(out), "uri") {
		t.Skip("fio has no nbd engine")
	}
	_, _, uri := interopServer(t, 64<<20)
	for _, rw := range []string{"randwrite", "write"} {
		out := run(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+uri,
			"--rw="+rw, "--bs=4k", "--bsrange=512-64k", "--size=32m", "--iodepth=32",
			"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--output-format=json")
		var res struct {
			Jobs []struct {
				Error int `json:"error"`
			} `json:"jobs"`
		}
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res); err != nil {
			t.Fatalf("fio output: %v\n%s", err, out)
		}
		if len(res.Jobs) != 1 || res.Jobs[0].Error != 0 {
			t.Fatalf("fio: %s", out)
		}
	}
}
