package drivertest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/nbd"
	"github.com/csi-cache/csi-cache/pkg/nbd/netlink"
)

// FakeKernel stands in for the kernel's NBD devices. Like the kernel's, its
// devices outlive the plugin processes that attach them: an Attacher's Close
// (the process exits) leaves its devices set up but with no server behind
// them, and a new Attacher's Reattach (RECONFIGURE) connects them to the new
// process's volumes. IO on a device goes to the volume behind it and fails
// while there is none.
//
// Each device has a placeholder regular file, <dir>/nbdN, that stands in for
// the device node (a raw block volume is "bind-mounted" from it).
type FakeKernel struct {
	dir string

	mu       sync.Mutex // guards the fields below
	devs     map[int]*fakeDev
	noDriver bool
}

type fakeDev struct {
	index    int
	export   string
	readOnly bool
	size     int64
	backend  nbd.Backend   // nil while no server serves the device
	owner    *FakeAttacher // the Attacher whose server serves it
}

// NewFakeKernel returns a kernel with no devices; placeholder files go in dir.
func NewFakeKernel(dir string) *FakeKernel {
	return &FakeKernel{dir: dir, devs: make(map[int]*fakeDev)}
}

// SetNoDriver makes Attach and Reattach fail with netlink.ErrNoDriver, as on
// a kernel without the nbd module.
func (k *FakeKernel) SetNoDriver(v bool) {
	k.mu.Lock()
	k.noDriver = v
	k.mu.Unlock()
}

// DeviceInfo describes a device.
type DeviceInfo struct {
	Index    int
	Path     string
	Export   string
	Size     int64
	ReadOnly bool
	// Served is false while no plugin process serves the device.
	Served bool
}

// Devices lists the devices in index order.
func (k *FakeKernel) Devices() []DeviceInfo {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]DeviceInfo, 0, len(k.devs))
	for _, d := range k.devs {
		out = append(out, DeviceInfo{Index: d.index, Path: k.path(d.index), Export: d.export,
			Size: d.size, ReadOnly: d.readOnly, Served: d.backend != nil})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// ReadAt reads from device index through its volume.
func (k *FakeKernel) ReadAt(index int, p []byte, off int64) error {
	b, err := k.backend(index, off, int64(len(p)), false)
	if err != nil {
		return err
	}
	return b.ReadAt(p, off)
}

// WriteAt writes to device index through its volume (with FUA).
func (k *FakeKernel) WriteAt(index int, p []byte, off int64) error {
	b, err := k.backend(index, off, int64(len(p)), true)
	if err != nil {
		return err
	}
	return b.WriteAt(p, off, true)
}

func (k *FakeKernel) backend(index int, off, n int64, write bool) (nbd.Backend, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	d, ok := k.devs[index]
	switch {
	case !ok:
		return nil, fmt.Errorf("nbd%d: no such device", index)
	case d.backend == nil:
		return nil, fmt.Errorf("nbd%d: all connections are dead", index)
	case write && d.readOnly:
		return nil, fmt.Errorf("nbd%d: read-only", index)
	case off < 0 || off+n > d.size:
		return nil, fmt.Errorf("nbd%d: io [%d, +%d) beyond the device size %d", index, off, n, d.size)
	}
	return d.backend, nil
}

// IndexOf returns the index of the device whose node is path.
func (k *FakeKernel) IndexOf(path string) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := range k.devs {
		if k.path(i) == path {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%s: no such device", path)
}

func (k *FakeKernel) path(index int) string { return filepath.Join(k.dir, fmt.Sprintf("nbd%d", index)) }

// Attacher returns a new Attacher: one plugin process's view of the kernel.
func (k *FakeKernel) Attacher() *FakeAttacher { return &FakeAttacher{k: k} }

// FakeAttacher is a driver.Attacher over a FakeKernel.
type FakeAttacher struct {
	k *FakeKernel
}

var _ driver.Attacher = (*FakeAttacher)(nil)

// Attach implements driver.Attacher.
func (a *FakeAttacher) Attach(name string, vol nbd.Backend, readOnly bool) (driver.Device, error) {
	k := a.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.noDriver {
		return nil, netlink.ErrNoDriver
	}
	for _, d := range k.devs {
		if d.export == name && d.owner == a {
			return nil, fmt.Errorf("%w: %q", nbd.ErrExportExists, name)
		}
	}
	index := 0
	for k.devs[index] != nil {
		index++
	}
	if err := os.WriteFile(k.path(index), nil, 0o600); err != nil {
		return nil, err
	}
	k.devs[index] = &fakeDev{index: index, export: name, readOnly: readOnly, size: vol.Size(), backend: vol, owner: a}
	return &fakeDevice{k: k, index: index}, nil
}

// Reattach implements driver.Attacher.
func (a *FakeAttacher) Reattach(name string, vol nbd.Backend, readOnly bool, index int) (driver.Device, error) {
	k := a.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.noDriver {
		return nil, netlink.ErrNoDriver
	}
	d, ok := k.devs[index]
	switch {
	case !ok:
		return nil, fmt.Errorf("nbd%d: no such device", index)
	case d.export != name:
		return nil, fmt.Errorf("nbd%d serves export %q, not %q", index, d.export, name)
	case d.readOnly != readOnly:
		return nil, fmt.Errorf("nbd%d: read-only=%v cannot change on reconfigure", index, d.readOnly)
	case d.owner != nil:
		return nil, fmt.Errorf("nbd%d is still connected", index)
	}
	d.backend, d.owner = vol, a
	return &fakeDevice{k: k, index: index}, nil
}

// Connected implements driver.Attacher.
func (a *FakeAttacher) Connected(index int) (bool, error) {
	a.k.mu.Lock()
	defer a.k.mu.Unlock()
	_, ok := a.k.devs[index]
	return ok, nil
}

// Close implements driver.Attacher: the devices this Attacher served lose
// their server and wait for a Reattach.
func (a *FakeAttacher) Close() error {
	a.k.mu.Lock()
	defer a.k.mu.Unlock()
	for _, d := range a.k.devs {
		if d.owner == a {
			d.backend, d.owner = nil, nil
		}
	}
	return nil
}

// fakeDevice is a driver.Device of a FakeKernel.
type fakeDevice struct {
	k     *FakeKernel
	index int
}

func (d *fakeDevice) Path() string { return d.k.path(d.index) }
func (d *fakeDevice) Index() int   { return d.index }

// Resize sets the device size (it must not exceed the volume's).
func (d *fakeDevice) Resize(size int64) error {
	d.k.mu.Lock()
	defer d.k.mu.Unlock()
	dev, ok := d.k.devs[d.index]
	switch {
	case !ok:
		return fmt.Errorf("nbd%d: no such device", d.index)
	case dev.backend == nil:
		return fmt.Errorf("nbd%d: all connections are dead", d.index)
	case size > dev.backend.Size():
		return fmt.Errorf("nbd%d: size %d exceeds the export's %d", d.index, size, dev.backend.Size())
	}
	dev.size = size
	return nil
}

// Detach flushes the volume and removes the device.
func (d *fakeDevice) Detach() error {
	d.k.mu.Lock()
	defer d.k.mu.Unlock()
	dev, ok := d.k.devs[d.index]
	if !ok {
		return nil
	}
	if dev.backend != nil {
		if err := dev.backend.Flush(); err != nil {
			return fmt.Errorf("nbd%d: flush: %w", d.index, err)
		}
	}
	delete(d.k.devs, d.index)
	if err := os.Remove(d.k.path(d.index)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
