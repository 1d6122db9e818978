package drivertest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/csi-cache/csi-cache/pkg/driver"
)

// Options configure a Harness. Zero values pick test doubles.
type Options struct {
	// Store is the cache set; default NewMemStore(1 TiB, 1 GiB).
	Store driver.VolumeStore
	// Kernel holds the NBD devices; default a new FakeKernel. Pass the
	// kernel of a stopped harness to model a plugin restart.
	Kernel *FakeKernel
	// Mounter; default NewFakeMounter(Kernel). Pass the mounter of a
	// stopped harness along with its kernel: mounts outlive the plugin.
	Mounter *FakeMounter
	// StateDir; default <Dir>/state. Pass a stopped harness's to restart.
	StateDir string
	// NodeID; default "node-1".
	NodeID string
	// MaxVolumes is the stage limit; 0 means none.
	MaxVolumes int64
}

// Harness serves a driver built from test doubles on a unix socket, with
// clients connected to it.
type Harness struct {
	// Dir is a private directory of the harness (device nodes, state,
	// staging and target paths may go there).
	Dir string
	// Endpoint is the unix:// address of the socket.
	Endpoint string
	Opts     Options

	Driver     *driver.Driver
	Attacher   *FakeAttacher
	Conn       *grpc.ClientConn
	Identity   csi.IdentityClient
	Controller csi.ControllerClient
	Node       csi.NodeClient

	serveErr chan error
	stopped  bool
}

// Start builds a driver from o, serves it and connects clients; the test's
// cleanup stops it.
func Start(t testing.TB, o Options) *Harness {
	t.Helper()
	// A short directory: unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "csi-cache-driver")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if o.Store == nil {
		o.Store = NewMemStore(1<<40, 1<<30)
	}
	if o.Kernel == nil {
		devDir := filepath.Join(dir, "dev")
		if err := os.Mkdir(devDir, 0o700); err != nil {
			t.Fatal(err)
		}
		o.Kernel = NewFakeKernel(devDir)
	}
	if o.Mounter == nil {
		o.Mounter = NewFakeMounter(o.Kernel)
	}
	if o.StateDir == "" {
		o.StateDir = filepath.Join(dir, "state")
	}
	if o.NodeID == "" {
		o.NodeID = "node-1"
	}
	h := &Harness{Dir: dir, Opts: o, Attacher: o.Kernel.Attacher(), serveErr: make(chan error, 1)}
	h.Driver, err = driver.New(driver.Config{
		NodeID:     o.NodeID,
		MaxVolumes: o.MaxVolumes,
		StateDir:   o.StateDir,
		Store:      o.Store,
		Attacher:   h.Attacher,
		Mounter:    o.Mounter,
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	h.Endpoint = "unix://" + sock
	l, err := driver.Listen(h.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	go func() { h.serveErr <- h.Driver.Serve(l) }()
	h.Conn, err = grpc.NewClient(h.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.Identity = csi.NewIdentityClient(h.Conn)
	h.Controller = csi.NewControllerClient(h.Conn)
	h.Node = csi.NewNodeClient(h.Conn)
	t.Cleanup(func() {
		if err := h.Stop(); err != nil {
			t.Error(err)
		}
	})
	return h
}

// Stop stops the driver the way a plugin process exits: no volume is
// unstaged; the kernel's devices lose their server and keep their mounts.
func (h *Harness) Stop() error {
	if h.stopped {
		return nil
	}
	h.stopped = true
	h.Conn.Close()
	if err := h.Driver.Stop(); err != nil {
		return err
	}
	return <-h.serveErr
}

// Restart stops h and starts a new driver on the same state directory,
// kernel and mounts, over store (the re-opened cache set; nil reuses h's).
func (h *Harness) Restart(t testing.TB, store driver.VolumeStore) *Harness {
	t.Helper()
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	o := h.Opts
	if store != nil {
		o.Store = store
	}
	return Start(t, o)
}
