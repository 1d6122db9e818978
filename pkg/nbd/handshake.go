package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"k8s.io/klog/v2"
)

// Handshake outcomes that end the connection without an error worth logging.
var (
	errAbort = errors.New("nbd: client aborted the handshake")
)

// handshake runs the fixed newstyle handshake. It returns the export bound
// for transmission, or (nil, nil) after NBD_OPT_ABORT or a clean EOF between
// options.
func (c *conn) handshake() (*export, error) {
	if t := c.srv.opts.HandshakeTimeout; t > 0 {
		c.setDeadline(time.Now().Add(t))
	}
	ex, err := c.haggle()
	if err != nil {
		if errors.Is(err, errAbort) {
			return nil, nil
		}
		if c.isClosing() {
			return nil, ErrServerClosed
		}
		klog.V(2).InfoS("nbd: handshake failed", "conn", c.id, "remote", c.nc.RemoteAddr(), "err", err)
		return nil, err
	}
	c.setDeadline(time.Time{})
	return ex, nil
}

func (c *conn) haggle() (*export, error) {
	var b [18]byte
	binary.BigEndian.PutUint64(b[0:8], magicNBDMAGIC)
	binary.BigEndian.PutUint64(b[8:16], magicIHAVEOPT)
	binary.BigEndian.PutUint16(b[16:18], hflagFixedNewstyle|hflagNoZeroes)
	if _, err := c.nc.Write(b[:]); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		return nil, err
	}
	cflags := binary.BigEndian.Uint32(b[:4])
	if cflags&^cflagsKnown != 0 {
		return nil, fmt.Errorf("nbd: unknown client flags %#x", cflags)
	}
	noZeroes := cflags&cflagNoZeroes != 0

	for range maxOptions {
		var oh [16]byte
		if _, err := io.ReadFull(c.br, oh[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, errAbort // client hung up between options
			}
			return nil, err
		}
		if binary.BigEndian.Uint64(oh[0:8]) != magicIHAVEOPT {
			return nil, errors.New("nbd: bad option magic")
		}
		opt := binary.BigEndian.Uint32(oh[8:12])
		length := binary.BigEndian.Uint32(oh[12:16])
		if length > maxOptionLength {
			if opt == optExportName || length > maxOptionSkip {
				return nil, fmt.Errorf("nbd: option %d with %d bytes of data", opt, length)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(length)); err != nil {
				return nil, err
			}
			if err := c.optReply(opt, repErrTooBig, []byte("option data too long")); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, err
		}

		switch opt {
		case optExportName:
			return c.optExportName(string(data), noZeroes)
		case optAbort:
			_ = c.optReply(opt, repAck, nil) // the client may already be gone
			return nil, errAbort
		case optList:
			if err := c.optList(data); err != nil {
				return nil, err
			}
		case optInfo, optGo:
			ex, err := c.optInfoGo(opt, data)
			if err != nil || ex != nil {
				return ex, err
			}
		default: // including STARTTLS and STRUCTURED_REPLY
			if err := c.optReply(opt, repErrUnsup, nil); err != nil {
				return nil, err
			}
		}
	}
	return nil, fmt.Errorf("nbd: more than %d options", maxOptions)
}

// optReply writes one option reply.
func (c *conn) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20+len(data))
	binary.BigEndian.PutUint64(b[0:8], magicOptReply)
	binary.BigEndian.PutUint32(b[8:12], opt)
	binary.BigEndian.PutUint32(b[12:16], typ)
	binary.BigEndian.PutUint32(b[16:20], uint32(len(data)))
	copy(b[20:], data)
	_, err := c.nc.Write(b)
	return err
}

