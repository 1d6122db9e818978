package engine

import (
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// CacheMode is how a volume uses the cache.
type CacheMode uint8

// Cache modes. The values are the on-disk ones.
const (
	// Writethrough writes the backing store and the cache; reads are cached.
	Writethrough = CacheMode(ondisk.CacheWritethrough)
	// Writeback acknowledges writes once they are in the cache and writes them
	// back to the backing store in the background.
	Writeback = CacheMode(ondisk.CacheWriteback)
	// Writearound writes only the backing store (invalidating the cache); reads
	// are cached.
	Writearound = CacheMode(ondisk.CacheWritearound)
	// NoCache bypasses the cache for reads and writes.
	NoCache = CacheMode(ondisk.CacheNone)
)

var cacheModeNames = map[CacheMode]string{
	Writethrough: "writethrough", Writeback: "writeback", Writearound: "writearound", NoCache: "none",
}

func (m CacheMode) String() string {
	if s, ok := cacheModeNames[m]; ok {
		return s
	}
	return fmt.Sprintf("CacheMode(%d)", uint8(m))
}

// ParseCacheMode parses "writethrough", "writeback", "writearound" or "none"
// (case-insensitive). The empty string is Writethrough, the default.
func ParseCacheMode(s string) (CacheMode, error) {
	if s == "" {
		return Writethrough, nil
	}
	for m, name := range cacheModeNames {
		if strings.EqualFold(s, name) {
			return m, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown cache mode %q (want writethrough, writeback, writearound or none)", ErrInvalid, s)
}

// BackingKind is where a volume's durable data lives.
type BackingKind uint8

// Backing stores.
const (
	// BackingFile is a sparse file in the cache set's backing directory, created
	// and removed with the volume.
	BackingFile = BackingKind(ondisk.BackingFile)
	// BackingBlockDev is a block device named by the volume's BackingPath.
	BackingBlockDev = BackingKind(ondisk.BackingBlockDev)
	// BackingNone is a cache-only volume: its data lives only in the cache.
	BackingNone = BackingKind(ondisk.BackingNone)
)

var backingNames = map[BackingKind]string{BackingFile: "file", BackingBlockDev: "blockdev", BackingNone: "none"}

func (b BackingKind) String() string {
	if s, ok := backingNames[b]; ok {
		return s
	}
	return fmt.Sprintf("BackingKind(%d)", uint8(b))
}

// ParseBackingKind parses "file", "blockdev" or "none" (case-insensitive). The
// empty string is BackingFile, the default.
func ParseBackingKind(s string) (BackingKind, error) {
	if s == "" {
		return BackingFile, nil
	}
	for b, name := range backingNames {
		if strings.EqualFold(s, name) {
			return b, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown backing %q (want file, blockdev or none)", ErrInvalid, s)
}

// DefaultSeqCutoff is the default sequential cutoff: a sequential stream longer
// than this bypasses the cache (bcache's sequential_cutoff).
const DefaultSeqCutoff = 4 << 20

// Errors of the volume API. Callers test them with errors.Is. Each also wraps
// the errno a block device would return (errors.As finds a syscall.Errno), so
// that an NBD server maps them without knowing the engine.
var (
	// ErrInvalid: an argument is out of range or malformed.
	ErrInvalid error = &errnoError{"engine: invalid argument", syscall.EINVAL}
	// ErrNoVolume: no volume has that name.
	ErrNoVolume error = &errnoError{"engine: no such volume", syscall.ENOENT}
	// ErrVolumeExists: a volume of that name exists.
	ErrVolumeExists error = &errnoError{"engine: volume exists", syscall.EEXIST}
	// ErrNoSpace: the cache set cannot hold another volume, or the backing
	// store has no room.
	ErrNoSpace error = &errnoError{"engine: no space", syscall.ENOSPC}
	// ErrIO: a device returned an error the volume could not work around (for
	// example a cache read error on dirty data).
	ErrIO error = &errnoError{"engine: io error", syscall.EIO}
	// ErrVolumeClosed: the volume was deleted or its cache set closed.
	ErrVolumeClosed error = &errnoError{"engine: volume closed", syscall.ESHUTDOWN}
)

// errnoError is an engine error that wraps an errno.
type errnoError struct {
	msg   string
	errno syscall.Errno
}

func (e *errnoError) Error() string { return e.msg }
func (e *errnoError) Unwrap() error { return e.errno }

// VolumeSpec describes a volume to create.
type VolumeSpec struct {
	// Name is unique among the cache set's volumes: 1..253 bytes.
	Name string
	// Size in bytes, a positive multiple of 512.
	Size uint64
	// Mode; the zero value is Writethrough.
	Mode CacheMode
	// Backing; the zero value is BackingFile.
	Backing BackingKind
	// BackingPath is the block device for BackingBlockDev; ignored otherwise
	// (a BackingFile volume's file is named by the engine in Config.BackingDir).
	BackingPath string
	// SeqCutoff in bytes; 0 means DefaultSeqCutoff, and NoSeqCutoff disables it.
	SeqCutoff uint64
}

// NoSeqCutoff as VolumeSpec.SeqCutoff disables the sequential cutoff.
const NoSeqCutoff = ^uint64(0)

// VolumeInfo describes an existing volume.
type VolumeInfo struct {
	ID          uint64
	Name        string
	Size        uint64
	Mode        CacheMode
	Backing     BackingKind
	BackingPath string
	SeqCutoff   uint64
	Created     time.Time
	Stats       VolumeStats
}

// VolumeStats are a volume's counters since the cache set was opened (DirtyBytes
// is a level, not a counter).
type VolumeStats struct {
	ReadOps, WriteOps     uint64
	ReadBytes, WriteBytes uint64
	// Hits and Misses count read sectors served from the cache and from the
	// backing store; Bypassed counts sectors that skipped the cache (sequential
	// cutoff, cache full, mode none or writearound writes).
	Hits, Misses, Bypassed uint64
	// DirtyBytes is the data in the cache not yet written back.
	DirtyBytes uint64
	// WritebackBytes counts bytes written back; WritebackRate is the PI
	// controller's current target in bytes per second.
	WritebackBytes uint64
	WritebackRate  float64
	// CacheIOErrors and BackingIOErrors count failed device IOs.
	CacheIOErrors, BackingIOErrors uint64
}

// HitRatio is Hits / (Hits + Misses), or 0 with no reads.
func (s VolumeStats) HitRatio() float64 {
	if s.Hits+s.Misses == 0 {
		return 0
	}
	return float64(s.Hits) / float64(s.Hits+s.Misses)
}

// SetStats describes the cache set as a whole.
type SetStats struct {
	CacheBytes     uint64 // bytes of buckets
	FreeBytes      uint64 // bytes in free or clean (reclaimable) buckets
	DirtyBytes     uint64
	MetadataBytes  uint64 // bytes in btree buckets
	BucketSize     uint32
	Buckets        uint64
	JournalFill    float64 // 0..1
	NodeCacheBytes uint64
	NodeCacheNodes int
	NodeCachePeak  int
	BtreeDepth     int
	BtreeNodes     uint64

	FlushWriteRuns, FlushWriteNodes          uint64
	ReaperSkips, NodeFreeWaits               uint64
	GCRuns, GCBucketsFreed                   uint64
	Hits, Misses, Bypassed                   uint64
	CacheIOErrors, BackingIOErrors, Volumes  uint64
	WritebackBytes                           uint64
	Splits, Compactions, Merges, RootChanges uint64
}
