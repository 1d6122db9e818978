package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/csi-cache/csi-cache/pkg/metrics"
	"github.com/csi-cache/csi-cache/pkg/nbd"
)

// NewNBDAttacher returns the product Attacher: an NBD server of its own that
// exports the staged volumes, with kernel devices attached to the exports
// over netlink (nbd.Server.Attach) and handed new sockets after a plugin
// restart (nbd.Server.Reattach, NBD RECONFIGURE).
//
// Written against the pkg/nbd attach API being built in parallel; the
// options (connections per device, dead-connection timeout that lets a
// restarted plugin reconfigure) are nbd.AttachOptions' defaults.
func NewNBDAttacher(o NBDOptions) Attacher {
	a := &nbdAttacher{metrics: o.Metrics}
	var opts nbd.Options
	if o.Metrics != nil {
		opts.Observer = o.Metrics
	}
	a.srv = nbd.NewServer(opts)
	if o.Metrics != nil {
		o.Metrics.WatchServer(a.srv)
	}
	return a
}

// exportTimeout bounds draining an export's connections on detach.
const exportTimeout = 30 * time.Second

type nbdAttacher struct {
	srv     *nbd.Server
	metrics *metrics.NBDCollector // nil without metrics
}

func (a *nbdAttacher) Attach(name string, vol nbd.Backend, readOnly bool) (Device, error) {
	if err := a.srv.AddExport(name, vol, readOnly); err != nil {
		return nil, err
	}
	att, err := a.srv.Attach(name, nbd.AttachOptions{})
	if err != nil {
		a.removeExport(name)
		return nil, err
	}
	return &nbdDevice{a: a, name: name, att: att}, nil
}

func (a *nbdAttacher) Reattach(name string, vol nbd.Backend, readOnly bool, index int) (Device, error) {
	if err := a.srv.AddExport(name, vol, readOnly); err != nil {
		return nil, err
	}
	att, err := a.srv.Reattach(name, index, nbd.AttachOptions{})
	if err != nil {
		a.removeExport(name)
		return nil, err
	}
	return &nbdDevice{a: a, name: name, att: att}, nil
}

func (a *nbdAttacher) Connected(index int) (bool, error) { return nbd.DeviceConnected(index) }

// Close drops every connection; the kernel devices wait for a reattach.
func (a *nbdAttacher) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), exportTimeout)
	defer cancel()
	return a.srv.Shutdown(ctx)
}

func (a *nbdAttacher) removeExport(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), exportTimeout)
	defer cancel()
	err := a.srv.RemoveExport(ctx, name)
	if a.metrics != nil && (err == nil || errors.Is(err, nbd.ErrUnknownExport)) {
		a.metrics.Forget(name)
	}
	return err
}

type nbdDevice struct {
	a    *nbdAttacher
	name string
	att  *nbd.Attachment

	mu       sync.Mutex // guards detached
	detached bool       // the kernel device is disconnected
}

func (d *nbdDevice) Path() string            { return d.att.Device() }
func (d *nbdDevice) Index() int              { return d.att.Index() }
func (d *nbdDevice) Resize(size int64) error { return d.att.Resize(size) }

// Detach disconnects the kernel device (which flushes it), then removes the
// export (which drains its connections and flushes the volume). A retry after
// a failed export removal does not disconnect again.
func (d *nbdDevice) Detach() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.detached {
		if err := d.att.Detach(); err != nil {
			return fmt.Errorf("disconnecting %s: %w", d.att.Device(), err)
		}
		d.detached = true
	}
	if err := d.a.removeExport(d.name); err != nil && !errors.Is(err, nbd.ErrUnknownExport) {
		return err
	}
	return nil
}
