//go:build !linux

package nbd

import "errors"

var errNotLinux = errors.New("nbd: kernel attach needs Linux")

// Attach needs Linux.
func (s *Server) Attach(export string, opts AttachOptions) (*Attachment, error) {
	return nil, errNotLinux
}

// Reattach needs Linux.
func (s *Server) Reattach(export string, index int, opts AttachOptions) (*Attachment, error) {
	return nil, errNotLinux
}

// Resize needs Linux.
func (a *Attachment) Resize(size int64) error { return errNotLinux }

// Detach needs Linux.
func (a *Attachment) Detach() error { return errNotLinux }

// DeviceConnected needs Linux.
func DeviceConnected(index int) (bool, error) { return false, errNotLinux }
