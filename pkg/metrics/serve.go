package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"github.com/csi-cache/csi-cache/internal/version"
)

// NewRegistry returns a registry with the Go runtime and process collectors and
// csicache_build_info{version, commit}. Register the csi-cache collectors on it.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "build_info",
			Help:        "Always 1; the labels give the version and commit of the running binary.",
			ConstLabels: prometheus.Labels{"version": version.Version, "commit": version.Commit},
		}, func() float64 { return 1 }),
	)
	return reg
}

// Handler serves g in the Prometheus text format (or OpenMetrics when the
// scraper asks for it). A collector error is logged and the metrics that could
// be gathered are still served.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:          klogLogger{},
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

type klogLogger struct{}

func (klogLogger) Println(v ...any) { klog.ErrorS(errors.New(fmt.Sprint(v...)), "Gathering metrics") }

// Server serves /metrics on one listener.
type Server struct {
	l   net.Listener
	srv *http.Server
}

// Listen listens on addr (host:port; ":9810" for every address) for /metrics
// of g. Serve starts serving.
func Listen(addr string, g prometheus.Gatherer) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %q: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(g))
	return &Server{l: l, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

// Addr is the address listened on (with the port chosen for ":0").
func (s *Server) Addr() net.Addr { return s.l.Addr() }

// Serve serves until Shutdown; it returns nil after Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// Shutdown stops serving, waiting for scrapes in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Serve serves /metrics of g on addr until ctx ends.
func Serve(ctx context.Context, addr string, g prometheus.Gatherer) error {
	s, err := Listen(addr, g)
	if err != nil {
		return err
	}
	klog.InfoS("Serving metrics", "address", s.Addr().String())
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = s.Shutdown(sctx)
	if serr := <-done; err == nil {
		err = serr
	}
	return err
}
