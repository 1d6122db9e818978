package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/csi-cache/csi-cache/pkg/engine"
)

// checkResult is the JSON output of `csi-cache check -json`.
type checkResult struct {
	Device string             `json:"device"`
	Clean  bool               `json:"clean"`
	Errors int                `json:"errors"`
	Error  string             `json:"error,omitempty"`
	Report *engine.Inspection `json:"report"`
}

// runCheck is `csi-cache check [-json] <cache device or file>`: an offline
// consistency check of a cache set (stop the plugin first: on a cache set in
// use, updates in flight look like corruption). It reads only. Exit code 0:
// clean (notes and warnings are printed, the engine works around them); 1:
// corrupt, with the problems listed, or the device cannot be read.
func runCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stderr)
	asJSON := fs.Bool("json", false, "print the result and the full report as JSON (for scripts)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: csi-cache check [-json] <cache device or file>\n\n"+
			"Offline consistency check of a cache set: superblock, volume table, generations, journal,\n"+
			"every btree node and every data pointer. Reads only. Exit code 0: clean; 1: corrupt or unreadable.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	path, err := parseDeviceArg(fs, args)
	if err != nil {
		return err
	}
	dev, err := openReadOnly(path)
	if err != nil {
		return err
	}
	defer dev.Close()
	r, err := engine.CheckDevice(dev)
	var ce *engine.CheckError
	if *asJSON {
		res := checkResult{Device: path, Clean: err == nil, Errors: r.Errors(), Report: r}
		if err != nil {
			res.Error = err.Error()
		}
		if jerr := writeJSON(stdout, res); jerr != nil {
			return jerr
		}
	} else {
		writeCheckText(stdout, path, r, err)
	}
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return fmt.Errorf("%s is corrupt: %d error(s), listed above", path, len(ce.Problems))
	}
	return fmt.Errorf("%s: %w", path, err)
}

func writeCheckText(w io.Writer, path string, r *engine.Inspection, err error) {
	verdict := "clean"
	if err != nil {
		verdict = fmt.Sprintf("CORRUPT (%d errors)", r.Errors())
	}
	fmt.Fprintf(w, "%s: %s\n", path, verdict)
	if sb := r.Superblock; sb != nil {
		fmt.Fprintf(w, "  cache set %s, %d buckets of %d bytes\n", sb.UUID, sb.Buckets, sb.BucketSize)
	}
	if r.VolumeTable != nil {
		fmt.Fprintf(w, "  %d volumes\n", len(r.Volumes))
	}
	if j := r.Journal; j != nil {
		fmt.Fprintf(w, "  journal: %d entries (%d keys) to replay\n", j.Entries, j.Keys)
	}
	if bt := r.Btree; bt != nil {
		fmt.Fprintf(w, "  btree: depth %d, %d nodes, %d extents\n", bt.Depth, bt.Nodes, bt.LeafKeys)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
}
