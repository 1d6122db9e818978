package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// BenchmarkTransmission measures the transmission path alone: a
// MemoryBackend served over a unix socket pair to a lean pipelined client in
// the same process (no handshake, no allocation on the client side), so
// allocs/op are the server's. The client's own cost is included in ns/op;
// compare runs of this benchmark with each other, and the server with its
// peers with bench/nbd-compare.sh.
//
//	go test -run '^$' -bench Transmission -benchmem -cpuprofile cpu.prof ./pkg/nbd
func BenchmarkTransmission(b *testing.B) {
	for _, bc := range []struct {
		cmd  Command
		size uint32
		qd   int
	}{
		{CmdRead, 4 << 10, 1},
		{CmdRead, 4 << 10, 32},
		{CmdWrite, 4 << 10, 1},
		{CmdWrite, 4 << 10, 32},
		{CmdRead, 1 << 20, 8},
		{CmdWrite, 1 << 20, 8},
	} {
		b.Run(fmt.Sprintf("%s/%dk/qd%d", bc.cmd, bc.size>>10, bc.qd), func(b *testing.B) {
			benchTransmission(b, bc.cmd, bc.size, bc.qd)
		})
	}
}

func benchTransmission(b *testing.B, cmd Command, size uint32, qd int) {
	const exportSize = 64 << 20
	s := NewServer(Options{})
	if err := s.AddExport("bench", NewMemoryBackend(exportSize), false); err != nil {
		b.Fatal(err)
	}
	kf, sc, err := SocketPair()
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.ServeExportConn(sc, "bench") }()
	cc, err := net.FileConn(kf)
	kf.Close()
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()

	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	window := make(chan struct{}, qd) // a token per request in flight
	sent := make(chan error, 1)
	go func() { sent <- benchSend(cc, window, cmd, size, exportSize, b.N) }()
	br := bufio.NewReaderSize(cc, 256<<10)
	var hdr [replyHeaderSize]byte
	data := make([]byte, size)
	for range b.N {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			b.Fatal(err)
		}
		if binary.BigEndian.Uint32(hdr[0:4]) != protocol.TRANSMISSION_MAGIC_REPLY || binary.BigEndian.Uint32(hdr[4:8]) != 0 {
			b.Fatalf("bad reply %x", hdr)
		}
		if cmd == CmdRead {
			if _, err := io.ReadFull(br, data); err != nil {
				b.Fatal(err)
			}
		}
		<-window
	}
	b.StopTimer()
	if err := <-sent; err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		b.Fatal(err)
	}
	if err := <-served; err != nil {
		b.Fatal(err)
	}
}

// benchSend sends n requests at pseudo-random aligned offsets, keeping at
// most cap(window) in flight, and then NBD_CMD_DISC.
func benchSend(w io.Writer, window chan struct{}, cmd Command, size uint32, exportSize uint64, n int) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	var hdr [requestHeaderSize]byte
	var payload []byte
	if cmd == CmdWrite {
		payload = make([]byte, size)
	}
	blocks := exportSize / uint64(size)
	x := uint64(1)
	put := func(cmd Command, cookie, off uint64, length uint32) {
		binary.BigEndian.PutUint32(hdr[0:4], protocol.TRANSMISSION_MAGIC_REQUEST)
		binary.BigEndian.PutUint16(hdr[4:6], 0)
		binary.BigEndian.PutUint16(hdr[6:8], uint16(cmd))
		binary.BigEndian.PutUint64(hdr[8:16], cookie)
		binary.BigEndian.PutUint64(hdr[16:24], off)
		binary.BigEndian.PutUint32(hdr[24:28], length)
	}
	for i := range n {
		select {
		case window <- struct{}{}:
		default:
			// Full window: send what is buffered, then wait.
			if err := bw.Flush(); err != nil {
				return err
			}
			window <- struct{}{}
		}
		x = x*6364136223846793005 + 1442695040888963407
		put(cmd, uint64(i), (x>>33)%blocks*uint64(size), size)
		if _, err := bw.Write(hdr[:]); err != nil {
			return err
		}
		if _, err := bw.Write(payload); err != nil {
			return err
		}
	}
	put(CmdDisc, 0, 0, 0)
	if _, err := bw.Write(hdr[:]); err != nil {
		return err
	}
	return bw.Flush()
}
