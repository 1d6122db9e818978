//go:build !invariants

package engine

// testingKnobs is empty in production builds; see knobs_invariants.go.
type testingKnobs struct{}

func (c *CacheSet) journalFlushFix() bool               { return true }
func (c *CacheSet) hookAfterSelect([]flushSelection)    {}
func (c *CacheSet) hookWrongNode(flushSelection, *node) {}
func (c *CacheSet) hookReapSkip(*node)                  {}
func (c *CacheSet) hookReaped(*node)                    {}
func (c *CacheSet) hookAssigned(*node)                  {}
func (c *CacheSet) hookNodeFreeRetry(*node, int)        {}
func (c *CacheSet) hookSplitFail() error                { return nil }
func (c *CacheSet) noEviction() bool                    { return false }
func (c *CacheSet) skipHiddenDirtySync() bool           { return false }
func (c *CacheSet) noWriteback() bool                   { return false }
