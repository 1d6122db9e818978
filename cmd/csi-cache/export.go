package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/metrics"
	"github.com/csi-cache/csi-cache/pkg/nbd"
)

// exportConfig is the configuration of `csi-cache export`.
type exportConfig struct {
	dataDir     string
	cacheDevice string
	cacheSize   string
	volumeName  string
	volumeSize  string
	mode        string
	backing     string
	backingFile string
	// backingDelay is added to every backing read and write (benchmarks).
	backingDelay time.Duration
	seqCutoff    string
	socket       string
	tcp          string
	tcpRemote    bool
	readOnly     bool
	policy       string
	attach       bool
	connections  int
	deadConn     time.Duration
	metricsAddr  string
	cpuProfile   string
	// sizeSet is whether -size was given (with -backing-file, the volume's
	// size defaults to the file's).
	sizeSet bool

	// ready, if set, is called with the export URI once it is served (tests).
	ready func(uri string)
}

func parseExportFlags(args []string, stderr io.Writer) (exportConfig, error) {
	fs := newFlagSet("export", stderr)
	var c exportConfig
	fs.StringVar(&c.dataDir, "data-dir", "csi-cache-data", "directory of the embedded default: cache file, backing files and socket")
	fs.StringVar(&c.cacheDevice, "cache-device", "", "cache device: a block device or a file (default <data-dir>/cache.img; a missing file is created sparse with -cache-size and formatted)")
	fs.StringVar(&c.cacheSize, "cache-size", "1Gi", "size of the cache file created when it does not exist (bytes or a quantity: 1Gi, 500M)")
	fs.StringVar(&c.volumeName, "volume", "vol0", "name of the volume to serve; created if it does not exist")
	fs.StringVar(&c.volumeSize, "size", "1Gi", "size of the volume when it is created (an existing volume keeps its size unless this is larger: then it grows); with -backing-file the default is the file's size")
	fs.StringVar(&c.mode, "mode", "writethrough", "cache mode: writethrough, writeback, writearound or none (applied to an existing volume too)")
	fs.StringVar(&c.backing, "backing", "file", "backing store of a new volume: file (a sparse file in <data-dir>/backing) or none (cache-only)")
	fs.StringVar(&c.backingFile, "backing-file", "", "an existing file or block device as the backing store of a new volume (recorded as a blockdev backing; an existing volume must have been created with the same path)")
	fs.DurationVar(&c.backingDelay, "backing-delay", 0, "benchmarks and tests only: add this latency to every read and write of the backing store (e.g. 1ms, a slow disk)")
	fs.StringVar(&c.seqCutoff, "sequential-cutoff", "4Mi", "sequential streams longer than this bypass the cache; 0 disables the cutoff")
	fs.StringVar(&c.socket, "socket", "", "unix socket to serve on (default <data-dir>/<volume>.sock)")
	fs.StringVar(&c.tcp, "tcp", "", "also serve on this TCP address (host:port, loopback only unless -tcp-allow-remote)")
	fs.BoolVar(&c.tcpRemote, "tcp-allow-remote", false, "allow a non-loopback -tcp address (NBD has no authentication: trusted networks only)")
	fs.BoolVar(&c.readOnly, "read-only", false, "export the volume read-only")
	fs.StringVar(&c.policy, "policy", "lru", "replacement policy of the cache: lru or slru")
	fs.StringVar(&c.metricsAddr, "metrics-address", "", "serve Prometheus /metrics on this address (e.g. localhost:9810); empty: off")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the time serving to this file (pprof format)")
	fs.BoolVar(&c.attach, "attach", false, "also attach the export to a kernel device /dev/nbdN over netlink (needs root and the nbd module); detached on exit")
	fs.IntVar(&c.connections, "connections", nbd.DefaultConnections, "sockets between the kernel device and the server with -attach")
	fs.DurationVar(&c.deadConn, "dead-conn-timeout", nbd.DefaultDeadConnTimeout, "with -attach: how long the kernel keeps the device waiting for a restarted server")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) { c.sizeSet = c.sizeSet || f.Name == "size" })
	if c.cacheDevice == "" {
		c.cacheDevice = filepath.Join(c.dataDir, "cache.img")
	}
	if c.socket == "" {
		c.socket = filepath.Join(c.dataDir, c.volumeName+".sock")
	}
	return c, nil
}

func runExport(args []string, stdout, stderr io.Writer) error {
	c, err := parseExportFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return export(ctx, c, stdout)
}

