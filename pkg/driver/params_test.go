package driver

import (
	"errors"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-cache/csi-cache/pkg/engine"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"4194304", 4 << 20, true},
		{"4Mi", 4 << 20, true},
		{"10Gi", 10 << 30, true},
		{"1GiB", 1 << 30, true},
		{"500k", 500_000, true},
		{"1.5G", 1_500_000_000, true},
		{"0.5Ki", 512, true},
		{" 2Ti ", 2 << 40, true},
		{"7Ei", 7 << 60, true},
		{"8Ei", 0, false}, // overflows int64
		{"", 0, false},
		{"Mi", 0, false},
		{"-1", 0, false},
		{"1.5", 0, false}, // not whole bytes
		{"1..5Gi", 0, false},
		{".", 0, false},
		{"4 Mi", 0, false},
		{"4mi", 0, false},
		{"4MB", 0, false},
		{"0x10", 0, false},
		{"1e3", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestCheckVolumeID(t *testing.T) {
	for _, id := range []string{"pvc-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "a", "A.b_c-d", strings.Repeat("x", MaxIDLength)} {
		if err := checkVolumeID(id); err != nil {
			t.Errorf("checkVolumeID(%q): %v", id, err)
		}
	}
	for _, id := range []string{"", "a/b", "/a", "..", "a..b", ".a", "-a", "_a", "a\x00b", "a b", "a\n", "é", "a:b",
		strings.Repeat("x", MaxIDLength+1)} {
		if err := checkVolumeID(id); !errors.Is(err, ErrInvalid) {
			t.Errorf("checkVolumeID(%q) = %v, want ErrInvalid", id, err)
		}
	}
}

func TestVolumeSize(t *testing.T) {
	tests := []struct {
		req, lim, want int64
		err            error
	}{
		{0, 0, DefaultVolumeSize, nil},
		{0, 1 << 20, 1 << 20, nil},
		{1, 0, 4096, nil},
		{4096, 4096, 4096, nil},
		{4097, 0, 8192, nil},
		{4097, 5000, 0, ErrOutOfRange},
		{10, 5, 0, ErrInvalid},
		{-1, 0, 0, ErrInvalid},
		{0, -1, 0, ErrInvalid},
		{1<<63 - 1, 0, 0, ErrOutOfRange},
	}
	for _, tt := range tests {
		got, err := volumeSize(&csi.CapacityRange{RequiredBytes: tt.req, LimitBytes: tt.lim})
		if got != tt.want || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
			t.Errorf("volumeSize(%d, %d) = %d, %v; want %d, %v", tt.req, tt.lim, got, err, tt.want, tt.err)
		}
	}
	if got, err := volumeSize(nil); got != DefaultVolumeSize || err != nil {
		t.Errorf("volumeSize(nil) = %d, %v", got, err)
	}
}

func TestParseParams(t *testing.T) {
	tests := []struct {
		in   map[string]string
		want volumeParams
		err  bool
	}{
		{nil, volumeParams{mode: engine.Writethrough, backing: engine.BackingFile}, false},
		{map[string]string{"cacheMode": "writeback", "backing": "none", "sequentialCutoff": "1Mi", "csi.storage.k8s.io/fstype": "xfs"},
			volumeParams{mode: engine.Writeback, backing: engine.BackingNone, seqCutoff: 1 << 20, fsType: "xfs"}, false},
		{map[string]string{"backing": "none"}, volumeParams{mode: engine.Writeback, backing: engine.BackingNone}, false},
		{map[string]string{"backing": "none", "cacheMode": ""}, volumeParams{mode: engine.Writeback, backing: engine.BackingNone}, false},
		{map[string]string{"backing": "none", "cacheMode": "writethrough"}, volumeParams{}, true},
		{map[string]string{"backing": "none", "cacheMode": "none"}, volumeParams{}, true},
		{map[string]string{"sequentialCutoff": "0"}, volumeParams{mode: engine.Writethrough, backing: engine.BackingFile, seqCutoff: engine.NoSeqCutoff}, false},
		{map[string]string{"csi.storage.k8s.io/pv/name": "pv"}, volumeParams{mode: engine.Writethrough, backing: engine.BackingFile}, false},
		{map[string]string{"cacheMode": "fast"}, volumeParams{}, true},
		{map[string]string{"backing": "blockdev"}, volumeParams{}, true},
		{map[string]string{"sequentialCutoff": "big"}, volumeParams{}, true},
		{map[string]string{"fsType": "ext4"}, volumeParams{}, true},
	}
	for _, tt := range tests {
		got, err := parseParams(tt.in)
		if tt.err {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("parseParams(%v) = %v, want ErrInvalid", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseParams(%v) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}
