package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/csi-cache/csi-cache/pkg/nbd"
)

// nbdLatencyBuckets span a cached 4 KiB read on NVMe (tens of µs) to a miss on
// a slow backing store or a flush behind a long queue (seconds).
var nbdLatencyBuckets = prometheus.ExponentialBucketsRange(10e-6, 10, 16)

// NBDCollector turns the NBD server's request events into per-export,
// per-command metrics: it is an nbd.Observer (give it to nbd.Options.Observer)
// and a prometheus.Collector. The export name is the volume label.
//
// ObserveRequest runs on the connections' writer goroutines; it takes no lock
// of its own beyond the client_golang vectors' (a map lookup per request).
type NBDCollector struct {
	latency *prometheus.HistogramVec
	errors  *prometheus.CounterVec
	bytes   *prometheus.CounterVec

	conns, connsTotal *prometheus.Desc

	mu      sync.Mutex // guards servers
	servers []*nbd.Server
}

var (
	_ nbd.Observer         = (*NBDCollector)(nil)
	_ prometheus.Collector = (*NBDCollector)(nil)
)

// NewNBDCollector returns a collector with no series yet.
func NewNBDCollector() *NBDCollector {
	labels := []string{"volume", "command"}
	return &NBDCollector{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "nbd", Name: "request_duration_seconds",
			Help: "NBD requests by export and command: time from reading the request to handing its reply to the writer " +
				"(engine time plus queueing). The _count is the number of requests.",
			Buckets: nbdLatencyBuckets,
		}, labels),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "nbd", Name: "request_errors_total",
			Help: "NBD requests answered with an error, by export and command.",
		}, labels),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "nbd", Name: "request_bytes_total",
			Help: "Bytes of successful NBD requests by export and command (read and write: data moved; trim and write_zeroes: range covered).",
		}, labels),
		conns: prometheus.NewDesc(namespace+"_nbd_connections",
			"Open NBD connections of the watched servers.", nil, nil),
		connsTotal: prometheus.NewDesc(namespace+"_nbd_connections_total",
			"NBD connections accepted by the watched servers.", nil, nil),
	}
}

// ObserveRequest implements nbd.Observer.
func (c *NBDCollector) ObserveRequest(i nbd.RequestInfo) {
	export, cmd := labelValue(i.Export), i.Command.String()
	c.latency.WithLabelValues(export, cmd).Observe(i.Latency.Seconds())
	if i.Errno != 0 {
		c.errors.WithLabelValues(export, cmd).Inc()
		return
	}
	switch i.Command {
	case nbd.CmdRead, nbd.CmdWrite, nbd.CmdTrim, nbd.CmdWriteZeroes, nbd.CmdCache:
		c.bytes.WithLabelValues(export, cmd).Add(float64(i.Length))
	}
}

// Forget drops every series of an export; call it when the export is removed
// (the volume is unstaged), so that series stay bounded by the volumes.
func (c *NBDCollector) Forget(export string) {
	l := prometheus.Labels{"volume": labelValue(export)}
	c.latency.DeletePartialMatch(l)
	c.errors.DeletePartialMatch(l)
	c.bytes.DeletePartialMatch(l)
}

// WatchServer adds s's connection counts to csicache_nbd_connections and
// csicache_nbd_connections_total.
func (c *NBDCollector) WatchServer(s *nbd.Server) {
	c.mu.Lock()
	c.servers = append(c.servers, s)
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *NBDCollector) Describe(ch chan<- *prometheus.Desc) {
	c.latency.Describe(ch)
	c.errors.Describe(ch)
	c.bytes.Describe(ch)
	ch <- c.conns
	ch <- c.connsTotal
}

// Collect implements prometheus.Collector.
func (c *NBDCollector) Collect(ch chan<- prometheus.Metric) {
	c.latency.Collect(ch)
	c.errors.Collect(ch)
	c.bytes.Collect(ch)
	c.mu.Lock()
	servers := append([]*nbd.Server(nil), c.servers...)
	c.mu.Unlock()
	var active, total uint64
	for _, s := range servers {
		st := s.Stats()
		active += st.ActiveConnections
		total += st.TotalConnections
	}
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(active))
	ch <- prometheus.MustNewConstMetric(c.connsTotal, prometheus.CounterValue, float64(total))
}
