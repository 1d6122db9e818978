package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/metrics"
)

// serveConfig is the configuration of `csi-cache serve` (docs/serve.md).
type serveConfig struct {
	endpoint       string
	nodeID         string
	driverName     string
	cacheDevice    string
	cacheSize      string
	backingDir     string
	stateDir       string
	metricsAddress string
	maxVolumes     int64

	// ready, if set, is called once the CSI socket and the metrics
	// listener (nil when disabled) are listening (tests use it).
	ready func(csi, metrics net.Addr)
}

// defaultNodeID is $NODE_ID, else the host name.
func defaultNodeID() string {
	if id := os.Getenv("NODE_ID"); id != "" {
		return id
	}
	h, _ := os.Hostname()
	return h
}

func parseServeFlags(args []string, stderr io.Writer) (serveConfig, error) {
	fs := newFlagSet("serve", stderr)
	var c serveConfig
	fs.StringVar(&c.endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint: unix:///path or tcp://host:port")
	fs.StringVar(&c.nodeID, "node-id", defaultNodeID(), "node id (default $NODE_ID, else the host name)")
	fs.StringVar(&c.driverName, "driver-name", driver.DefaultDriverName, "CSI driver name")
	fs.StringVar(&c.cacheDevice, "cache-device", "/var/lib/csi-cache/cache.img", "cache device: a block device or a file (a missing file is created sparse with -cache-size and formatted)")
	fs.StringVar(&c.cacheSize, "cache-size", "10Gi", "size of the cache file created when -cache-device does not exist (bytes or a quantity: 10Gi, 500M)")
	fs.StringVar(&c.backingDir, "backing-dir", "/var/lib/csi-cache/backing", "directory of the backing files of file-backed volumes")
	fs.StringVar(&c.stateDir, "state-dir", "/var/lib/csi-cache/state", "directory of the records of staged volumes (for re-adoption after a restart)")
	fs.StringVar(&c.metricsAddress, "metrics-address", ":9810", "address of the Prometheus /metrics endpoint; empty disables it")
	fs.Int64Var(&c.maxVolumes, "max-volumes", 256, "most volumes staged on this node at once (NodeGetInfo max_volumes_per_node); 0: no limit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	switch {
	case c.nodeID == "":
		return c, errors.New("no node id: set -node-id or $NODE_ID")
	case c.maxVolumes < 0:
		return c, fmt.Errorf("-max-volumes %d is negative", c.maxVolumes)
	}
	return c, nil
}

func runServe(args []string, _, stderr io.Writer) error {
	c, err := parseServeFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, c)
}

// serve runs the plugin until ctx ends: it opens (creating and formatting if
// needed) the cache set, takes back the volumes staged by a previous process,
// and serves CSI and metrics. On the way out it stops serving without
// unstaging anything and closes the cache set.
func serve(ctx context.Context, c serveConfig) (err error) {
	size, err := driver.ParseSize(c.cacheSize)
	if err != nil {
		return fmt.Errorf("-cache-size: %w", err)
	}
	cs, err := driver.OpenCacheDevice(driver.CacheDeviceOptions{
		Path: c.cacheDevice,
		Size: size,
		Config: engine.Config{
			BackingDir: c.backingDir,
			Logf:       func(format string, args ...any) { klog.InfoDepth(1, fmt.Sprintf(format, args...)) },
		},
	})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := cs.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing the cache set: %w", cerr)
		}
	}()
	// Metrics: the cache set and its volumes, the NBD exports and the CSI
	// calls, on a registry with the Go runtime and process metrics.
	reg := metrics.NewRegistry()
	var nbdMetrics *metrics.NBDCollector
	var interceptors []grpc.UnaryServerInterceptor
	if c.metricsAddress != "" {
		nbdMetrics = metrics.NewNBDCollector()
		csiMetrics := metrics.NewCSIMetrics()
		reg.MustRegister(metrics.NewEngineCollector(cs), nbdMetrics, csiMetrics)
		interceptors = append(interceptors, csiMetrics.UnaryServerInterceptor())
	}
	d, err := driver.New(driver.Config{
		Name:              c.driverName,
		NodeID:            c.nodeID,
		MaxVolumes:        c.maxVolumes,
		StateDir:          c.stateDir,
		Store:             driver.NewEngineStore(cs, c.backingDir),
		Attacher:          driver.NewNBDAttacher(driver.NBDOptions{Metrics: nbdMetrics}),
		Mounter:           driver.NewMounter(),
		UnaryInterceptors: interceptors,
	})
	if err != nil {
		return err
	}
	l, err := driver.Listen(c.endpoint)
	if err != nil {
		d.Stop()
		return err
	}
	var ms *metrics.Server
	var metricsAddr net.Addr
	if c.metricsAddress != "" {
		if ms, err = metrics.Listen(c.metricsAddress, reg); err != nil {
			l.Close()
			d.Stop()
			return fmt.Errorf("-metrics-address: %w", err)
		}
		metricsAddr = ms.Addr()
		go func() {
			if err := ms.Serve(); err != nil {
				klog.ErrorS(err, "Metrics server stopped")
			}
		}()
		klog.InfoS("Serving metrics", "address", metricsAddr.String())
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- d.Serve(l) }()
	if c.ready != nil {
		c.ready(l.Addr(), metricsAddr)
	}
	select {
	case <-ctx.Done():
		klog.InfoS("Stopping; staged volumes stay attached for the next plugin process")
		err = d.Stop()
		if serr := <-serveErr; err == nil {
			err = serr
		}
	case err = <-serveErr:
		if serr := d.Stop(); err == nil {
			err = serr
		}
	}
	if ms != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ms.Shutdown(sctx)
		cancel()
	}
	return err
}
