package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// runInspect is `csi-cache inspect [-json] <cache device or file>`: the
// superblock, bucket usage, journal, btree and volumes of a cache set, read
// without writing (the cache set may be in use). It exits 0 when it could
// print a report, problems included, and 1 when the device is not a cache
// set or cannot be read.
func runInspect(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inspect", stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON (for scripts)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: csi-cache inspect [-json] <cache device or file>\n\n"+
			"Prints the superblock, volume table, journal, btree, bucket usage and volumes of a cache set.\n"+
			"Reads only; the cache set may be in use.\n\nFlags:\n")
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
	r, err := engine.Inspect(dev)
	if *asJSON {
		if jerr := writeJSON(stdout, r); jerr != nil {
			return jerr
		}
	} else {
		if werr := r.WriteText(stdout); werr != nil {
			return werr
		}
		if len(r.Problems) > 0 && err == nil {
			fmt.Fprintf(stdout, "(on a cache set in use, updates made between inspect's reads can show up as problems;\n"+
				" run `csi-cache check` on the stopped cache set for a verdict)\n")
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// parseDeviceArg parses flags, which may come before or after the one
// positional argument, and returns that argument.
func parseDeviceArg(fs *flag.FlagSet, args []string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return "", err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 1 {
		return "", fmt.Errorf("usage: %s [-json] <cache device or file> (got %d arguments; -h for help)", fs.Name(), len(pos))
	}
	return pos[0], nil
}

// openReadOnly opens a cache device or file for reading only.
func openReadOnly(path string) (*device.File, error) {
	dev, err := device.OpenFile(path, device.FileOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	return dev, nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
