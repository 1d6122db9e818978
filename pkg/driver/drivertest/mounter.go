package drivertest

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"

	mount "k8s.io/mount-utils"

	"github.com/csi-cache/csi-cache/pkg/driver"
)

// FakeMounter is a driver.Mounter that records mounts in memory (over
// mount-utils' FakeMounter). Its "mkfs" writes a small signature naming the
// filesystem into the first sector of the device, through the FakeKernel, so
// like a real filesystem it lives in the volume's data: it survives plugin
// restarts, and a new volume has none.
type FakeMounter struct {
	m *mount.FakeMounter
	k *FakeKernel

	mu      sync.Mutex // guards resized
	resized []string   // devices whose filesystem was grown
}

var _ driver.Mounter = (*FakeMounter)(nil)

// NewFakeMounter returns a mounter with nothing mounted, formatting devices
// of k.
func NewFakeMounter(k *FakeKernel) *FakeMounter {
	return &FakeMounter{m: mount.NewFakeMounter(nil), k: k}
}

const fsMagic = "csi-cache-fakefs:"

// Format returns the filesystem on device, or "" if it has none.
func (f *FakeMounter) Format(device string) (string, error) {
	idx, err := f.k.IndexOf(device)
	if err != nil {
		return "", err
	}
	sector := make([]byte, 512)
	if err := f.k.ReadAt(idx, sector, 0); err != nil {
		return "", err
	}
	s := string(sector)
	if !strings.HasPrefix(s, fsMagic) {
		return "", nil
	}
	s = s[len(fsMagic):]
	return s[:strings.IndexByte(s, 0)], nil
}

// FormatAndMount implements driver.Mounter; like SafeFormatAndMount it
// refuses a device that holds another filesystem.
func (f *FakeMounter) FormatAndMount(device, target, fsType string, options []string) error {
	have, err := f.Format(device)
	if err != nil {
		return err
	}
	switch {
	case have == "" && slices.Contains(options, "ro"):
		return fmt.Errorf("%s has no filesystem and is to be mounted read-only", device)
	case have == "":
		sector := make([]byte, 512)
		copy(sector, fsMagic+fsType)
		idx, err := f.k.IndexOf(device)
		if err != nil {
			return err
		}
		if err := f.k.WriteAt(idx, sector, 0); err != nil {
			return fmt.Errorf("mkfs.%s %s: %w", fsType, device, err)
		}
	case have != fsType:
		return fmt.Errorf("%s holds %s, not %s", device, have, fsType)
	}
	return f.m.Mount(device, target, fsType, options)
}

// Mount implements driver.Mounter.
func (f *FakeMounter) Mount(source, target, fsType string, options []string) error {
	return f.m.Mount(source, target, fsType, options)
}

// IsMountPoint implements driver.Mounter.
func (f *FakeMounter) IsMountPoint(path string) (bool, error) {
	ok, err := f.m.IsMountPoint(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return ok, err
}

// Unmount implements driver.Mounter.
func (f *FakeMounter) Unmount(target string) error { return f.m.Unmount(target) }

// CleanupMountPoint implements driver.Mounter.
func (f *FakeMounter) CleanupMountPoint(path string) error {
	return mount.CleanupMountPoint(path, f.m, true)
}

// ResizeFS implements driver.Mounter.
func (f *FakeMounter) ResizeFS(device, _ string) error {
	have, err := f.Format(device)
	if err != nil {
		return err
	}
	if have == "" {
		return fmt.Errorf("%s has no filesystem to resize", device)
	}
	f.mu.Lock()
	f.resized = append(f.resized, device)
	f.mu.Unlock()
	return nil
}

// Resized lists the devices whose filesystem was grown.
func (f *FakeMounter) Resized() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.resized...)
}

// MountPoints lists the mounts.
func (f *FakeMounter) MountPoints() []mount.MountPoint {
	mps, _ := f.m.List()
	return append([]mount.MountPoint(nil), mps...)
}

// IsMounted reports whether path is a mount point.
func (f *FakeMounter) IsMounted(path string) bool {
	ok, _ := f.IsMountPoint(path)
	return ok
}
