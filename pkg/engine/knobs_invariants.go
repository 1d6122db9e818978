//go:build invariants

package engine

// testingKnobs are hooks into the engine's race windows and fault switches. They
// exist only in builds with the invariants tag (make test); production builds use
// knobs_off.go, where every hook is an empty function the compiler removes.
type testingKnobs struct {
	// DisableJournalFlushFix turns the journalFlush flag off: selection does not
	// set it, the reaper and nodeFree ignore it. The bcache bug comes back.
	DisableJournalFlushFix bool
	// AfterSelect runs after flushWrite selected its nodes and before it flushes
	// them: the race window.
	AfterSelect func(sel []flushSelection)
	// WrongNode runs when the flush step finds a struct that is not the node it
	// selected (reaped and reused, or freed).
	WrongNode func(sel flushSelection, now *node)
	// ReapSkip runs when the reaper skips a node because journalFlush is set.
	ReapSkip func(n *node)
	// Reaped runs when the reaper or cannibalize takes a live node.
	Reaped func(n *node)
	// Assigned runs when a struct gets a new identity.
	Assigned func(n *node)
	// NodeFreeRetry runs each time nodeFree waits for journalFlush to clear.
	NodeFreeRetry func(n *node, attempt int)
	// SplitFail, when it returns an error, makes a btree split fail after the new
	// nodes were allocated (the error path that calls nodeFree on them).
	SplitFail func() error
	// NoEviction keeps the allocator from invalidating clean data buckets
	// (tests whose keys point into one hand-made data bucket).
	NoEviction bool
	// SkipHiddenDirtySync makes a write around the cache (or a zeroing) journal
	// the whiteout over dirty data without syncing the backing store first: a
	// power loss can then uncover stale backing content (TestDataCrash catches it).
	SkipHiddenDirtySync bool
	// NoWriteback keeps the writeback goroutines from starting: dirty data
	// stays dirty until the volume is closed.
	NoWriteback bool
}

func (c *CacheSet) journalFlushFix() bool { return !c.knobs.DisableJournalFlushFix }

func (c *CacheSet) hookAfterSelect(sel []flushSelection) {
	if f := c.knobs.AfterSelect; f != nil {
		f(sel)
	}
}

func (c *CacheSet) hookWrongNode(s flushSelection, n *node) {
	if f := c.knobs.WrongNode; f != nil {
		f(s, n)
	}
}

func (c *CacheSet) hookReapSkip(n *node) {
	if f := c.knobs.ReapSkip; f != nil {
		f(n)
	}
}

func (c *CacheSet) hookReaped(n *node) {
	if f := c.knobs.Reaped; f != nil {
		f(n)
	}
}

func (c *CacheSet) hookAssigned(n *node) {
	if f := c.knobs.Assigned; f != nil {
		f(n)
	}
}

func (c *CacheSet) hookNodeFreeRetry(n *node, attempt int) {
	if f := c.knobs.NodeFreeRetry; f != nil {
		f(n, attempt)
	}
}

func (c *CacheSet) hookSplitFail() error {
	if f := c.knobs.SplitFail; f != nil {
		return f()
	}
	return nil
}

func (c *CacheSet) noEviction() bool { return c.knobs.NoEviction }

func (c *CacheSet) skipHiddenDirtySync() bool { return c.knobs.SkipHiddenDirtySync }

func (c *CacheSet) noWriteback() bool { return c.knobs.NoWriteback }
