package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/csi-cache/csi-cache/internal/version"
)

// DefaultDriverName is the CSI driver name (GetPluginInfo, the
// StorageClass provisioner, CSIDriver object).
const DefaultDriverName = "csi-cache.io"

// TopologyKey is the topology segment naming the node a volume lives on.
const TopologyKey = "topology.csi-cache.io/node"

// Config configures a Driver.
type Config struct {
	// Name is the driver name; default DefaultDriverName.
	Name string
	// NodeID identifies this node (NodeGetInfo, topology). Required.
	NodeID string
	// MaxVolumes is the most volumes this node stages at once (and
	// NodeGetInfo's max_volumes_per_node); 0 means no limit.
	MaxVolumes int64
	// StateDir holds the stage records that let a restarted plugin take
	// its volumes back. Required.
	StateDir string
	// Store is the node's cache set. Required.
	Store VolumeStore
	// Attacher connects volumes to kernel block devices. Required.
	Attacher Attacher
	// Mounter formats and mounts. Required.
	Mounter Mounter
	// StopTimeout bounds how long Stop waits for calls in progress;
	// default 10 s.
	StopTimeout time.Duration
	// UnaryInterceptors run around every call, outermost first, outside the
	// driver's own interceptor (logging, errors mapped to gRPC codes): a
	// metrics interceptor here sees the code the client gets.
	UnaryInterceptors []grpc.UnaryServerInterceptor
}

// Driver serves the CSI Identity, Controller and Node services of one node on
// one gRPC server: the DaemonSet model, where the external-provisioner runs
// beside every node plugin with --node-deployment.
//
// Lock order: a volume lock (locks), then spaceMu, then mu. Only the volume
// lock is held across device IO, mounts and engine calls.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg   Config
	state *stateDir
	locks *volumeLocks

	// spaceMu serializes the capacity checks of CreateVolume and
	// ControllerExpandVolume with the creates and resizes they admit.
	spaceMu sync.Mutex

	mu      sync.Mutex        // guards the fields below
	devices map[string]Device // attached devices by volume id
	staging map[string]bool   // volume ids with a stage record (for MaxVolumes)
	srv     *grpc.Server
	stopped bool
}

// New returns a Driver. It reads the state directory and takes back the
// volumes a previous plugin process staged (see adopt.go) before it returns,
// so their devices work again before the first call is served.
func New(cfg Config) (*Driver, error) {
	switch {
	case cfg.NodeID == "":
		return nil, errors.New("driver: no node id")
	case cfg.StateDir == "":
		return nil, errors.New("driver: no state directory")
	case cfg.Store == nil || cfg.Attacher == nil || cfg.Mounter == nil:
		return nil, errors.New("driver: store, attacher and mounter are required")
	case cfg.MaxVolumes < 0:
		return nil, fmt.Errorf("driver: max volumes %d is negative", cfg.MaxVolumes)
	}
	if cfg.Name == "" {
		cfg.Name = DefaultDriverName
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	st, err := openStateDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d := &Driver{
		cfg:     cfg,
		state:   st,
		locks:   newVolumeLocks(),
		devices: make(map[string]Device),
		staging: make(map[string]bool),
	}
	d.adopt()
	return d, nil
}

// Serve serves the CSI services on l until Stop. It returns nil after Stop,
// also when Stop came first (l is closed then).
func (d *Driver) Serve(l net.Listener) error {
	chain := append(append([]grpc.UnaryServerInterceptor(nil), d.cfg.UnaryInterceptors...), d.intercept)
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(chain...))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	d.mu.Lock()
	if d.stopped {
		// Stopped before serving began (a signal right after start): that is
		// a shutdown, not an error.
		d.mu.Unlock()
		l.Close()
		return nil
	}
	d.srv = srv
	d.mu.Unlock()
	klog.InfoS("Serving CSI", "driver", d.cfg.Name, "version", version.Version, "node", d.cfg.NodeID, "address", l.Addr().String())
	err := srv.Serve(l)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Stop stops serving (waiting up to StopTimeout for calls in progress) and
// closes the attacher: the NBD connections drop but the kernel devices stay,
// mounted, waiting for the next plugin process to reattach them. Staged
// volumes are not unstaged. The store is the caller's to close afterwards.
func (d *Driver) Stop() error {
	d.mu.Lock()
	srv := d.srv
	already := d.stopped
	d.stopped = true
	d.mu.Unlock()
	if already {
		return nil
	}
	if srv != nil {
		done := make(chan struct{})
		go func() {
			srv.GracefulStop()
			close(done)
		}()
		t := time.NewTimer(d.cfg.StopTimeout)
		select {
		case <-done:
			t.Stop()
		case <-t.C:
			klog.InfoS("Calls still in progress after the stop timeout; cancelling them", "timeout", d.cfg.StopTimeout)
			srv.Stop()
			<-done
		}
	}
	return d.cfg.Attacher.Close()
}

// Listen listens on a CSI endpoint: unix:///path/to/csi.sock (a stale socket
// file is removed first), unix:/path, a bare /path, or tcp://host:port.
func Listen(endpoint string) (net.Listener, error) {
	network, addr, err := parseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if err := os.Remove(addr); err != nil {
				return nil, fmt.Errorf("removing stale socket %s: %w", addr, err)
			}
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", endpoint, err)
	}
	return l, nil
}

