package driver

import (
	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/nbd"
)

// VolumeStore is what the driver needs from the node's cache set. EngineStore
// is the product implementation over *engine.CacheSet; the tests use an
// in-memory one (drivertest.MemStore). Errors are the engine's sentinels
// (engine.ErrNoVolume, ErrVolumeExists, ErrInvalid, ErrNoSpace, ...), which
// toStatus maps to gRPC codes.
type VolumeStore interface {
	// CreateVolume creates a volume; engine.ErrVolumeExists if the name is taken.
	CreateVolume(spec engine.VolumeSpec) (Volume, error)
	// Volume returns the open volume named name, or engine.ErrNoVolume.
	Volume(name string) (Volume, error)
	// Volumes lists the volumes in increasing id order.
	Volumes() []engine.VolumeInfo
	// DeleteVolume invalidates a volume's cached data and removes its backing
	// data; engine.ErrNoVolume if absent.
	DeleteVolume(name string) error
	// Capacity is the size of the largest volume with that backing that could
	// be created now, from the real free space of the backing directory or
	// the cache, less what existing volumes may still claim.
	Capacity(kind engine.BackingKind) (int64, error)
	// Health is nil while the cache set can serve IO, else the error that
	// stops it.
	Health() error
}

// Volume is an open volume: the NBD backend of its export, plus what the
// driver asks of it. *engine.Volume implements it.
type Volume interface {
	nbd.Backend
	// Info describes the volume.
	Info() engine.VolumeInfo
	// Resize grows the volume to size bytes.
	Resize(size uint64) error
	// Health is nil while the volume can serve IO.
	Health() error
}

var _ Volume = (*engine.Volume)(nil)
