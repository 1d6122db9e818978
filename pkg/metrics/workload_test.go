package metrics_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/metrics"
	"github.com/csi-cache/csi-cache/pkg/nbd"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// gatedDevice is a backing store whose writes wait until open is closed: the
// writeback goroutine blocks in its first backing write, so the dirty data
// stays dirty until the test lets writeback through.
type gatedDevice struct {
	device.Device
	open <-chan struct{}
}

func (d *gatedDevice) WriteAt(p []byte, off int64) (int, error) {
	<-d.open
	return d.Device.WriteAt(p, off)
}

// badSector is where the backing store fails reads.
const badSector = 12 * mib

// exportedVolume is a writeback volume of a cache set on memory devices,
// exported over NBD on a unix socket, with /metrics served over HTTP.
type exportedVolume struct {
	cs       *engine.CacheSet
	sock     string
	url      string
	openGate func()
}

func newExportedVolume(t *testing.T) *exportedVolume {
	t.Helper()
	gate := make(chan struct{})
	opened := false
	openGate := func() {
		if !opened {
			opened = true
			close(gate)
		}
	}
	cfg := engine.Config{
		BucketSize:       64 * kib,
		JournalSize:      256 * kib,
		MaxVolumes:       16,
		WritebackPercent: -1, // once the gate opens, write back at full speed
		GCInterval:       time.Hour,
		BackingDir:       "/backing",
		OpenBacking: func(_ engine.BackingKind, _ string, size int64, _ bool) (device.Device, error) {
			failing := device.NewFault(device.NewMem(size), device.FailRange(device.OpRead, badSector, 4*kib, nil))
			return &gatedDevice{Device: failing, open: gate}, nil
		},
	}
	cache := device.NewMem(32 * mib)
	if err := engine.Format(cache, cfg); err != nil {
		t.Fatal(err)
	}
	cs, err := engine.Open(cache, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cs.Close(); err != nil {
			t.Errorf("closing the cache set: %v", err)
		}
	})
	t.Cleanup(openGate) // before Close, which waits for the writeback goroutine
	vol, err := cs.CreateVolume(engine.VolumeSpec{Name: "pvc-1", Size: 16 * mib, Mode: engine.Writeback, SeqCutoff: engine.NoSeqCutoff})
	if err != nil {
		t.Fatal(err)
	}

	reg := metrics.NewRegistry()
	nbdMetrics := metrics.NewNBDCollector()
	reg.MustRegister(metrics.NewEngineCollector(cs), nbdMetrics)
	srv := nbd.NewServer(nbd.Options{Observer: nbdMetrics})
	nbdMetrics.WatchServer(srv)
	if err := srv.AddExport("pvc-1", vol, false); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("nbd shutdown: %v", err)
		}
	})
	ms, err := metrics.Listen("127.0.0.1:0", reg)
	if err != nil {
		t.Fatal(err)
	}
	go ms.Serve()
	t.Cleanup(func() { ms.Shutdown(context.Background()) })
	return &exportedVolume{cs: cs, sock: sock, url: "http://" + ms.Addr().String() + "/metrics", openGate: openGate}
}

