package driver

import (
	"errors"
	"fmt"
	"io/fs"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// Mounter is what the Node service does with filesystems and bind mounts.
// NewMounter is the product implementation over k8s.io/mount-utils; the tests
// use drivertest.FakeMounter, which records mounts without making them.
type Mounter interface {
	// FormatAndMount mounts device at target, first creating a filesystem
	// of fsType on it if it has none (mount-utils SafeFormatAndMount: a
	// device with another filesystem is never reformatted).
	FormatAndMount(device, target, fsType string, options []string) error
	// Mount mounts source at target (bind mounts pass "bind" in options).
	Mount(source, target, fsType string, options []string) error
	// IsMountPoint reports whether path is a mount point (bind mounts
	// included); false with no error if path does not exist.
	IsMountPoint(path string) (bool, error)
	// Unmount unmounts target.
	Unmount(target string) error
	// CleanupMountPoint unmounts path if it is mounted and removes it.
	CleanupMountPoint(path string) error
	// ResizeFS grows the filesystem on device, mounted at mountPath, to the
	// size of the device.
	ResizeFS(device, mountPath string) error
}

// kernelMounter is the Mounter of the product.
type kernelMounter struct {
	sfm    *mount.SafeFormatAndMount
	resize *mount.ResizeFs
}

// NewMounter returns the Mounter that runs mount, mkfs, blkid, resize2fs and
// xfs_growfs.
func NewMounter() Mounter {
	ex := utilexec.New()
	return &kernelMounter{
		sfm:    mount.NewSafeFormatAndMount(mount.New(""), ex),
		resize: mount.NewResizeFs(ex),
	}
}

func (m *kernelMounter) FormatAndMount(device, target, fsType string, options []string) error {
	return m.sfm.FormatAndMount(device, target, fsType, options)
}

func (m *kernelMounter) Mount(source, target, fsType string, options []string) error {
	return m.sfm.Mount(source, target, fsType, options)
}

func (m *kernelMounter) IsMountPoint(path string) (bool, error) {
	ok, err := m.sfm.IsMountPoint(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return ok, err
}

func (m *kernelMounter) Unmount(target string) error { return m.sfm.Unmount(target) }

func (m *kernelMounter) CleanupMountPoint(path string) error {
	return mount.CleanupMountPoint(path, m.sfm, true)
}

func (m *kernelMounter) ResizeFS(device, mountPath string) error {
	need, err := m.resize.NeedResize(device, mountPath)
	if err != nil {
		return fmt.Errorf("resize filesystem on %s: %w", device, err)
	}
	if !need {
		return nil
	}
	if _, err := m.resize.Resize(device, mountPath); err != nil {
		return fmt.Errorf("resize filesystem on %s: %w", device, err)
	}
	return nil
}
