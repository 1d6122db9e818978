package driver

import (
	"fmt"
	"math"
	"math/big"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-cache/csi-cache/pkg/engine"
)

// StorageClass parameters and volume context keys.
const (
	ParamCacheMode        = "cacheMode"
	ParamSequentialCutoff = "sequentialCutoff"
	ParamBacking          = "backing"
	// ParamFSType is the external-provisioner's fsType parameter; it normally
	// strips it and sets the mount capability's fs_type instead.
	ParamFSType = "csi.storage.k8s.io/fstype"
	// paramPrefixReserved: keys under this prefix are the CO's
	// (csi.storage.k8s.io/pvc/name, ...) and are accepted and ignored.
	paramPrefixReserved = "csi.storage.k8s.io/"

	// ContextFSType is the volume context key carrying the filesystem type
	// chosen at creation, used by NodeStage when the capability has none.
	ContextFSType = "fsType"
)

// Sizes.
const (
	// DefaultVolumeSize is the size of a volume created without a capacity range.
	DefaultVolumeSize = 1 << 30
	// volumeAlign: volume sizes are rounded up to a multiple of this.
	volumeAlign = 4096
	// MaxIDLength is the longest volume id (and CreateVolume name) accepted:
	// the CSI spec's size limit for strings.
	MaxIDLength = 128
)

// Filesystems NodeStage can create.
var supportedFS = map[string]bool{"ext4": true, "xfs": true}

// DefaultFSType is used when neither the capability nor the parameters name one.
const DefaultFSType = "ext4"

// checkVolumeID validates a volume id (also a CreateVolume name): 1 to 128
// bytes of letters, digits, '.', '_' and '-', starting with a letter or digit,
// and no "..". Ids become file names in the state directory and NBD export
// names, so nothing that could name another path gets through.
func checkVolumeID(id string) error {
	if id == "" {
		return invalidf("volume id is required")
	}
	if len(id) > MaxIDLength {
		return invalidf("volume id %.32q... is %d bytes long (the limit is %d)", id, len(id), MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return invalidf("volume id %q: character %q at %d is not allowed (want [A-Za-z0-9][A-Za-z0-9._-]*)", id, c, i)
		}
	}
	if strings.Contains(id, "..") {
		return invalidf("volume id %q contains %q", id, "..")
	}
	return nil
}

// checkPath validates a path given by the CO: required, absolute, clean
// enough, no NUL.
func checkPath(what, p string) error {
	switch {
	case p == "":
		return invalidf("%s is required", what)
	case strings.IndexByte(p, 0) >= 0:
		return invalidf("%s %q contains a NUL byte", what, p)
	case !filepath.IsAbs(p):
		return invalidf("%s %q is not an absolute path", what, p)
	}
	return nil
}

// volumeParams are the parsed StorageClass parameters of a volume.
type volumeParams struct {
	mode      engine.CacheMode
	backing   engine.BackingKind
	seqCutoff uint64 // as engine.VolumeSpec.SeqCutoff: 0 default, NoSeqCutoff disabled
	fsType    string // "" if not given
}

