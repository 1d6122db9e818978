package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The state directory records what NodeStage and NodePublish did, so that a
// restarted plugin can take its volumes back (see adopt.go):
//
//	<state-dir>/
//	  volumes/
//	    <volume-id>.json      one record per staged volume
//	    .<volume-id>.json.tmp a record being written (removed at start)
//
// A record is a JSON object (stageRecord), version 1:
//
//	{"version":1, "volumeId":"pvc-1", "stagingPath":"/var/lib/kubelet/...",
//	 "block":false, "fsType":"ext4", "mountFlags":["noatime"], "readOnly":false,
//	 "nbdIndex":0, "device":"/dev/nbd0",
//	 "targets":{"/var/lib/kubelet/pods/.../mount":{"readOnly":false,"block":false}}}
//
// Records are replaced atomically: written to the temporary name, synced,
// renamed over the record and the directory synced. A record exists from the
// moment the device is attached until it is detached, so a crash in between
// leaves a record that says which device to take back or detach.
const stateVersion = 1

// stageRecord is the state of one staged volume.
type stageRecord struct {
	Version     int      `json:"version"`
	VolumeID    string   `json:"volumeId"`
	StagingPath string   `json:"stagingPath"`
	Block       bool     `json:"block"`
	FSType      string   `json:"fsType,omitempty"`
	MountFlags  []string `json:"mountFlags,omitempty"`
	ReadOnly    bool     `json:"readOnly"`
	// SingleWriter: staged with SINGLE_NODE_SINGLE_WRITER.
	SingleWriter bool   `json:"singleWriter,omitempty"`
	NBDIndex     int    `json:"nbdIndex"`
	Device       string `json:"device"`
	// Staged is false while NodeStage is still formatting and mounting.
	Staged  bool                     `json:"staged"`
	Targets map[string]publishRecord `json:"targets,omitempty"`
}

// publishRecord is one NodePublish target of a staged volume.
type publishRecord struct {
	ReadOnly bool `json:"readOnly"`
	Block    bool `json:"block"`
}

// stateDir reads and writes stage records. Callers serialize access to one
// volume's record with the volume lock.
type stateDir struct {
	dir string // <state-dir>/volumes
}

func openStateDir(root string) (*stateDir, error) {
	dir := filepath.Join(root, "volumes")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	return &stateDir{dir: dir}, nil
}

func (s *stateDir) path(id string) string { return filepath.Join(s.dir, id+".json") }

// load returns the record of id, or nil if there is none.
func (s *stateDir) load(id string) (*stageRecord, error) {
	b, err := os.ReadFile(s.path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	return decodeRecord(b, id)
}

func decodeRecord(b []byte, id string) (*stageRecord, error) {
	var r stageRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("state: record of %s: %w", id, err)
	}
	if r.Version != stateVersion {
		return nil, fmt.Errorf("state: record of %s has version %d, want %d", id, r.Version, stateVersion)
	}
	if r.VolumeID != id {
		return nil, fmt.Errorf("state: record of %s names volume %q", id, r.VolumeID)
	}
	return &r, nil
}

// save writes r atomically.
func (s *stateDir) save(r *stageRecord) error {
	r.Version = stateVersion
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	tmp := filepath.Join(s.dir, "."+r.VolumeID+".json.tmp")
	if err := writeSynced(tmp, b); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if err := os.Rename(tmp, s.path(r.VolumeID)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("state: %w", err)
	}
	return s.syncDir()
}

// remove deletes the record of id (no error if there is none).
func (s *stateDir) remove(id string) error {
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state: %w", err)
	}
	return s.syncDir()
}

// list returns every record in id order, removing leftover temporary files.
// A record that cannot be read is reported in errs and skipped.
func (s *stateDir) list() (recs []*stageRecord, errs []error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, []error{fmt.Errorf("state: %w", err)}
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	for _, e := range ents {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".json.tmp"):
			os.Remove(filepath.Join(s.dir, name))
		case strings.HasSuffix(name, ".json") && e.Type().IsRegular():
			id := strings.TrimSuffix(name, ".json")
			if checkVolumeID(id) != nil {
				errs = append(errs, fmt.Errorf("state: %s is not named after a volume id", name))
				continue
			}
			r, err := s.load(id)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if r != nil {
				recs = append(recs, r)
			}
		}
	}
	return recs, errs
}

func (s *stateDir) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("state: sync %s: %w", s.dir, err)
	}
	return nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
