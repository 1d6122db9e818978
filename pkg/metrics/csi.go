package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// csiLatencyBuckets span a capability query (sub-millisecond) to a
// NodeStageVolume that formats a large filesystem (minutes).
var csiLatencyBuckets = prometheus.ExponentialBucketsRange(0.0005, 300, 16)

// CSIMetrics counts CSI calls by method and gRPC code and times them by
// method. Install UnaryServerInterceptor outermost, so that it sees the code
// the client gets.
type CSIMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

var _ prometheus.Collector = (*CSIMetrics)(nil)

// NewCSIMetrics returns CSI call metrics with no series yet.
func NewCSIMetrics() *CSIMetrics {
	return &CSIMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "csi", Name: "requests_total",
			Help: "CSI calls by method and gRPC status code (errors: code != \"OK\").",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "csi", Name: "request_duration_seconds",
			Help:    "Duration of CSI calls by method, errors included.",
			Buckets: csiLatencyBuckets,
		}, []string{"method"}),
	}
}

// Observe records one call. fullMethod is gRPC's "/csi.v1.Node/NodeStageVolume";
// the label is the part after the last slash.
func (m *CSIMetrics) Observe(fullMethod string, err error, d time.Duration) {
	method := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
	m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	m.latency.WithLabelValues(method).Observe(d.Seconds())
}

// UnaryServerInterceptor returns an interceptor that observes every unary call.
// The method label is bounded by the services registered on the server.
func (m *CSIMetrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.Observe(info.FullMethod, err, time.Since(start))
		return resp, err
	}
}

// Describe implements prometheus.Collector.
func (m *CSIMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.latency.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *CSIMetrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.latency.Collect(ch)
}