func (c *conn) optExportName(name string, noZeroes bool) (*export, error) {
	if c.isClosing() {
		return nil, ErrServerClosed
	}
	ex, err := c.srv.bind(c, name)
	if err != nil {
		return nil, err // proto.md: the only way to refuse is to disconnect
	}
	b := make([]byte, 10, 10+124)
	binary.BigEndian.PutUint64(b[0:8], uint64(ex.backend.Size()))
	binary.BigEndian.PutUint16(b[8:10], ex.limits.flags)
	if !noZeroes {
		b = b[:10+124]
	}
	if _, err := c.nc.Write(b); err != nil {
		return nil, err
	}
	return ex, nil
}

func (c *conn) optList(data []byte) error {
	if len(data) != 0 {
		return c.optReply(optList, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
	}
	if c.isClosing() {
		return c.optReply(optList, repErrShutdown, nil)
	}
	for _, name := range c.srv.exportNames() {
		d := make([]byte, 4+len(name))
		binary.BigEndian.PutUint32(d, uint32(len(name)))
		copy(d[4:], name)
		if err := c.optReply(optList, repServer, d); err != nil {
			return err
		}
	}
	return c.optReply(optList, repAck, nil)
}

// parseInfoRequest decodes NBD_OPT_INFO/NBD_OPT_GO data:
//
//	name length (32) | name | number of requests (16) | request (16) ...
func parseInfoRequest(data []byte) (name string, reqs []uint16, ok bool) {
	if len(data) < 6 {
		return "", nil, false
	}
	nl := binary.BigEndian.Uint32(data[0:4])
	if uint64(nl) > uint64(len(data)-6) {
		return "", nil, false
	}
	name = string(data[4 : 4+nl])
	rest := data[4+nl:]
	n := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*n {
		return "", nil, false
	}
	reqs = make([]uint16, n)
	for i := range reqs {
		reqs[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return name, reqs, true
}

// optInfoGo answers NBD_OPT_INFO and NBD_OPT_GO. For a successful GO it
// returns the export bound for transmission.
func (c *conn) optInfoGo(opt uint32, data []byte) (*export, error) {
	name, reqs, ok := parseInfoRequest(data)
	if !ok {
		return nil, c.optReply(opt, repErrInvalid, []byte("malformed info request"))
	}
	if c.isClosing() {
		return nil, c.optReply(opt, repErrShutdown, nil)
	}
	var ex *export
	var err error
	if opt == optGo {
		ex, err = c.srv.bind(c, name)
	} else if e, found := c.srv.lookup(name); found {
		ex = e
	} else {
		err = ErrUnknownExport
	}
	if err != nil {
		return nil, c.optReply(opt, repErrUnknown, []byte("unknown export"))
	}

	var b [18]byte
	binary.BigEndian.PutUint16(b[0:2], infoExport)
	binary.BigEndian.PutUint64(b[2:10], uint64(ex.backend.Size()))
	binary.BigEndian.PutUint16(b[10:12], ex.limits.flags)
	if err := c.optReply(opt, repInfo, b[:12]); err != nil {
		return nil, err
	}
	// Block sizes are sent whether asked for or not; see the package comment.
	binary.BigEndian.PutUint16(b[0:2], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:6], ex.caps.MinBlockSize)
	binary.BigEndian.PutUint32(b[6:10], ex.caps.PreferredBlockSize)
	binary.BigEndian.PutUint32(b[10:14], ex.caps.MaxPayload)
	if err := c.optReply(opt, repInfo, b[:14]); err != nil {
		return nil, err
	}
	sent := map[uint16]bool{}
	for _, r := range reqs {
		if sent[r] {
			continue
		}
		sent[r] = true
		var s string
		switch r {
		case infoName:
			s = ex.name
		case infoDescription:
			s = ex.caps.Description
		default:
			continue
		}
		d := make([]byte, 2+len(s))
		binary.BigEndian.PutUint16(d, r)
		copy(d[2:], s)
		if err := c.optReply(opt, repInfo, d); err != nil {
			return nil, err
		}
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optGo {
		return ex, nil
	}
	return nil, nil
}
