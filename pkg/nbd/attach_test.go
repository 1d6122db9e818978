package nbd

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"testing"
)

// TestKernelAttachPath plays the kernel on one end of SocketPair: no
// handshake, the values come from ExportInfo.
func TestKernelAttachPath(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	info, err := s.ExportInfo("disk")
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != testSize || info.Flags != rwFlags || info.MinBlockSize != 512 || info.ReadOnly {
		t.Fatalf("ExportInfo %+v", info)
	}
	if _, err := s.ExportInfo("nope"); !errors.Is(err, ErrUnknownExport) {
		t.Fatal(err)
	}
	kf, srv, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeExportConn(srv, "disk") }()
	kc, err := net.FileConn(kf) // stands in for the kernel
	kf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	c := newClient(kc, bufio.NewReader(kc))
	p := bytes.Repeat([]byte{5}, 64<<10)
	c.write(t, 1<<20, p, CmdFlagFUA)
	if !bytes.Equal(c.read(t, 1<<20, 64<<10), p) {
		t.Fatal("mismatch")
	}
	c.disconnect(t)
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}

	kf2, srv2, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer kf2.Close()
	if err := s.ServeExportConn(srv2, "nope"); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("ServeExportConn on unknown export: %v", err)
	}
}
