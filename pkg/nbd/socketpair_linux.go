package nbd

import (
	"fmt"
	"net"
	"os"
	"syscall"
)

// SocketPair returns the two ends of a unix stream socket pair for attaching
// an export to the kernel: kernel is handed to the nbd driver over netlink
// (and closed by the caller afterwards; the kernel keeps its own reference),
// server is passed to Server.ServeExportConn.
func SocketPair() (kernel *os.File, server net.Conn, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("nbd: socketpair: %w", err)
	}
	kernel = os.NewFile(uintptr(fds[0]), "nbd-kernel")
	sf := os.NewFile(uintptr(fds[1]), "nbd-server")
	defer sf.Close()
	server, err = net.FileConn(sf) // dups the descriptor
	if err != nil {
		kernel.Close()
		return nil, nil, fmt.Errorf("nbd: socketpair: %w", err)
	}
	return kernel, server, nil
}
