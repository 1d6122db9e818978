package driver

import "sync"

// volumeLocks serializes operations on one volume. A call that finds its
// volume busy fails at once with ErrBusy (gRPC Aborted: "operation pending for
// volume", which the CO retries) instead of queueing behind an operation that
// may hang on a mount or a device.
type volumeLocks struct {
	mu   sync.Mutex          // guards held
	held map[string]struct{} // ids with an operation in progress
}

func newVolumeLocks() *volumeLocks {
	return &volumeLocks{held: make(map[string]struct{})}
}

// tryLock takes the lock of id; ok is false if it is held. The caller calls
// unlock(id) when done.
func (l *volumeLocks) tryLock(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, busy := l.held[id]; busy {
		return false
	}
	l.held[id] = struct{}{}
	return true
}

func (l *volumeLocks) unlock(id string) {
	l.mu.Lock()
	delete(l.held, id)
	l.mu.Unlock()
}

// lock takes the lock of id or returns an ErrBusy error naming op.
func (l *volumeLocks) lock(id, op string) (unlock func(), err error) {
	if !l.tryLock(id) {
		return nil, errorf(ErrBusy, "%s: another operation on volume %q is in progress", op, id)
	}
	return func() { l.unlock(id) }, nil
}
