package metrics_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/metrics"
	"github.com/csi-cache/csi-cache/pkg/nbd"
)

func newCacheSet(t *testing.T) *engine.CacheSet {
	t.Helper()
	cfg := engine.Config{
		BucketSize: 64 * kib, JournalSize: 256 * kib, MaxVolumes: 16, GCInterval: time.Hour,
		BackingDir: "/backing",
		OpenBacking: func(_ engine.BackingKind, _ string, size int64, _ bool) (device.Device, error) {
			return device.NewMem(size), nil
		},
	}
	cache := device.NewMem(16 * mib)
	if err := engine.Format(cache, cfg); err != nil {
		t.Fatal(err)
	}
	cs, err := engine.Open(cache, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// lint fails the test on any promlint problem of c.
func lint(t *testing.T, c prometheus.Collector) {
	t.Helper()
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestEngineCollector: the metrics pass promlint, and a volume's series exist
// exactly while the volume does.
func TestEngineCollector(t *testing.T) {
	cs := newCacheSet(t)
	ec := metrics.NewEngineCollector(cs)
	for _, spec := range []engine.VolumeSpec{
		{Name: "pvc-a", Size: mib, Mode: engine.Writethrough},
		{Name: "pvc-b", Size: 2 * mib, Backing: engine.BackingNone},
	} {
		if _, err := cs.CreateVolume(spec); err != nil {
			t.Fatal(err)
		}
	}
	lint(t, ec)
	perVolume := []string{"csicache_volume_size_bytes", "csicache_volume_dirty_bytes", "csicache_volume_io_errors_total", "csicache_volume_info"}
	if n := testutil.CollectAndCount(ec, perVolume...); n != 2+2+4+2 {
		t.Fatalf("%d per-volume samples with two volumes, want 10", n)
	}
	if err := testutil.CollectAndCompare(ec, strings.NewReader(`
# HELP csicache_volume_info Always 1; the labels describe the volume: its engine id, cache mode and backing store.
# TYPE csicache_volume_info gauge
csicache_volume_info{backing="file",id="1",mode="writethrough",volume="pvc-a"} 1
csicache_volume_info{backing="none",id="2",mode="writeback",volume="pvc-b"} 1
# HELP csicache_volumes Volumes of the cache set.
# TYPE csicache_volumes gauge
csicache_volumes 2
`), "csicache_volume_info", "csicache_volumes"); err != nil {
		t.Fatal(err)
	}
	if err := cs.DeleteVolume("pvc-a"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(ec, perVolume...); n != 1+1+2+1 {
		t.Fatalf("%d per-volume samples after deleting one of two volumes, want 5", n)
	}
	// Registering on a registry with the default collectors works (no
	// duplicate names), and gathering succeeds.
	reg := metrics.NewRegistry()
	reg.MustRegister(ec, metrics.NewNBDCollector(), metrics.NewCSIMetrics())
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// TestEngineCollectorOddName: a volume name that is not valid UTF-8 (the
// engine takes any bytes) does not break the scrape.
func TestEngineCollectorOddName(t *testing.T) {
	cs := newCacheSet(t)
	if _, err := cs.CreateVolume(engine.VolumeSpec{Name: "bad\xffname", Size: mib}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewEngineCollector(cs))
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

func TestNBDCollector(t *testing.T) {
	c := metrics.NewNBDCollector()
	for _, i := range []nbd.RequestInfo{
		{Export: "pvc-a", Command: nbd.CmdRead, Length: 4096, Latency: 50 * time.Microsecond},
		{Export: "pvc-a", Command: nbd.CmdRead, Length: 8192, Latency: 2 * time.Millisecond},
		{Export: "pvc-a", Command: nbd.CmdWrite, Length: 4096, Errno: 5, Latency: time.Millisecond},
		{Export: "pvc-a", Command: nbd.CmdFlush, Latency: 3 * time.Millisecond},
		{Export: "pvc-b", Command: nbd.CmdTrim, Length: 1 << 20, Latency: time.Millisecond},
		{Export: "pvc-b", Command: nbd.CmdUnknown, Errno: 22},
	} {
		c.ObserveRequest(i)
	}
	lint(t, c)
	if err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP csicache_nbd_request_bytes_total Bytes of successful NBD requests by export and command (read and write: data moved; trim and write_zeroes: range covered).
# TYPE csicache_nbd_request_bytes_total counter
csicache_nbd_request_bytes_total{command="read",volume="pvc-a"} 12288
csicache_nbd_request_bytes_total{command="trim",volume="pvc-b"} 1.048576e+06
# HELP csicache_nbd_request_errors_total NBD requests answered with an error, by export and command.
# TYPE csicache_nbd_request_errors_total counter
csicache_nbd_request_errors_total{command="unknown",volume="pvc-b"} 1
csicache_nbd_request_errors_total{command="write",volume="pvc-a"} 1
`), "csicache_nbd_request_bytes_total", "csicache_nbd_request_errors_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c, "csicache_nbd_request_duration_seconds"); n != 5 {
		t.Fatalf("%d latency series, want 5", n)
	}
	c.Forget("pvc-a")
	if n := testutil.CollectAndCount(c, "csicache_nbd_request_duration_seconds", "csicache_nbd_request_errors_total", "csicache_nbd_request_bytes_total"); n != 2+1+1 {
		t.Fatalf("%d series after forgetting pvc-a, want 4", n)
	}
}

func TestCSIMetrics(t *testing.T) {
	m := metrics.NewCSIMetrics()
	intercept := m.UnaryServerInterceptor()
	call := func(method string, err error) {
		info := &grpc.UnaryServerInfo{FullMethod: method}
		_, got := intercept(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, err })
		if !errors.Is(got, err) {
			t.Fatalf("interceptor changed the error: %v", got)
		}
	}
	call("/csi.v1.Node/NodeStageVolume", nil)
	call("/csi.v1.Node/NodeStageVolume", status.Error(codes.NotFound, "no such volume"))
	call("/csi.v1.Node/NodeStageVolume", status.Error(codes.NotFound, "no such volume"))
	call("/csi.v1.Controller/CreateVolume", nil)
	call("/csi.v1.Identity/Probe", errors.New("not a status"))
	lint(t, m)
	if err := testutil.CollectAndCompare(m, strings.NewReader(`
# HELP csicache_csi_requests_total CSI calls by method and gRPC status code (errors: code != "OK").
# TYPE csicache_csi_requests_total counter
csicache_csi_requests_total{code="NotFound",method="NodeStageVolume"} 2
csicache_csi_requests_total{code="OK",method="CreateVolume"} 1
csicache_csi_requests_total{code="OK",method="NodeStageVolume"} 1
csicache_csi_requests_total{code="Unknown",method="Probe"} 1
`), "csicache_csi_requests_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m, "csicache_csi_request_duration_seconds"); n != 3 {
		t.Fatalf("%d latency series, want 3", n)
	}
}

// TestServe: Serve serves /metrics until its context ends.
func TestServe(t *testing.T) {
	reg := metrics.NewRegistry()
	s, err := metrics.Listen("127.0.0.1:0", reg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	res := scrape(t, "http://"+s.Addr().String()+"/metrics")
	res.want(t, 1, "csicache_build_info", "version", "dev")
	if !res.has("go_goroutines") || !res.has("process_start_time_seconds") {
		t.Fatal("no Go runtime or process metrics")
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.Listen("256.0.0.1:1", reg); err == nil {
		t.Fatal("Listen on a bad address succeeded")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := metrics.Serve(ctx, "127.0.0.1:0", reg); err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
}