// parseParams parses CreateVolume/GetCapacity/ValidateVolumeCapabilities
// parameters. Unknown keys are rejected (a misspelt cacheMode would otherwise
// be silently ignored) except the CO's own csi.storage.k8s.io/ keys.
func parseParams(p map[string]string) (volumeParams, error) {
	// Explicit defaults: the engine's enums start at 1.
	vp := volumeParams{mode: engine.Writethrough, backing: engine.BackingFile}
	var err error
	modeGiven := false
	for k, v := range p {
		switch k {
		case ParamCacheMode:
			if vp.mode, err = engine.ParseCacheMode(v); err != nil {
				return vp, invalidf("parameter %s: %v", k, err)
			}
			modeGiven = v != ""
		case ParamBacking:
			if vp.backing, err = engine.ParseBackingKind(v); err != nil {
				return vp, invalidf("parameter %s: %v", k, err)
			}
			if vp.backing == engine.BackingBlockDev {
				return vp, invalidf("parameter %s=%s is not supported by the provisioner yet (a StorageClass would give every volume the same device); use file or none", k, v)
			}
		case ParamSequentialCutoff:
			n, err := ParseSize(v)
			if err != nil {
				return vp, invalidf("parameter %s: %v", k, err)
			}
			if n == 0 {
				vp.seqCutoff = engine.NoSeqCutoff
			} else {
				vp.seqCutoff = uint64(n)
			}
		case ParamFSType:
			if vp.fsType, err = checkFSType(v); err != nil {
				return vp, err
			}
		default:
			if !strings.HasPrefix(k, paramPrefixReserved) {
				return vp, invalidf("unknown parameter %q (want %s, %s, %s or %s)", k,
					ParamCacheMode, ParamSequentialCutoff, ParamBacking, ParamFSType)
			}
		}
	}
	if vp.backing == engine.BackingNone {
		// A cache-only volume's data is dirty for good: the engine records
		// it as writeback, and any other mode is a contradiction.
		if modeGiven && vp.mode != engine.Writeback {
			return vp, invalidf("parameter %s=%s: a cache-only volume (%s=none) is always writeback", ParamCacheMode, vp.mode, ParamBacking)
		}
		vp.mode = engine.Writeback
	}
	return vp, nil
}

// spec returns the engine spec of a volume with these parameters.
func (vp volumeParams) spec(name string, size int64) engine.VolumeSpec {
	return engine.VolumeSpec{Name: name, Size: uint64(size), Mode: vp.mode, Backing: vp.backing, SeqCutoff: vp.seqCutoff}
}

// seqCutoffOf is the effective cutoff of a spec value (0 means the default).
func seqCutoffOf(v uint64) uint64 {
	if v == 0 {
		return engine.DefaultSeqCutoff
	}
	return v
}

// matches reports whether an existing volume has these parameters, and if
// not, which one differs.
func (vp volumeParams) matches(info engine.VolumeInfo) (bool, string) {
	switch {
	case info.Mode != vp.mode:
		return false, fmt.Sprintf("cache mode %s, requested %s", info.Mode, vp.mode)
	case info.Backing != vp.backing:
		return false, fmt.Sprintf("backing %s, requested %s", info.Backing, vp.backing)
	case seqCutoffOf(info.SeqCutoff) != seqCutoffOf(vp.seqCutoff):
		return false, fmt.Sprintf("sequential cutoff %s, requested %s", cutoffString(info.SeqCutoff), cutoffString(vp.seqCutoff))
	}
	return true, ""
}

func cutoffString(v uint64) string {
	switch v {
	case engine.NoSeqCutoff:
		return "0"
	case 0:
		return strconv.FormatUint(engine.DefaultSeqCutoff, 10)
	}
	return strconv.FormatUint(v, 10)
}

// volumeContext is what CreateVolume returns as the volume context (and what
// ListVolumes and ControllerGetVolume repeat).
func volumeContext(info engine.VolumeInfo, fsType string) map[string]string {
	ctx := map[string]string{
		ParamCacheMode:        info.Mode.String(),
		ParamBacking:          info.Backing.String(),
		ParamSequentialCutoff: cutoffString(info.SeqCutoff),
	}
	if fsType != "" {
		ctx[ContextFSType] = fsType
	}
	return ctx
}

func checkFSType(fs string) (string, error) {
	if fs == "" || supportedFS[fs] {
		return fs, nil
	}
	return "", invalidf("filesystem %q is not supported (want ext4 or xfs)", fs)
}

// capability is a validated volume capability.
type capability struct {
	block      bool
	fsType     string // mount only; "" if not given
	mountFlags []string
	mode       csi.VolumeCapability_AccessMode_Mode
}

func (c capability) readOnlyMode() bool {
	return c.mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}

func (c capability) singleWriter() bool {
	return c.mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
}

// accessType names the access type for messages.
func (c capability) accessType() string {
	if c.block {
		return "block"
	}
	return "mount"
}

