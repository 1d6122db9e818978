package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/csi-cache/csi-cache/pkg/driver"
)

func TestServeFlags(t *testing.T) {
	host, _ := os.Hostname()
	t.Setenv("NODE_ID", "")
	c, err := parseServeFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := serveConfig{
		endpoint: "unix:///csi/csi.sock", nodeID: host, driverName: "csi-cache.io",
		cacheDevice: "/var/lib/csi-cache/cache.img", cacheSize: "10Gi",
		backingDir: "/var/lib/csi-cache/backing", stateDir: "/var/lib/csi-cache/state",
		metricsAddress: ":9810", maxVolumes: 256,
	}
	if c.endpoint != want.endpoint || c.nodeID != want.nodeID || c.driverName != want.driverName ||
		c.cacheDevice != want.cacheDevice || c.cacheSize != want.cacheSize || c.backingDir != want.backingDir ||
		c.stateDir != want.stateDir || c.metricsAddress != want.metricsAddress || c.maxVolumes != want.maxVolumes {
		t.Fatalf("defaults:\n got %+v\nwant %+v", c, want)
	}

	t.Setenv("NODE_ID", "node-from-env")
	if c, err := parseServeFlags(nil, io.Discard); err != nil || c.nodeID != "node-from-env" {
		t.Fatalf("NODE_ID: %q, %v", c.nodeID, err)
	}
	if c, err := parseServeFlags([]string{"--node-id", "n1", "--max-volumes", "3", "-v=4"}, io.Discard); err != nil || c.nodeID != "n1" || c.maxVolumes != 3 {
		t.Fatalf("flags: %+v, %v", c, err)
	}
	for _, bad := range [][]string{
		{"-max-volumes", "-1"},
		{"-node-id", ""},
		{"extra"},
		{"-endpoint"},
	} {
		if _, err := parseServeFlags(bad, io.Discard); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// startServe runs serve in the background on paths in dir and returns the
// CSI and metrics addresses and a function that stops it and returns its
// error.
func startServe(t *testing.T, c serveConfig) (csiAddr, metricsAddr net.Addr, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	type addrs struct{ csi, metrics net.Addr }
	ready := make(chan addrs, 1)
	c.ready = func(csi, metrics net.Addr) { ready <- addrs{csi, metrics} }
	done := make(chan error, 1)
	go func() { done <- serve(ctx, c) }()
	select {
	case a := <-ready:
		stopped := false
		stop = func() error {
			if stopped {
				return nil
			}
			stopped = true
			cancel()
			return <-done
		}
		t.Cleanup(func() { stop() })
		return a.csi, a.metrics, stop
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v", err)
	}
	return nil, nil, nil
}

func testServeConfig(t *testing.T) serveConfig {
	dir, err := os.MkdirTemp("", "csi-cache-serve")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return serveConfig{
		endpoint:       "unix://" + filepath.Join(dir, "csi.sock"),
		nodeID:         "node-a",
		driverName:     driver.DefaultDriverName,
		cacheDevice:    filepath.Join(dir, "data", "cache.img"),
		cacheSize:      "64Mi",
		backingDir:     filepath.Join(dir, "data", "backing"),
		stateDir:       filepath.Join(dir, "data", "state"),
		metricsAddress: "127.0.0.1:0",
		maxVolumes:     7,
	}
}

// TestServe runs the plugin on a new sparse cache file, talks to each
// service, scrapes the metrics, stops it and starts it again on the same
// (now formatted) file.
func TestServe(t *testing.T) {
	c := testServeConfig(t)
	for run := 0; run < 2; run++ {
		_, metricsAddr, stop := startServe(t, c)
		conn, err := grpc.NewClient(c.endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		id := csi.NewIdentityClient(conn)
		info, err := id.GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
		if err != nil || info.GetName() != "csi-cache.io" {
			t.Fatalf("GetPluginInfo: %v, %v", info, err)
		}
		probe, err := id.Probe(context.Background(), &csi.ProbeRequest{})
		if err != nil || !probe.GetReady().GetValue() {
			t.Fatalf("Probe: %v, %v", probe, err)
		}
		ni, err := csi.NewNodeClient(conn).NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
		if err != nil || ni.GetNodeId() != "node-a" || ni.GetMaxVolumesPerNode() != 7 ||
			ni.GetAccessibleTopology().GetSegments()[driver.TopologyKey] != "node-a" {
			t.Fatalf("NodeGetInfo: %v, %v", ni, err)
		}
		capResp, err := csi.NewControllerClient(conn).GetCapacity(context.Background(), &csi.GetCapacityRequest{})
		if err != nil || capResp.GetAvailableCapacity() <= 0 {
			t.Fatalf("GetCapacity: %v, %v", capResp, err)
		}
		// An error reaches the metrics with the code the client got.
		_, err = csi.NewNodeClient(conn).NodeGetVolumeStats(context.Background(),
			&csi.NodeGetVolumeStatsRequest{VolumeId: "pvc-none", VolumePath: "/nowhere"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("NodeGetVolumeStats of a missing volume: %v", err)
		}
		resp, err := http.Get("http://" + metricsAddr.String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("metrics: %d %.200s", resp.StatusCode, body)
		}
		for _, want := range []string{
			"go_goroutines ",
			"csicache_cache_set_healthy 1",
			"csicache_volumes 0",
			`csicache_csi_requests_total{code="OK",method="GetPluginInfo"} 1`,
			`csicache_csi_requests_total{code="OK",method="Probe"} 1`,
			`csicache_csi_request_duration_seconds_count{method="GetCapacity"} 1`,
			`csicache_csi_requests_total{code="NotFound",method="NodeGetVolumeStats"} 1`,
			"csicache_nbd_connections 0",
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("metrics have no line %q", want)
			}
		}
		conn.Close()
		if err := stop(); err != nil {
			t.Fatalf("run %d: serve returned %v", run, err)
		}
		if fi, err := os.Stat(c.cacheDevice); err != nil || fi.Size() != 64<<20 {
			t.Fatalf("cache file after run %d: %v, %v", run, fi, err)
		}
	}
}

// TestServeRefusesForeignDevice: a cache device holding something else is
// neither formatted nor opened.
func TestServeRefusesForeignDevice(t *testing.T) {
	c := testServeConfig(t)
	if err := os.MkdirAll(filepath.Dir(c.cacheDevice), 0o700); err != nil {
		t.Fatal(err)
	}
	junk := []byte(strings.Repeat("not a cache set ", 1<<16))
	if err := os.WriteFile(c.cacheDevice, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := serve(ctx, c)
	if err == nil || !strings.Contains(err.Error(), "refusing to format") {
		t.Fatalf("serve on a foreign device: %v", err)
	}
	if b, _ := os.ReadFile(c.cacheDevice); string(b) != string(junk) {
		t.Fatal("the foreign device was modified")
	}
}

func TestServeBadCacheSize(t *testing.T) {
	c := testServeConfig(t)
	c.cacheSize = "lots"
	if err := serve(context.Background(), c); err == nil || !strings.Contains(err.Error(), "-cache-size") {
		t.Fatalf("serve with -cache-size=lots: %v", err)
	}
}

// TestServeNoMetrics: an empty --metrics-address serves no metrics.
func TestServeNoMetrics(t *testing.T) {
	c := testServeConfig(t)
	c.metricsAddress = ""
	_, metricsAddr, stop := startServe(t, c)
	if metricsAddr != nil {
		t.Fatalf("metrics served on %v", metricsAddr)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
