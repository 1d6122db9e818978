package metrics_test

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"

	"github.com/csi-cache/csi-cache/pkg/nbd"
)

// nbdClient is the smallest NBD client that drives a workload: fixed newstyle
// handshake with NBD_OPT_GO, then one request at a time with simple replies.
type nbdClient struct {
	t      testing.TB
	nc     net.Conn
	br     *bufio.Reader
	size   uint64
	cookie uint64
}

func dialNBD(t testing.TB, network, addr, export string) *nbdClient {
	t.Helper()
	nc, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	c := &nbdClient{t: t, nc: nc, br: bufio.NewReader(nc)}
	var greet [18]byte
	c.readFull(greet[:])
	if binary.BigEndian.Uint64(greet[0:8]) != protocol.NEGOTIATION_MAGIC_OLDSTYLE ||
		binary.BigEndian.Uint64(greet[8:16]) != protocol.NEGOTIATION_MAGIC_OPTION {
		t.Fatalf("bad greeting %x", greet)
	}
	const fixedNewstyle, noZeroes = 1, 2
	c.write(binary.BigEndian.AppendUint32(nil, fixedNewstyle|noZeroes))
	// NBD_OPT_GO: name length, name, no information requests.
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 0)
	opt := binary.BigEndian.AppendUint64(nil, protocol.NEGOTIATION_MAGIC_OPTION)
	opt = binary.BigEndian.AppendUint32(opt, protocol.NEGOTIATION_ID_OPTION_GO)
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(data)))
	c.write(append(opt, data...))
	for {
		var h [20]byte
		c.readFull(h[:])
		typ, n := binary.BigEndian.Uint32(h[12:16]), binary.BigEndian.Uint32(h[16:20])
		payload := make([]byte, n)
		c.readFull(payload)
		switch {
		case typ == protocol.NEGOTIATION_TYPE_REPLY_ACK:
			_ = nc.SetDeadline(time.Time{})
			if c.size == 0 {
				t.Fatal("NBD_OPT_GO: no export size")
			}
			return c
		case typ == protocol.NEGOTIATION_TYPE_REPLY_INFO && n >= 12 &&
			binary.BigEndian.Uint16(payload) == protocol.NEGOTIATION_TYPE_INFO_EXPORT:
			c.size = binary.BigEndian.Uint64(payload[2:10])
		case typ&(1<<31) != 0:
			t.Fatalf("NBD_OPT_GO %q: error reply %#x %q", export, typ, payload)
		}
	}
}

func (c *nbdClient) readFull(b []byte) {
	c.t.Helper()
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("nbd client: %v", err)
	}
}

func (c *nbdClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("nbd client: %v", err)
	}
}

// do sends one request and waits for its reply; it returns the reply's errno
// and, for a successful read, the data.
func (c *nbdClient) do(cmd nbd.Command, off uint64, length uint32, payload []byte) (uint32, []byte) {
	c.t.Helper()
	c.cookie++
	b := binary.BigEndian.AppendUint32(nil, protocol.TRANSMISSION_MAGIC_REQUEST)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(cmd))
	b = binary.BigEndian.AppendUint64(b, c.cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	c.write(append(b, payload...))
	var h [16]byte
	c.readFull(h[:])
	if binary.BigEndian.Uint32(h[0:4]) != protocol.TRANSMISSION_MAGIC_REPLY || binary.BigEndian.Uint64(h[8:16]) != c.cookie {
		c.t.Fatalf("bad reply header %x", h)
	}
	errno := binary.BigEndian.Uint32(h[4:8])
	if cmd != nbd.CmdRead || errno != 0 {
		return errno, nil
	}
	data := make([]byte, length)
	c.readFull(data)
	return 0, data
}

func (c *nbdClient) mustDo(cmd nbd.Command, off uint64, length uint32, payload []byte) []byte {
	c.t.Helper()
	errno, data := c.do(cmd, off, length, payload)
	if errno != 0 {
		c.t.Fatalf("%v %d@%d: errno %d", cmd, length, off, errno)
	}
	return data
}
