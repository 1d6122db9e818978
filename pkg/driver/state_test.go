package driver

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestStateDir(t *testing.T) {
	root := t.TempDir()
	s, err := openStateDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s.load("pvc-1"); r != nil || err != nil {
		t.Fatalf("load of a missing record: %v, %v", r, err)
	}
	rec := &stageRecord{VolumeID: "pvc-1", StagingPath: "/staging/pvc-1", FSType: "ext4", MountFlags: []string{"noatime"},
		NBDIndex: 3, Device: "/dev/nbd3", Staged: true,
		Targets: map[string]publishRecord{"/pods/a/mount": {ReadOnly: true}}}
	if err := s.save(rec); err != nil {
		t.Fatal(err)
	}
	got, err := s.load("pvc-1")
	if err != nil || !reflect.DeepEqual(got, rec) {
		t.Fatalf("load = %+v, %v; want %+v", got, err, rec)
	}

	// Leftovers and damage: a temporary file from a crash mid-save is
	// removed; bad records are reported and skipped; good ones listed.
	dir := filepath.Join(root, "volumes")
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(".pvc-2.json.tmp", `{"version":1,`)
	write("pvc-3.json", `{"version":1,`)                        // truncated
	write("pvc-4.json", `{"version":2,"volumeId":"pvc-4"}`)     // future version
	write("pvc-5.json", `{"version":1,"volumeId":"pvc-other"}`) // names another volume
	write("bad..id.json", `{}`)
	write("notes.txt", "ignored")
	recs, errs := s.list()
	if len(recs) != 1 || recs[0].VolumeID != "pvc-1" || len(errs) != 4 {
		t.Fatalf("list = %d records, errors %v", len(recs), errs)
	}
	if _, err := os.Stat(filepath.Join(dir, ".pvc-2.json.tmp")); !os.IsNotExist(err) {
		t.Fatalf("temporary file not removed: %v", err)
	}

	if err := s.remove("pvc-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.remove("pvc-1"); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if r, _ := s.load("pvc-1"); r != nil {
		t.Fatal("record still there after remove")
	}
}
