// Package metrics exports what csi-cache is doing as Prometheus metrics
// (github.com/prometheus/client_golang): the cache set and its volumes (what
// bcache shows in sysfs), the NBD exports and the CSI calls.
//
// # Collectors
//
//	NewEngineCollector(cs)  cache set and per-volume counters and levels, read
//	                        from engine.CacheSet.Stats and Volumes at every
//	                        scrape (nothing is cached between scrapes)
//	NewNBDCollector()       per-export, per-command NBD request latency,
//	                        errors and bytes; it is the nbd.Observer of the
//	                        server(s) exporting the volumes
//	NewCSIMetrics()         CSI call counts by method and gRPC code, and
//	                        latency by method; a gRPC unary interceptor
//
// NewRegistry returns a registry with the Go runtime and process collectors and
// csicache_build_info; Listen and Serve serve a registry on /metrics.
//
// # Names and labels
//
// Every name starts with csicache_, is in base units (bytes, seconds), and
// counters end in _total; promlint passes on every collector (see the tests).
// The label "volume" is the volume's name (the CSI volume id, pvc-<uid> in
// Kubernetes), which is also its NBD export name: the engine collector emits
// the volumes that exist at scrape time only, and the NBD collector forgets an
// export when it is removed (NBDCollector.Forget), so the series of a volume
// go away with it and their number stays bounded by the number of volumes.
// "method" is the CSI method name (NodeStageVolume), "code" the gRPC code
// name (OK, NotFound), "command" the NBD command (read, write, flush, trim,
// write_zeroes, ...), "device" either cache or backing.
//
// The full list of metrics, with the PromQL an operator needs for hit
// ratios, error rates and latency quantiles, is in docs/operations.md.
package metrics
