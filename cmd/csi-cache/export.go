package main

import (
	"fmt"
	"io"
	"path/filepath"
)

// exportConfig is the configuration of `csi-cache export`.
type exportConfig struct {
	dataDir    string
	cacheSize  string
	volumeName string
	volumeSize string
	socket     string
}

func runExport(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("export", stderr)
	var c exportConfig
	fs.StringVar(&c.dataDir, "data-dir", "csi-cache-data", "directory holding the embedded cache file, backing files and sockets")
	fs.StringVar(&c.cacheSize, "cache-size", "1GiB", "size of the sparse cache file created in -data-dir when it does not exist")
	fs.StringVar(&c.volumeName, "volume", "vol0", "name of the volume to create or open")
	fs.StringVar(&c.volumeSize, "size", "1GiB", "size of the volume when it is created")
	fs.StringVar(&c.socket, "socket", "", "unix socket to listen on (default <data-dir>/<volume>.sock)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.socket == "" {
		c.socket = filepath.Join(c.dataDir, c.volumeName+".sock")
	}
	fmt.Fprintf(stdout, "csi-cache export (plan; the NBD export is not built yet):\n")
	fmt.Fprintf(stdout, "  cache set: %s (sparse file, %s)\n", filepath.Join(c.dataDir, "cache.img"), c.cacheSize)
	fmt.Fprintf(stdout, "  volume:    %s (%s, backing file in %s)\n", c.volumeName, c.volumeSize, filepath.Join(c.dataDir, "backing"))
	fmt.Fprintf(stdout, "  export:    nbd+unix:///%s?socket=%s\n", c.volumeName, c.socket)
	return fmt.Errorf("export: %w", errNotImplemented)
}