// exportURI is the standard NBD URI of a unix-socket export.
func exportURI(name, socket string) string {
	if abs, err := filepath.Abs(socket); err == nil {
		socket = abs
	}
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, socket)
}

// export serves one volume of a cache set over NBD until ctx ends, then drains
// the requests in flight, flushes and closes the cache set.
func export(ctx context.Context, c exportConfig, stdout io.Writer) (err error) {
	cacheSize, err := driver.ParseSize(c.cacheSize)
	if err != nil {
		return fmt.Errorf("-cache-size: %w", err)
	}
	volSize, err := driver.ParseSize(c.volumeSize)
	if err != nil {
		return fmt.Errorf("-size: %w", err)
	}
	mode, err := engine.ParseCacheMode(c.mode)
	if err != nil {
		return fmt.Errorf("-mode: %w", err)
	}
	backing, err := engine.ParseBackingKind(c.backing)
	if err != nil {
		return fmt.Errorf("-backing: %w", err)
	}
	if backing == engine.BackingBlockDev {
		return errors.New("-backing: blockdev is not supported by export; use file, none or -backing-file PATH")
	}
	var backingPath string
	if c.backingFile != "" {
		if backing == engine.BackingNone {
			return errors.New("-backing-file: a cache-only volume (-backing none) has no backing store")
		}
		path, size, err := backingFileSize(c.backingFile)
		if err != nil {
			return err
		}
		backing, backingPath = engine.BackingBlockDev, path
		if !c.sizeSet {
			volSize = size
		}
	}
	if c.backingDelay < 0 {
		return fmt.Errorf("-backing-delay: negative duration %v", c.backingDelay)
	}
	cutoff, err := driver.ParseSize(c.seqCutoff)
	if err != nil {
		return fmt.Errorf("-sequential-cutoff: %w", err)
	}
	seqCutoff := uint64(cutoff)
	if cutoff == 0 {
		seqCutoff = engine.NoSeqCutoff
	}
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return err
	}
	cfg := engine.Config{
		BackingDir: filepath.Join(c.dataDir, "backing"),
		Policy:     c.policy,
		Logf:       func(format string, args ...any) { klog.InfoDepth(1, fmt.Sprintf(format, args...)) },
	}
	if c.backingDelay > 0 {
		cfg.OpenBacking = delayedBackingOpener(c.backingDelay)
		fmt.Fprintf(stdout, "csi-cache export: -backing-delay: every backing read and write waits %v (a benchmark setting)\n", c.backingDelay)
	}
	fmt.Fprintf(stdout, "csi-cache export: opening the cache set %s\n", c.cacheDevice)
	start := time.Now()
	cs, err := driver.OpenCacheDevice(driver.CacheDeviceOptions{Path: c.cacheDevice, Size: cacheSize, Config: cfg})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintf(stdout, "csi-cache export: closing the cache set\n")
		if cerr := cs.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing the cache set: %w", cerr)
		}
	}()
	st := cs.Stats()
	fmt.Fprintf(stdout, "csi-cache export: cache set open in %v: %d buckets of %d KiB, %d volume(s)\n",
		time.Since(start).Round(time.Millisecond), st.Buckets, st.BucketSize>>10, st.Volumes)

	v, err := cs.Volume(c.volumeName)
	switch {
	case errors.Is(err, engine.ErrNoVolume):
		v, err = cs.CreateVolume(engine.VolumeSpec{
			Name: c.volumeName, Size: uint64(volSize), Mode: mode, Backing: backing, BackingPath: backingPath,
			SeqCutoff: seqCutoff,
		})
		if err != nil {
			return fmt.Errorf("create volume %q: %w", c.volumeName, err)
		}
		fmt.Fprintf(stdout, "csi-cache export: created volume %q (%d bytes, %s, backing %s)\n", c.volumeName, volSize, mode, describeBacking(v.Info()))
	case err != nil:
		return err
	default:
		info := v.Info()
		if backingPath != "" && (info.Backing != engine.BackingBlockDev || info.BackingPath != backingPath) {
			return fmt.Errorf("-backing-file: volume %q exists with backing %s, not %s", c.volumeName, describeBacking(info), backingPath)
		}
		if uint64(volSize) > info.Size {
			if err := v.Resize(uint64(volSize)); err != nil {
				return fmt.Errorf("grow volume %q: %w", c.volumeName, err)
			}
			fmt.Fprintf(stdout, "csi-cache export: grew volume %q from %d to %d bytes\n", c.volumeName, info.Size, volSize)
		}
		if info.Mode != mode && info.Backing != engine.BackingNone {
			fmt.Fprintf(stdout, "csi-cache export: switching volume %q from %s to %s\n", c.volumeName, info.Mode, mode)
			if err := v.SetCacheMode(mode); err != nil {
				return fmt.Errorf("switch cache mode: %w", err)
			}
		}
		info = v.Info()
		fmt.Fprintf(stdout, "csi-cache export: opened volume %q (%d bytes, %s, backing %s, %d bytes dirty)\n",
			c.volumeName, info.Size, info.Mode, describeBacking(info), info.Stats.DirtyBytes)
	}
	if err := v.Health(); err != nil {
		return fmt.Errorf("volume %q is not healthy: %w", c.volumeName, err)
	}

	reg := metrics.NewRegistry()
	nbdm := metrics.NewNBDCollector()
	reg.MustRegister(metrics.NewEngineCollector(cs), nbdm)
	srv := nbd.NewServer(nbd.Options{Observer: nbdm})
	nbdm.WatchServer(srv)
	if err := srv.AddExport(c.volumeName, v, c.readOnly); err != nil {
		return err
	}
	if c.metricsAddr != "" {
		ms, err := metrics.Listen(c.metricsAddr, reg)
		if err != nil {
			return err
		}
		go func() {
			if err := ms.Serve(); err != nil {
				klog.ErrorS(err, "Serving metrics")
			}
		}()
		defer ms.Shutdown(context.Background())
		fmt.Fprintf(stdout, "csi-cache export: metrics on http://%s/metrics\n", ms.Addr())
	}
	if c.cpuProfile != "" {
		stopProfile, err := startCPUProfile(c.cpuProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	var listeners []net.Listener
	ul, err := nbd.ListenUnix(c.socket)
	if err != nil {
		return err
	}
	listeners = append(listeners, ul)
	if c.tcp != "" {
		tl, err := nbd.ListenTCP(c.tcp, nbd.TCPOptions{AllowNonLoopback: c.tcpRemote})
		if err != nil {
			ul.Close()
			return err
		}
		listeners = append(listeners, tl)
	}
	serveErr := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { serveErr <- srv.Serve(l) }()
	}
	uri := exportURI(c.volumeName, c.socket)
	fmt.Fprintf(stdout, "csi-cache export: serving %s\n", uri)
	if c.tcp != "" {
		fmt.Fprintf(stdout, "csi-cache export: serving nbd://%s/%s\n", listeners[1].Addr(), c.volumeName)
	}
	fmt.Fprintf(stdout, "  try: nbdinfo '%s'\n  stop with Ctrl-C (SIGINT) or SIGTERM: requests in flight finish and the volume is flushed\n", uri)
	var att *nbd.Attachment
	if c.attach {
		att, err = srv.Attach(c.volumeName, nbd.AttachOptions{Connections: c.connections, DeadConnTimeout: c.deadConn})
		if err != nil {
			_ = srv.Shutdown(context.Background())
			return fmt.Errorf("attach a kernel device: %w", err)
		}
		fmt.Fprintf(stdout, "csi-cache export: attached %s (%d connections)\n", att.Device(), att.Connections())
	}
	if c.ready != nil {
		c.ready(uri)
	}

	select {
	case <-ctx.Done():
		fmt.Fprintf(stdout, "csi-cache export: shutting down\n")
	case err := <-serveErr:
		if err != nil && !errors.Is(err, net.ErrClosed) {
			klog.ErrorS(err, "NBD server stopped")
		}
	}
	if att != nil {
		fmt.Fprintf(stdout, "csi-cache export: detaching %s\n", att.Device())
		if err := att.Detach(); err != nil {
			klog.ErrorS(err, "Detaching the kernel device", "device", att.Device())
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		klog.ErrorS(err, "NBD server shutdown")
	}
	if err := v.Flush(); err != nil {
		return fmt.Errorf("flush volume %q: %w", c.volumeName, err)
	}
	s := v.Stats()
	fmt.Fprintf(stdout, "csi-cache export: volume %q: %d reads, %d writes, hit ratio %.2f, %d bytes dirty\n",
		c.volumeName, s.ReadOps, s.WriteOps, s.HitRatio(), s.DirtyBytes)
	return nil
}

// startCPUProfile writes a CPU profile to path until the returned function is
// called.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			klog.ErrorS(err, "Writing the CPU profile", "path", path)
		}
	}, nil
}
