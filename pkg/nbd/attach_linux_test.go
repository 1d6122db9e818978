package nbd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-cache/csi-cache/pkg/nbd/netlink"
)

// fakeKernel stands in for the nbd driver behind netlink. Like the kernel,
// it takes its own reference to each socket it accepts (a dup), talks NBD
// over it with the test client, and on RECONFIGURE puts new sockets only in
// the slots of dead ones, dropping the rest without an error.
type fakeKernel struct {
	t *testing.T

	mu          sync.Mutex // guards the fields below
	devices     map[int]*fakeDevice
	connects    []netlink.Config
	reconfigs   []netlink.Config
	disconnects []int
	connectErr  error
}

type fakeDevice struct {
	cfg   netlink.Config
	slots []*client // nil: dead
}

func installFakeKernel(t *testing.T) *fakeKernel {
	fk := &fakeKernel{t: t, devices: map[int]*fakeDevice{}}
	old := dialKernel
	dialKernel = func() (kernelClient, error) { return fk, nil }
	oldWait, oldRetry := reattachWait, reattachRetry
	reattachWait, reattachRetry = 50*time.Millisecond, time.Millisecond
	t.Cleanup(func() {
		dialKernel, reattachWait, reattachRetry = old, oldWait, oldRetry
		fk.mu.Lock()
		defer fk.mu.Unlock()
		for _, d := range fk.devices {
			for _, c := range d.slots {
				if c != nil {
					c.nc.Close()
				}
			}
		}
	})
	return fk
}

// adopt dups f, as sockfd_lookup takes a reference, and returns a client
// on it.
func (fk *fakeKernel) adopt(f *os.File) *client {
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		fk.t.Fatal(err)
	}
	nf := os.NewFile(uintptr(fd), "fake-kernel")
	defer nf.Close()
	nc, err := net.FileConn(nf)
	if err != nil {
		fk.t.Fatal(err)
	}
	return newClient(nc, bufio.NewReader(nc))
}

func (fk *fakeKernel) Connect(cfg netlink.Config) (int, error) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	fk.connects = append(fk.connects, cfg)
	if fk.connectErr != nil {
		return 0, fk.connectErr
	}
	idx := cfg.Index
	if idx == netlink.AnyIndex {
		for idx = 0; fk.devices[idx] != nil; idx++ {
		}
	} else if fk.devices[idx] != nil {
		return 0, fmt.Errorf("fake: nbd%d busy", idx)
	}
	d := &fakeDevice{cfg: cfg}
	for _, f := range cfg.Sockets {
		d.slots = append(d.slots, fk.adopt(f))
	}
	fk.devices[idx] = d
	return idx, nil
}

func (fk *fakeKernel) Reconfigure(cfg netlink.Config) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	fk.reconfigs = append(fk.reconfigs, cfg)
	d := fk.devices[cfg.Index]
	if d == nil {
		return errors.New("fake: not configured, cannot reconfigure")
	}
	if cfg.BackendIdentifier != d.cfg.BackendIdentifier {
		return errors.New("fake: backend image doesn't match")
	}
	if cfg.SizeBytes != 0 {
		d.cfg.SizeBytes = cfg.SizeBytes
	}
	socks := cfg.Sockets
	for i := range d.slots {
		if len(socks) == 0 {
			break
		}
		if d.slots[i] == nil {
			d.slots[i] = fk.adopt(socks[0])
			socks = socks[1:]
		}
	}
	return nil
}

func (fk *fakeKernel) Disconnect(index int) error {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	fk.disconnects = append(fk.disconnects, index)
	d := fk.devices[index]
	if d == nil {
		return errors.New("fake: no such device")
	}
	for _, c := range d.slots {
		if c != nil {
			c.start(CmdDisc, 0, 0, 0, nil)
			c.nc.Close()
		}
	}
	delete(fk.devices, index)
	return nil
}

func (fk *fakeKernel) Connected(index int) (bool, error) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	return fk.devices[index] != nil, nil
}

func (fk *fakeKernel) Close() error { return nil }

// kill closes the kernel's sockets of device index, as when the serving
// process dies, and marks them dead.
func (fk *fakeKernel) kill(index int) {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	for i, c := range fk.devices[index].slots {
		if c != nil {
			c.nc.Close()
			fk.devices[index].slots[i] = nil
		}
	}
}

