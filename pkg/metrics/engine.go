package metrics

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/csi-cache/csi-cache/pkg/engine"
)

const namespace = "csicache"

// sectorBytes converts the engine's sector counts (hits, misses, bypassed) to
// bytes, the base unit.
const sectorBytes = 512

// EngineCollector exports a cache set's statistics. Every scrape reads
// engine.CacheSet.Stats and Volumes afresh; a deleted volume's series are
// gone from the next scrape.
type EngineCollector struct {
	cs *engine.CacheSet

	set []setMetric
	vol []volMetric
	// Metrics with their own labels.
	setIOErrors, volIOErrors, volInfo *prometheus.Desc
}

// setMetric is a cache-set metric without labels.
type setMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(s *engine.SetStats, healthy bool) float64
}

// volMetric is a per-volume metric with the label volume.
type volMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(v *engine.VolumeInfo) float64
}

var _ prometheus.Collector = (*EngineCollector)(nil)

// NewEngineCollector returns a collector of cs's statistics. Register it once
// per cache set.
func NewEngineCollector(cs *engine.CacheSet) *EngineCollector {
	c := &EngineCollector{cs: cs}
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	s := func(name, help string, typ prometheus.ValueType, value func(s *engine.SetStats, healthy bool) float64) {
		c.set = append(c.set, setMetric{prometheus.NewDesc(namespace+"_"+name, help, nil, nil), typ, value})
	}
	u := func(x uint64) float64 { return float64(x) }

	s("cache_set_healthy", "1 while the cache set can take writes, 0 once a device error it could not work around stopped it.", gauge,
		func(_ *engine.SetStats, healthy bool) float64 {
			if healthy {
				return 1
			}
			return 0
		})
	s("volumes", "Volumes of the cache set.", gauge, func(s *engine.SetStats, _ bool) float64 { return u(s.Volumes) })
	s("cache_size_bytes", "Bytes of the cache device's buckets.", gauge, func(s *engine.SetStats, _ bool) float64 { return u(s.CacheBytes) })
	s("cache_free_bytes", "Bytes in free buckets or in buckets holding only clean (reclaimable) data.", gauge,
		func(s *engine.SetStats, _ bool) float64 { return u(s.FreeBytes) })
	s("cache_dirty_bytes", "Data in the cache not yet written back to the backing stores.", gauge,
		func(s *engine.SetStats, _ bool) float64 { return u(s.DirtyBytes) })
	s("cache_metadata_bytes", "Bytes of buckets holding btree nodes and other metadata.", gauge,
		func(s *engine.SetStats, _ bool) float64 { return u(s.MetadataBytes) })
	s("cache_buckets", "Buckets of the cache device.", gauge, func(s *engine.SetStats, _ bool) float64 { return u(s.Buckets) })
	s("cache_bucket_size_bytes", "Size of one bucket.", gauge, func(s *engine.SetStats, _ bool) float64 { return float64(s.BucketSize) })
	s("cache_hit_bytes_total", "Bytes read from the cache, all volumes (since the cache set was opened; a deleted volume's share leaves the sum).", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.Hits * sectorBytes) })
	s("cache_miss_bytes_total", "Bytes read from the backing stores because the cache did not hold them, all volumes.", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.Misses * sectorBytes) })
	s("cache_bypass_bytes_total", "Bytes that skipped the cache (sequential cutoff, cache full, cache mode), all volumes.", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.Bypassed * sectorBytes) })
	s("cache_hit_ratio", "Hit bytes / (hit + miss bytes) since the cache set was opened; for a recent ratio use rate() of the _bytes_total counters.", gauge,
		func(s *engine.SetStats, _ bool) float64 { return ratio(s.Hits, s.Misses) })
	s("writeback_bytes_total", "Dirty bytes written back to the backing stores.", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.WritebackBytes) })
	s("journal_fill_ratio", "Share of the journal ring held by entries not yet reclaimed (1: writers wait for flushWrite).", gauge,
		func(s *engine.SetStats, _ bool) float64 { return s.JournalFill })
	s("btree_depth", "Levels of the btree (1: the root is a leaf).", gauge, func(s *engine.SetStats, _ bool) float64 { return float64(s.BtreeDepth) })
	s("btree_nodes", "Buckets holding btree nodes.", gauge, func(s *engine.SetStats, _ bool) float64 { return u(s.BtreeNodes) })
	s("btree_node_cache_nodes", "Btree nodes in memory (live and reusable structs).", gauge,
		func(s *engine.SetStats, _ bool) float64 { return float64(s.NodeCacheNodes) })
	s("btree_node_cache_bytes", "Memory of the btree node cache (nodes times the bucket size).", gauge,
		func(s *engine.SetStats, _ bool) float64 { return u(s.NodeCacheBytes) })
	s("btree_node_cache_peak_nodes", "Most btree nodes in memory at once since the cache set was opened.", gauge,
		func(s *engine.SetStats, _ bool) float64 { return float64(s.NodeCachePeak) })
	s("btree_reaper_skips_total", "Nodes the node reaper skipped because flushWrite had selected them (journalFlush set).", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.ReaperSkips) })
	s("btree_node_free_waits_total", "Times nodeFree waited for a flushWrite to release a node.", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.NodeFreeWaits) })
	s("btree_flush_write_runs_total", "flushWrite runs (the journal was full and dirty nodes pinning its oldest entry were written).", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.FlushWriteRuns) })
	s("btree_flush_write_nodes_total", "Nodes written by flushWrite.", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.FlushWriteNodes) })
	s("btree_splits_total", "Btree node splits.", counter, func(s *engine.SetStats, _ bool) float64 { return u(s.Splits) })
	s("btree_compactions_total", "Btree node compactions (log rewritten into a new bucket).", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.Compactions) })
	s("btree_root_changes_total", "Btree root replacements.", counter, func(s *engine.SetStats, _ bool) float64 { return u(s.RootChanges) })
	s("gc_runs_total", "Garbage collection passes.", counter, func(s *engine.SetStats, _ bool) float64 { return u(s.GCRuns) })
	s("gc_freed_buckets_total", "Buckets garbage collection freed.", counter,
		func(s *engine.SetStats, _ bool) float64 { return u(s.GCBucketsFreed) })
	c.setIOErrors = prometheus.NewDesc(namespace+"_io_errors_total",
		"Failed device IOs of all volumes, by device (cache or backing).", []string{"device"}, nil)

	v := func(name, help string, typ prometheus.ValueType, value func(v *engine.VolumeInfo) float64) {
		c.vol = append(c.vol, volMetric{prometheus.NewDesc(namespace+"_volume_"+name, help, []string{"volume"}, nil), typ, value})
	}
	v("size_bytes", "Size of the volume.", gauge, func(i *engine.VolumeInfo) float64 { return u(i.Size) })
	v("reads_total", "Read requests.", counter, func(i *engine.VolumeInfo) float64 { return u(i.Stats.ReadOps) })
	v("writes_total", "Write requests.", counter, func(i *engine.VolumeInfo) float64 { return u(i.Stats.WriteOps) })
	v("read_bytes_total", "Bytes read.", counter, func(i *engine.VolumeInfo) float64 { return u(i.Stats.ReadBytes) })
	v("written_bytes_total", "Bytes written.", counter, func(i *engine.VolumeInfo) float64 { return u(i.Stats.WriteBytes) })
	v("cache_hit_bytes_total", "Bytes read from the cache.", counter,
		func(i *engine.VolumeInfo) float64 { return u(i.Stats.Hits * sectorBytes) })
	v("cache_miss_bytes_total", "Bytes read from the backing store because the cache did not hold them.", counter,
		func(i *engine.VolumeInfo) float64 { return u(i.Stats.Misses * sectorBytes) })
	v("cache_bypass_bytes_total", "Bytes that skipped the cache (sequential cutoff, cache full, cache mode).", counter,
		func(i *engine.VolumeInfo) float64 { return u(i.Stats.Bypassed * sectorBytes) })
	v("cache_hit_ratio", "Hit bytes / (hit + miss bytes) since the cache set was opened.", gauge,
		func(i *engine.VolumeInfo) float64 { return i.Stats.HitRatio() })
	v("dirty_bytes", "Data in the cache not yet written back to the backing store (a cache-only volume's data is dirty for good).", gauge,
		func(i *engine.VolumeInfo) float64 { return u(i.Stats.DirtyBytes) })
	v("writeback_bytes_total", "Dirty bytes written back to the backing store.", counter,
		func(i *engine.VolumeInfo) float64 { return u(i.Stats.WritebackBytes) })
	v("writeback_rate_bytes_per_second", "Writeback rate the PI controller currently aims at (bcache's writeback_rate).", gauge,
		func(i *engine.VolumeInfo) float64 { return i.Stats.WritebackRate })
	c.volIOErrors = prometheus.NewDesc(namespace+"_volume_io_errors_total",
		"Failed device IOs of the volume, by device (cache or backing).", []string{"volume", "device"}, nil)
	c.volInfo = prometheus.NewDesc(namespace+"_volume_info",
		"Always 1; the labels describe the volume: its engine id, cache mode and backing store.",
		[]string{"volume", "id", "mode", "backing"}, nil)
	return c
}