// parseCapability validates one capability: single-node access modes only,
// mount (ext4, xfs) or block.
func parseCapability(vc *csi.VolumeCapability) (capability, error) {
	if vc == nil {
		return capability{}, invalidf("volume capability is required")
	}
	var c capability
	switch m := vc.GetAccessMode().GetMode(); m {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
		c.mode = m
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return c, invalidf("volume capability has no access mode")
	default:
		return c, invalidf("access mode %s is not supported: csi-cache volumes are node-local (want a SINGLE_NODE_* mode)", m)
	}
	switch {
	case vc.GetBlock() != nil:
		c.block = true
	case vc.GetMount() != nil:
		mnt := vc.GetMount()
		var err error
		if c.fsType, err = checkFSType(mnt.GetFsType()); err != nil {
			return c, err
		}
		if mnt.GetVolumeMountGroup() != "" {
			return c, invalidf("volume_mount_group is not supported")
		}
		c.mountFlags = mnt.GetMountFlags()
		for _, f := range c.mountFlags {
			if f == "" || strings.ContainsAny(f, "\x00\n") {
				return c, invalidf("mount flag %q is malformed", f)
			}
		}
	default:
		return c, invalidf("volume capability has no access type (want mount or block)")
	}
	return c, nil
}

// parseCapabilities validates a non-empty list of capabilities.
func parseCapabilities(vcs []*csi.VolumeCapability) ([]capability, error) {
	if len(vcs) == 0 {
		return nil, invalidf("volume capabilities are required")
	}
	out := make([]capability, 0, len(vcs))
	for i, vc := range vcs {
		c, err := parseCapability(vc)
		if err != nil {
			return nil, fmt.Errorf("volume capability %d: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// volumeSize picks the size of a new volume from a capacity range: the
// required bytes (or DefaultVolumeSize, capped by the limit) rounded up to
// volumeAlign, which must not exceed the limit.
func volumeSize(cr *csi.CapacityRange) (int64, error) {
	req, lim := cr.GetRequiredBytes(), cr.GetLimitBytes()
	switch {
	case req < 0 || lim < 0:
		return 0, invalidf("capacity range has a negative bound (required %d, limit %d)", req, lim)
	case lim > 0 && req > lim:
		return 0, invalidf("capacity range: required bytes %d exceed the limit %d", req, lim)
	}
	size := req
	if size == 0 {
		size = DefaultVolumeSize
		if lim > 0 && lim < size {
			size = lim
		}
	}
	if size > math.MaxInt64-volumeAlign {
		return 0, errorf(ErrOutOfRange, "capacity %d bytes is too large", size)
	}
	size = (size + volumeAlign - 1) / volumeAlign * volumeAlign
	if lim > 0 && size > lim {
		return 0, errorf(ErrOutOfRange, "capacity range [%d, %d] holds no multiple of %d bytes", req, lim, volumeAlign)
	}
	return size, nil
}

// sizeFits reports whether an existing volume of size bytes satisfies a
// capacity range.
func sizeFits(size int64, cr *csi.CapacityRange) bool {
	req, lim := cr.GetRequiredBytes(), cr.GetLimitBytes()
	return size >= req && (lim == 0 || size <= lim)
}

// sizeSuffixes are the quantity suffixes ParseSize accepts.
var sizeSuffixes = map[string]int64{
	"":  1,
	"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
	"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50, "EiB": 1 << 60,
}

// ParseSize parses a byte count: a plain number of bytes ("4194304") or a
// Kubernetes quantity with a binary or decimal suffix ("4Mi", "10Gi", "1.5G",
// "500k"); KiB/MiB/GiB... are accepted as binary too. The result must be a
// whole number of bytes.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, suffix := t[:i], t[i:]
	mult, ok := sizeSuffixes[suffix]
	if num == "" || !ok || strings.Count(num, ".") > 1 || num == "." {
		return 0, fmt.Errorf("%q is not a size (want bytes or a quantity such as 4Mi or 10Gi)", s)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("%q is not a whole number of bytes", s)
	}
	if !r.Num().IsInt64() {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return r.Num().Int64(), nil
}