// TestWorkloadMetrics runs a workload through an NBD export of a writeback
// volume, scrapes /metrics over HTTP after each step and checks that the
// counters moved exactly as the workload implies.
func TestWorkloadMetrics(t *testing.T) {
	e := newExportedVolume(t)
	vol := []string{"volume", "pvc-1"}
	cmd := func(c string) []string { return []string{"volume", "pvc-1", "command", c} }

	s := scrape(t, e.url)
	s.want(t, 0, "csicache_volume_dirty_bytes", vol...)
	s.want(t, 16*mib, "csicache_volume_size_bytes", vol...)
	s.want(t, 1, "csicache_volume_info", "volume", "pvc-1", "mode", "writeback", "backing", "file")
	s.want(t, 1, "csicache_cache_set_healthy")
	s.want(t, 1, "csicache_volumes")
	if b := s.value(t, "csicache_cache_buckets"); b <= 0 || b > 32*mib/(64*kib) {
		t.Fatalf("csicache_cache_buckets = %v", b)
	}
	if s.has("csicache_nbd_request_duration_seconds", cmd("write")...) {
		t.Fatal("NBD series before any request")
	}

	c := dialNBD(t, "unix", e.sock, "pvc-1")
	if c.size != 16*mib {
		t.Fatalf("export size %d", c.size)
	}
	data := bytes.Repeat([]byte("csi-cache"), mib/9+1)[:mib]

	// 1. Write 1 MiB: it is dirty in the cache; writeback cannot finish
	// (the backing store's writes wait at the gate).
	for off := 0; off < mib; off += 128 * kib {
		c.mustDo(nbd.CmdWrite, uint64(off), 128*kib, data[off:off+128*kib])
	}
	s = scrape(t, e.url)
	s.want(t, mib, "csicache_volume_dirty_bytes", vol...)
	s.want(t, mib, "csicache_cache_dirty_bytes")
	s.want(t, 8, "csicache_volume_writes_total", vol...)
	s.want(t, mib, "csicache_volume_written_bytes_total", vol...)
	s.want(t, 0, "csicache_volume_writeback_bytes_total", vol...)
	s.want(t, 8, "csicache_nbd_request_duration_seconds", cmd("write")...)
	s.want(t, mib, "csicache_nbd_request_bytes_total", cmd("write")...)
	s.want(t, 1, "csicache_nbd_connections")

	// 2. Read it back: every byte is a hit (dirty data lives in the cache).
	for off := 0; off < mib; off += 128 * kib {
		if got := c.mustDo(nbd.CmdRead, uint64(off), 128*kib, nil); !bytes.Equal(got, data[off:off+128*kib]) {
			t.Fatalf("read at %d: data differs", off)
		}
	}
	s = scrape(t, e.url)
	s.want(t, mib, "csicache_volume_cache_hit_bytes_total", vol...)
	s.want(t, 0, "csicache_volume_cache_miss_bytes_total", vol...)
	s.want(t, 1, "csicache_volume_cache_hit_ratio", vol...)
	s.want(t, mib, "csicache_cache_hit_bytes_total")
	s.want(t, 8, "csicache_nbd_request_duration_seconds", cmd("read")...)

	// 3. Read 1 MiB never written: every byte is a miss.
	for off := 4 * mib; off < 5*mib; off += 256 * kib {
		c.mustDo(nbd.CmdRead, uint64(off), 256*kib, nil)
	}
	s = scrape(t, e.url)
	s.want(t, mib, "csicache_volume_cache_hit_bytes_total", vol...)
	s.want(t, mib, "csicache_volume_cache_miss_bytes_total", vol...)
	s.want(t, 0.5, "csicache_volume_cache_hit_ratio", vol...)
	s.want(t, mib, "csicache_cache_miss_bytes_total")
	s.want(t, 12, "csicache_nbd_request_duration_seconds", cmd("read")...)
	s.want(t, 2*mib, "csicache_nbd_request_bytes_total", cmd("read")...)
	s.want(t, 12, "csicache_volume_reads_total", vol...)

	// 4. A read the backing store fails: an NBD error reply, an IO error.
	if errno, _ := c.do(nbd.CmdRead, badSector, 4*kib, nil); errno == 0 {
		t.Fatal("read of the failing backing sector succeeded")
	}
	s = scrape(t, e.url)
	s.want(t, 1, "csicache_nbd_request_errors_total", cmd("read")...)
	s.want(t, 1, "csicache_volume_io_errors_total", "volume", "pvc-1", "device", "backing")
	s.want(t, 0, "csicache_volume_io_errors_total", "volume", "pvc-1", "device", "cache")
	s.want(t, 1, "csicache_io_errors_total", "device", "backing")
	s.want(t, 2*mib, "csicache_nbd_request_bytes_total", cmd("read")...) // failed reads move no bytes

	// 5. Let writeback through: the dirty bytes fall to zero and the written
	// back bytes rise by as much.
	e.openGate()
	deadline := time.Now().Add(time.Minute)
	for s.value(t, "csicache_volume_dirty_bytes", vol...) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("dirty bytes still %v a minute after writeback was let through", s.value(t, "csicache_volume_dirty_bytes", vol...))
		}
		time.Sleep(20 * time.Millisecond)
		s = scrape(t, e.url)
	}
	s.want(t, mib, "csicache_volume_writeback_bytes_total", vol...)
	s.want(t, mib, "csicache_writeback_bytes_total")
	s.want(t, 0, "csicache_cache_dirty_bytes")
	if r := s.value(t, "csicache_volume_writeback_rate_bytes_per_second", vol...); r <= 0 {
		t.Fatalf("writeback rate %v", r)
	}

	// 6. The data is still served from the cache, now clean.
	c.mustDo(nbd.CmdRead, 0, 128*kib, nil)
	s = scrape(t, e.url)
	s.want(t, mib+128*kib, "csicache_volume_cache_hit_bytes_total", vol...)
}

// scrapeResult is one scrape, parsed.
type scrapeResult map[string]*dto.MetricFamily

func scrape(t *testing.T, url string) scrapeResult {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the scrape: %v", err)
	}
	return fams
}

// find returns the sample of name whose labels include the given name, value
// pairs.
func (s scrapeResult) find(name string, labels ...string) *dto.Metric {
	f := s[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if labels[i] == "" {
				continue
			}
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

func (s scrapeResult) has(name string, labels ...string) bool { return s.find(name, labels...) != nil }

// value is a sample's value; for a histogram, its count.
func (s scrapeResult) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	m := s.find(name, labels...)
	switch {
	case m == nil:
		t.Fatalf("no sample %s{%s}", name, strings.Join(labels, ","))
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	t.Fatalf("sample %s has no value", name)
	return 0
}

func (s scrapeResult) want(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	if got := s.value(t, name, labels...); got != want {
		t.Fatalf("%s{%s} = %v, want %v", name, strings.Join(labels, ","), got, want)
	}
}