// ratio is hits/(hits+misses), 0 without reads.
func ratio(hits, misses uint64) float64 {
	if hits+misses == 0 {
		return 0
	}
	return float64(hits) / float64(hits+misses)
}

// Describe implements prometheus.Collector.
func (c *EngineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.set {
		ch <- m.desc
	}
	for _, m := range c.vol {
		ch <- m.desc
	}
	ch <- c.setIOErrors
	ch <- c.volIOErrors
	ch <- c.volInfo
}

// Collect implements prometheus.Collector.
func (c *EngineCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.cs.Stats()
	healthy := c.cs.Err() == nil
	for _, m := range c.set {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(&st, healthy))
	}
	ch <- prometheus.MustNewConstMetric(c.setIOErrors, prometheus.CounterValue, float64(st.CacheIOErrors), "cache")
	ch <- prometheus.MustNewConstMetric(c.setIOErrors, prometheus.CounterValue, float64(st.BackingIOErrors), "backing")
	for _, info := range c.cs.Volumes() {
		name := labelValue(info.Name)
		for _, m := range c.vol {
			ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(&info), name)
		}
		ch <- prometheus.MustNewConstMetric(c.volIOErrors, prometheus.CounterValue, float64(info.Stats.CacheIOErrors), name, "cache")
		ch <- prometheus.MustNewConstMetric(c.volIOErrors, prometheus.CounterValue, float64(info.Stats.BackingIOErrors), name, "backing")
		ch <- prometheus.MustNewConstMetric(c.volInfo, prometheus.GaugeValue, 1,
			name, strconv.FormatUint(info.ID, 10), info.Mode.String(), info.Backing.String())
	}
}

// labelValue makes s a valid label value. Volume names reaching the engine
// through the CSI driver are ASCII, but the engine takes any bytes, and an
// invalid UTF-8 label would make the const-metric constructors panic.
func labelValue(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
