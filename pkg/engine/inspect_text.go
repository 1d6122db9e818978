package engine

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText writes the inspection for people (csi-cache inspect): one section
// per structure, the volumes as a table, then the problems.
func (r *Inspection) WriteText(w io.Writer) error {
	p := &textWriter{w: w}
	p.line("device", "%s", sizeText(r.DeviceSize))
	if sb := r.Superblock; sb != nil {
		p.line("superblock", "copy A %s, copy B %s", copyText(sb.CopyA), copyText(sb.CopyB))
		p.sub("uuid", "%s", sb.UUID)
		p.sub("created", "%s", sb.Created.Format(time.RFC3339))
		p.sub("version", "%d, seq %d%s", sb.Version, sb.Seq, map[bool]string{true: ", clean", false: ""}[sb.Clean])
		p.sub("formatted size", "%s", sizeText(sb.DeviceSize))
		p.sub("volume tables", "2 × %s at %d", bytesText(sb.VolTableSize), sb.VolTableOffset)
		p.sub("gens", "2 × %s at %d", bytesText(sb.GensSize), sb.GensOffset)
		p.sub("journal", "%s at %d", bytesText(sb.JournalSize), sb.JournalOffset)
		p.sub("buckets", "%d × %s at %d", sb.Buckets, bytesText(int64(sb.BucketSize)), sb.BucketsOffset)
		p.sub("max volumes", "%d", sb.MaxVolumes)
	}
	if vt := r.VolumeTable; vt != nil {
		p.line("volume table", "seq %d, %d records (%d marked deleted); copy A %s, copy B %s",
			vt.Seq, vt.Records, vt.Deleted, copyText(vt.CopyA), copyText(vt.CopyB))
	}
	if g := r.Gens; g != nil {
		p.line("gens", "%d pages, highest generation %d; %d pages with a bad copy, %d unreadable", g.Pages, g.MaxGen, g.OtherBad, g.Unreadable)
	}
	if j := r.Journal; j != nil {
		how := ""
		if j.Scanned {
			how = " (scanned: the journal does not open, see problems)"
		}
		p.line("journal", "%s of %s held (%.1f%%)%s", bytesText(j.UsedBytes), bytesText(j.Size), 100*j.Fill, how)
		if j.Entries > 0 {
			p.sub("replay", "seq %d to %d: %d entries, %d keys", j.LastSeq, j.NewestSeq, j.Entries, j.Keys)
		} else {
			p.sub("replay", "nothing")
		}
		if j.DroppedUnflushed > 0 {
			p.sub("dropped", "%d entries written without a flush on an earlier boot (a reopen drops them: never flushed before the machine went down)", j.DroppedUnflushed)
		}
		p.sub("root", "bucket %d gen %d level %d", j.RootBucket, j.RootGen, j.RootLevel)
		p.sub("next volume id", "%d", j.NextVolumeID)
	}
	if bt := r.Btree; bt != nil {
		p.line("btree", "depth %d, %d nodes (%d unreadable), root bucket %d gen %d", bt.Depth, bt.Nodes, bt.BadNodes, bt.RootBucket, bt.RootGen)
		for _, l := range bt.Levels {
			what := "children"
			if l.Level == 0 {
				what = "extents"
			}
			p.sub(fmt.Sprintf("level %d", l.Level), "%d nodes, %d %s, %d bsets, %s of log", l.Nodes, l.Keys, what, l.Bsets, bytesText(l.LogBytes))
		}
		p.sub("extents", "%d with the journal applied", bt.LeafKeys)
	}
	if b := r.Buckets; b != nil {
		p.line("buckets", "%d × %s: %d btree, %d data (%d dirty), %d empty", b.Buckets, bytesText(int64(b.BucketSize)), b.Btree, b.Data, b.DirtyBuckets, b.Empty)
		p.sub("data", "%s live, %s dirty", bytesText(int64(b.LiveBytes)), bytesText(int64(b.DirtyBytes)))
		p.sub("data fill", "<=25%%: %d, <=50%%: %d, <=75%%: %d, >75%%: %d", b.Fill[0], b.Fill[1], b.Fill[2], b.Fill[3])
		p.sub("stale extents", "%d", b.StaleKeys)
	}
	p.line("volumes", "%d; cached and dirty data as on disk (hit ratios are counters of the running engine: csicache_volume_cache_hit_ratio)", len(r.Volumes))
	if len(r.Volumes) > 0 {
		tw := tabwriter.NewWriter(p, 2, 8, 2, ' ', 0)
		fmt.Fprintf(tw, "  ID\tNAME\tSIZE\tMODE\tBACKING\tCACHED\tDIRTY\tEXTENTS\tCREATED\n")
		for _, v := range r.Volumes {
			name := v.Name
			if v.Deleted {
				name += " (deleted)"
			}
			fmt.Fprintf(tw, "  %d\t%q\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", v.ID, name, bytesText(int64(v.Size)), v.Mode, v.Backing,
				bytesText(int64(v.CachedBytes)), bytesText(int64(v.DirtyBytes)), v.Extents, v.Created.Format(time.RFC3339))
		}
		tw.Flush()
	}
	switch n := len(r.Problems); n {
	case 0:
		p.line("problems", "none")
	default:
		p.line("problems", "%d (%d errors)", n, r.Errors())
		for _, pr := range r.Problems {
			fmt.Fprintf(p, "  %s\n", pr)
		}
	}
	return p.err
}

// textWriter writes "label   value" lines, remembering the first error.
type textWriter struct {
	w   io.Writer
	err error
}

func (p *textWriter) Write(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	n, err := p.w.Write(b)
	p.err = err
	return n, err
}

func (p *textWriter) line(label, format string, args ...any) {
	fmt.Fprintf(p, "%-18s %s\n", label, fmt.Sprintf(format, args...))
}

func (p *textWriter) sub(label, format string, args ...any) {
	fmt.Fprintf(p, "  %-16s %s\n", label, fmt.Sprintf(format, args...))
}

func copyText(c CopyState) string {
	switch c.State {
	case "current", "ok", "stale":
		return fmt.Sprintf("%s (seq %d)", c.State, c.Seq)
	}
	return c.State
}

// bytesText is n in the largest binary unit that keeps it at least 1, exact
// when it is a whole number of that unit.
func bytesText(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	s := fmt.Sprintf("%.1f", f)
	return strings.TrimSuffix(s, ".0") + " " + units[i]
}

func sizeText(n int64) string { return fmt.Sprintf("%s (%d bytes)", bytesText(n), n) }
