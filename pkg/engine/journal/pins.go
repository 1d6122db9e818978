package journal

// Pins returns the pin count of entry seq, or 0 if it is reclaimed or not open
// yet. The engine's consistency check compares it with the nodes pinning seq.
func (j *Journal) Pins(seq uint64) int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	if e := j.entryLocked(seq); e != nil {
		return e.pins
	}
	return 0
}