func (fk *fakeKernel) device(index int) *fakeDevice {
	fk.mu.Lock()
	defer fk.mu.Unlock()
	return fk.devices[index]
}

func TestAttachOptionsDefaults(t *testing.T) {
	const multi, single = rwFlags, rwFlags &^ FlagCanMultiConn
	cases := []struct {
		name  string
		in    AttachOptions
		flags uint16
		want  AttachOptions
		err   bool
	}{
		{"zero", AttachOptions{}, multi,
			AttachOptions{Connections: 2, Index: -1, Timeout: DefaultTimeout, DeadConnTimeout: DefaultDeadConnTimeout}, false},
		{"zero, no multi-conn", AttachOptions{}, single,
			AttachOptions{Connections: 1, Index: -1, Timeout: DefaultTimeout, DeadConnTimeout: DefaultDeadConnTimeout}, false},
		{"index 0", AttachOptions{UseIndex: true}, multi,
			AttachOptions{Connections: 2, Index: 0, UseIndex: true, Timeout: DefaultTimeout, DeadConnTimeout: DefaultDeadConnTimeout}, false},
		{"index ignored", AttachOptions{Index: 3}, multi,
			AttachOptions{Connections: 2, Index: -1, Timeout: DefaultTimeout, DeadConnTimeout: DefaultDeadConnTimeout}, false},
		{"negative index", AttachOptions{Index: -1, UseIndex: true}, multi,
			AttachOptions{Connections: 2, Index: -1, Timeout: DefaultTimeout, DeadConnTimeout: DefaultDeadConnTimeout}, false},
		{"explicit", AttachOptions{Connections: 4, Index: 7, UseIndex: true, Timeout: time.Second, DeadConnTimeout: time.Minute}, multi,
			AttachOptions{Connections: 4, Index: 7, UseIndex: true, Timeout: time.Second, DeadConnTimeout: time.Minute}, false},
		{"one connection, no multi-conn", AttachOptions{Connections: 1}, single,
			AttachOptions{Connections: 1, Index: -1, Timeout: DefaultTimeout, DeadConnTimeout: DefaultDeadConnTimeout}, false},
		{"two connections, no multi-conn", AttachOptions{Connections: 2}, single, AttachOptions{}, true},
		{"too many connections", AttachOptions{Connections: MaxConnections + 1}, multi, AttachOptions{}, true},
		{"negative connections", AttachOptions{Connections: -1}, multi, AttachOptions{}, true},
		{"negative timeout", AttachOptions{Timeout: -time.Second}, multi, AttachOptions{}, true},
		{"negative dead-conn timeout", AttachOptions{DeadConnTimeout: -time.Second}, multi, AttachOptions{}, true},
	}
	for _, c := range cases {
		got, err := c.in.withDefaults(c.flags)
		if c.err {
			if !errors.Is(err, ErrInvalidAttach) {
				t.Errorf("%s: err %v, want ErrInvalidAttach", c.name, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: got %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
}

func TestKernelBlockSize(t *testing.T) {
	cases := []struct {
		min  uint32
		size int64
		want uint64 // 0: error
	}{
		{1, 1 << 20, 512},
		{512, 1 << 20, 512},
		{4096, 1 << 20, 4096},
		{8192, 1 << 20, 0},
		{512, 0, 0},
	}
	for _, c := range cases {
		got, err := kernelBlockSize(ExportInfo{Name: "x", MinBlockSize: c.min, Size: c.size})
		if c.want == 0 {
			if !errors.Is(err, ErrInvalidAttach) {
				t.Errorf("min %d size %d: %d, %v; want ErrInvalidAttach", c.min, c.size, got, err)
			}
		} else if got != c.want || err != nil {
			t.Errorf("min %d size %d: %d, %v; want %d", c.min, c.size, got, err, c.want)
		}
	}
}

// TestAttachNoDriver runs the real netlink path on a kernel without nbd
// (this machine's); elsewhere it is skipped.
func TestAttachNoDriver(t *testing.T) {
	c, err := netlink.Dial()
	if err == nil {
		c.Close()
		t.Skip("this kernel has the nbd driver")
	}
	if !errors.Is(err, netlink.ErrNoDriver) {
		t.Skipf("generic netlink unavailable: %v", err)
	}
	s, _ := newTestServer(t, Options{})
	_, err = s.Attach("disk", AttachOptions{})
	if !errors.Is(err, ErrNoDriver) || !errors.Is(err, netlink.ErrNoDriver) {
		t.Fatalf("Attach: %v, want ErrNoDriver", err)
	}
	t.Log(err)
	if _, err := s.Reattach("disk", 0, AttachOptions{}); !errors.Is(err, ErrNoDriver) {
		t.Fatalf("Reattach: %v, want ErrNoDriver", err)
	}
	if _, err := DeviceConnected(0); !errors.Is(err, ErrNoDriver) {
		t.Fatalf("DeviceConnected: %v, want ErrNoDriver", err)
	}
}

func TestAttachDialError(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	old := dialKernel
	t.Cleanup(func() { dialKernel = old })
	dialKernel = func() (kernelClient, error) { return nil, netlink.ErrNoDriver }
	if _, err := s.Attach("disk", AttachOptions{}); !errors.Is(err, ErrNoDriver) {
		t.Fatalf("Attach: %v", err)
	}
	if err := s.check(); err != nil {
		t.Fatal(err)
	}
}

func TestAttachServesKernel(t *testing.T) {
	fk := installFakeKernel(t)
	s, mb := newTestServer(t, Options{})
	a, err := s.Attach("disk", AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Index() != 0 || a.Device() != "/dev/nbd0" || a.Export() != "disk" || a.Connections() != 2 {
		t.Fatalf("attachment %d %s %q %d", a.Index(), a.Device(), a.Export(), a.Connections())
	}
	cfg := fk.connects[0]
	if cfg.Index != netlink.AnyIndex || len(cfg.Sockets) != 2 || cfg.SizeBytes != testSize || cfg.BlockSize != 512 ||
		cfg.ServerFlags != uint64(rwFlags) || cfg.Timeout != DefaultTimeout || cfg.DeadConnTimeout != DefaultDeadConnTimeout ||
		cfg.BackendIdentifier != "disk" {
		t.Fatalf("CONNECT %+v", cfg)
	}
	// Our copies of the kernel ends are closed once the kernel has them.
	for _, f := range cfg.Sockets {
		if f.Fd() != ^uintptr(0) {
			t.Fatal("kernel end left open")
		}
	}
	d := fk.device(0)
	p := bytes.Repeat([]byte{7}, 8192)
	d.slots[0].write(t, 4096, p, CmdFlagFUA)
	if got := d.slots[1].read(t, 4096, 8192); !bytes.Equal(got, p) {
		t.Fatal("read through the second connection does not see the first one's write")
	}

	// Resize: only within the export, block aligned.
	if err := a.Resize(testSize + 512); !errors.Is(err, ErrInvalidAttach) {
		t.Fatalf("Resize beyond the export: %v", err)
	}
	mb.Resize(2 * testSize)
	if err := a.Resize(2*testSize + 100); !errors.Is(err, ErrInvalidAttach) {
		t.Fatalf("Resize misaligned: %v", err)
	}
	if err := a.Resize(2 * testSize); err != nil {
		t.Fatal(err)
	}
	if rc := fk.reconfigs[len(fk.reconfigs)-1]; rc.SizeBytes != 2*testSize || rc.Index != 0 || len(rc.Sockets) != 0 ||
		rc.BackendIdentifier != "disk" {
		t.Fatalf("RECONFIGURE for resize %+v", rc)
	}

	// A second device gets the next index; an index can be asked for.
	b, err := s.Attach("disk", AttachOptions{Connections: 1, Index: 5, UseIndex: true})
	if err != nil || b.Index() != 5 || b.Connections() != 1 {
		t.Fatalf("second attach: %v", err)
	}
	if _, err := s.Attach("disk", AttachOptions{Index: 5, UseIndex: true}); err == nil {
		t.Fatal("attach to a busy device succeeded")
	}

	for _, x := range []*Attachment{a, b} {
		if err := x.Detach(); err != nil {
			t.Fatal(err)
		}
		if err := x.Detach(); err != nil {
			t.Fatalf("second Detach: %v", err)
		}
	}
	if err := a.Resize(testSize); !errors.Is(err, ErrDetached) {
		t.Fatalf("Resize after Detach: %v", err)
	}
	if len(fk.disconnects) != 2 {
		t.Fatalf("disconnects %v", fk.disconnects)
	}
	// Every serving goroutine is done: the server has no connection left.
	if err := s.check(); err != nil {
		t.Fatal(err)
	}
}

func TestAttachConnectFails(t *testing.T) {
	fk := installFakeKernel(t)
	fk.connectErr = errors.New("fake: EBUSY")
	s, _ := newTestServer(t, Options{})
	if _, err := s.Attach("disk", AttachOptions{}); err == nil || !errors.Is(err, fk.connectErr) {
		t.Fatalf("Attach: %v", err)
	}
	if err := s.check(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Attach("nope", AttachOptions{}); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("unknown export: %v", err)
	}
}

// TestReattach plays a plugin restart: the first server's sockets die, a
// second server (here on the same backend) reattaches fresh ones and the
// data written before is still there.
func TestReattach(t *testing.T) {
	fk := installFakeKernel(t)
	s1, mb := newTestServer(t, Options{})
	a, err := s1.Attach("disk", AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte{9}, 4096)
	fk.device(0).slots[0].write(t, 0, p, 0)

	// The old server still serves the device: nothing to replace.
	s2 := NewServer(Options{})
	t.Cleanup(func() { shutdownAndCheck(t, s2) })
	if err := s2.AddExport("disk", mb, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Reattach("disk", 0, AttachOptions{}); !errors.Is(err, ErrNoDeadConnection) {
		t.Fatalf("Reattach to a live device: %v", err)
	}
	if err := s2.check(); err != nil {
		t.Fatalf("dropped sockets still served: %v", err)
	}
	if _, err := s2.Reattach("disk", 3, AttachOptions{}); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("Reattach to an unattached device: %v", err)
	}
	if _, err := s2.Reattach("disk", -1, AttachOptions{}); !errors.Is(err, ErrInvalidAttach) {
		t.Fatalf("Reattach to index -1: %v", err)
	}

	fk.kill(0)
	a.closeConns() // the old process is gone
	b, err := s2.Reattach("disk", 0, AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b.Connections() != 2 || b.Index() != 0 {
		t.Fatalf("reattached %d connections to %s", b.Connections(), b.Device())
	}
	rc := fk.reconfigs[len(fk.reconfigs)-1]
	if rc.Index != 0 || len(rc.Sockets) != 2 || rc.SizeBytes != testSize || rc.BackendIdentifier != "disk" ||
		rc.Timeout != DefaultTimeout || rc.DeadConnTimeout != DefaultDeadConnTimeout {
		t.Fatalf("RECONFIGURE %+v", rc)
	}
	d := fk.device(0)
	for i, c := range d.slots {
		if got := c.read(t, 0, 4096); !bytes.Equal(got, p) {
			t.Fatalf("slot %d: data written before the restart is gone", i)
		}
	}
	if err := b.Detach(); err != nil {
		t.Fatal(err)
	}
}

// TestReattachPartial: the device has one dead connection of two; the
// kernel takes one socket and Reattach serves just that one.
func TestReattachPartial(t *testing.T) {
	fk := installFakeKernel(t)
	s, _ := newTestServer(t, Options{})
	if _, err := s.Attach("disk", AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	fk.mu.Lock()
	fk.devices[0].slots[1].nc.Close()
	fk.devices[0].slots[1] = nil
	fk.mu.Unlock()
	b, err := s.Reattach("disk", 0, AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b.Connections() != 1 {
		t.Fatalf("%d connections, want 1", b.Connections())
	}
	fk.device(0).slots[1].write(t, 0, make([]byte, 512), 0)
	// The backend identifier is checked on RECONFIGURE.
	if err := s.AddExport("other", NewMemoryBackend(testSize), false); err != nil {
		t.Fatal(err)
	}
	fk.kill(0)
	if _, err := s.Reattach("other", 0, AttachOptions{}); err == nil {
		t.Fatal("reattached another export")
	}
}

func TestAttachClosedServer(t *testing.T) {
	installFakeKernel(t)
	s, _ := newTestServer(t, Options{})
	shutdownAndCheck(t, s)
	if _, err := s.Attach("disk", AttachOptions{}); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Attach on a closed server: %v", err)
	}
	if _, err := s.Reattach("disk", 0, AttachOptions{}); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Reattach on a closed server: %v", err)
	}
}
