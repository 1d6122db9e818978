package nbd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// DefaultTCPAddress is where ListenTCP listens when given no address.
const DefaultTCPAddress = "127.0.0.1:10809"

// ListenUnix listens on a unix socket at path that only the owner can
// connect to (mode 0600; the socket is created in a private directory,
// chmod'ed and renamed into place, so it is never reachable with looser
// permissions). A stale socket at path, one nobody accepts on, is removed;
// a live socket or any other kind of file is an error. Closing the listener
// removes the socket file.
func ListenUnix(path string) (net.Listener, error) {
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	tmpDir, err := os.MkdirTemp(filepath.Dir(path), ".nbd")
	if err != nil {
		return nil, fmt.Errorf("nbd: listen %s: %w", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("nbd: listen %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("nbd: listen %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("nbd: listen %s: %w", path, err)
	}
	return &unixListener{UnixListener: l, path: path}, nil
}

// unixListener removes its socket file on Close.
type unixListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() { _ = os.Remove(l.path) })
	return err
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nbd: listen %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("nbd: listen %s: exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("nbd: listen %s: socket is in use", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("nbd: listen %s: probing existing socket: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("nbd: listen %s: removing stale socket: %w", path, err)
	}
	return nil
}

// TCPOptions configure ListenTCP.
type TCPOptions struct {
	// AllowNonLoopback permits addresses other than loopback ones. NBD has
	// no authentication here: only set it on a trusted network.
	AllowNonLoopback bool
}

// ListenTCP listens on addr (DefaultTCPAddress if empty). Unless
// opts.AllowNonLoopback, the host must be a loopback address or
// "localhost"; an empty host (all interfaces) is refused.
func ListenTCP(addr string, opts TCPOptions) (net.Listener, error) {
	if addr == "" {
		addr = DefaultTCPAddress
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen tcp %s: %w", addr, err)
	}
	if !opts.AllowNonLoopback && !isLoopback(host) {
		return nil, fmt.Errorf("nbd: listen tcp %s: not a loopback address (set AllowNonLoopback)", addr)
	}
	network := "tcp"
	if host == "localhost" {
		network = "tcp4" // 127.0.0.1, whatever the resolver says
		addr = net.JoinHostPort("127.0.0.1", addr[len(host)+1:])
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	return l, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