func parseEndpoint(ep string) (network, addr string, err error) {
	switch {
	case strings.HasPrefix(ep, "unix://"):
		network, addr = "unix", strings.TrimPrefix(ep, "unix://")
	case strings.HasPrefix(ep, "unix:"):
		network, addr = "unix", strings.TrimPrefix(ep, "unix:")
	case strings.HasPrefix(ep, "tcp://"):
		network, addr = "tcp", strings.TrimPrefix(ep, "tcp://")
	case strings.HasPrefix(ep, "/"):
		network, addr = "unix", ep
	default:
		return "", "", fmt.Errorf("endpoint %q: want unix:///path or tcp://host:port", ep)
	}
	if addr == "" {
		return "", "", fmt.Errorf("endpoint %q has no address", ep)
	}
	return network, addr, nil
}

// quietMethods are polled by the CO; their calls are logged at -v=5 only.
var quietMethods = []string{"/GetPluginInfo", "/GetPluginCapabilities", "/Probe", "/NodeGetCapabilities",
	"/ControllerGetCapabilities", "/NodeGetInfo", "/NodeGetVolumeStats", "/GetCapacity", "/ListVolumes",
	"/ControllerGetVolume", "/NodeGetVolumeHealth", "/NodeGetStorageHealth", "/ControllerGetVolumeHealth",
	"/ControllerListVolumeHealth", "/ValidateVolumeCapabilities"}

func logLevel(method string) klog.Level {
	for _, m := range quietMethods {
		if strings.HasSuffix(method, m) {
			return 5
		}
	}
	return 2
}

// intercept logs every call (secrets stripped by protosanitizer) and maps the
// handler's error to a gRPC status with toStatus.
func (d *Driver) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	level := logLevel(info.FullMethod)
	start := time.Now()
	if klog.V(level).Enabled() {
		klog.V(level).InfoS("CSI call", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	}
	resp, err := handler(ctx, req)
	err = toStatus(err)
	switch code := status.Code(err); code {
	case codes.OK:
		if klog.V(level).Enabled() {
			klog.V(level).InfoS("CSI reply", "method", info.FullMethod, "response", protosanitizer.StripSecrets(resp), "duration", time.Since(start))
		}
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unavailable:
		klog.ErrorS(err, "CSI call failed", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req), "duration", time.Since(start))
	default:
		klog.V(min(level, 2)).InfoS("CSI call refused", "method", info.FullMethod, "code", code, "err", err.Error(), "request", protosanitizer.StripSecrets(req))
	}
	return resp, err
}

// topology is where this node's volumes are accessible.
func (d *Driver) topology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{TopologyKey: d.cfg.NodeID}}
}

// onThisNode reports whether topology t includes this node (a topology that
// does not name our key does not constrain it).
func (d *Driver) onThisNode(t *csi.Topology) bool {
	v, ok := t.GetSegments()[TopologyKey]
	return !ok || v == d.cfg.NodeID
}

// device returns the attached device of a volume, or nil.
func (d *Driver) device(id string) Device {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.devices[id]
}

func (d *Driver) setDevice(id string, dev Device) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dev == nil {
		delete(d.devices, id)
	} else {
		d.devices[id] = dev
	}
}
