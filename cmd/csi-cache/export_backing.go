package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// backingFileSize opens path (a regular file or a block device) read-only and
// returns its absolute path and size, which must be a positive multiple of 512
// bytes to serve as a volume's backing store.
func backingFileSize(path string) (string, int64, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", 0, fmt.Errorf("-backing-file: %w", err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", 0, fmt.Errorf("-backing-file: %w", err)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		return "", 0, fmt.Errorf("-backing-file: %s is neither a regular file nor a block device", abs)
	}
	d, err := device.OpenFile(abs, device.FileOptions{ReadOnly: true})
	if err != nil {
		return "", 0, fmt.Errorf("-backing-file: %w", err)
	}
	size := d.Size()
	if err := d.Close(); err != nil {
		return "", 0, fmt.Errorf("-backing-file: %w", err)
	}
	if size <= 0 || size%512 != 0 {
		return "", 0, fmt.Errorf("-backing-file: %s has %d bytes, not a positive multiple of 512", abs, size)
	}
	return abs, size, nil
}

// delayedBackingOpener opens backing stores as the engine does by default
// (engine.OpenBackingFile) and adds delay to every read and write (and discard)
// of them, like nbdkit's delay filter with rdelay and wdelay: a slow backing
// store for benchmarks.
func delayedBackingOpener(delay time.Duration) func(engine.BackingKind, string, int64, bool) (device.Device, error) {
	return func(kind engine.BackingKind, path string, size int64, create bool) (device.Device, error) {
		d, err := engine.OpenBackingFile(kind, path, size, create)
		if err != nil {
			return nil, err
		}
		f, ok := d.(*device.File)
		if !ok {
			d.Close()
			return nil, fmt.Errorf("backing store %s: not a file", path)
		}
		return &delayedBacking{Delay: device.NewDelay(f, device.DelayOptions{Read: delay, Write: delay}), f: f}, nil
	}
}

// delayedBacking is a Delay over a File that still lets the engine grow a
// backing file (Volume.Resize looks for a Truncate method).
type delayedBacking struct {
	*device.Delay
	f *device.File
}

// Truncate resizes the underlying file.
func (d *delayedBacking) Truncate(size int64) error { return d.f.Truncate(size) }

// describeBacking names a volume's backing store for export's messages.
func describeBacking(info engine.VolumeInfo) string {
	if info.Backing == engine.BackingBlockDev {
		return info.BackingPath
	}
	return info.Backing.String()
}
