//go:build !nbdattach

package driver

import (
	"errors"

	"github.com/csi-cache/csi-cache/pkg/nbd"
	"github.com/csi-cache/csi-cache/pkg/nbd/netlink"
)

// NewNBDAttacher returns the product Attacher. In this build kernel attach is
// not wired yet (build with -tags nbdattach once pkg/nbd has Server.Attach):
// Attach fails with netlink.ErrNoDriver when the kernel has no nbd driver, and
// with a FailedPrecondition saying so otherwise. Connected answers from the
// kernel's NBD status, so re-adoption logs what it finds. The options are
// unused: nothing is exported.
func NewNBDAttacher(NBDOptions) Attacher { return stubAttacher{} }

type stubAttacher struct{}

// errNotWired is returned by Attach and Reattach when the kernel has nbd.
var errNotWired = errorf(ErrPrecondition, "kernel NBD attach is not wired into this build yet (build with -tags nbdattach)")

func (stubAttacher) unavailable() error {
	c, err := netlink.Dial()
	if err != nil {
		return err
	}
	c.Close()
	return errNotWired
}

func (a stubAttacher) Attach(string, nbd.Backend, bool) (Device, error) {
	return nil, a.unavailable()
}

func (a stubAttacher) Reattach(string, nbd.Backend, bool, int) (Device, error) {
	return nil, a.unavailable()
}

func (stubAttacher) Connected(index int) (bool, error) {
	c, err := netlink.Dial()
	if errors.Is(err, netlink.ErrNoDriver) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer c.Close()
	return c.Connected(index)
}

func (stubAttacher) Close() error { return nil }
