package netlink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/genetlink/genltest"
	mnl "github.com/mdlayher/netlink"
)

// attr encodes one netlink attribute by hand: len(16) type(16) value, padded
// to 4 bytes, native endian (little endian on the machines this runs on).
func attr(typ uint16, value []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(value)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, value...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }

const nested = 0x8000 // NLA_F_NESTED

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// sockets returns n open files whose descriptors go into SOCK_FD.
func sockets(t *testing.T, n int) []*os.File {
	var fs []*os.File
	for range n {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		a, b := os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
		t.Cleanup(func() { a.Close(); b.Close() })
		fs = append(fs, a)
	}
	return fs
}

func TestEncodeConnect(t *testing.T) {
	socks := sockets(t, 2)
	m, err := EncodeConnect(Config{
		Index:             3,
		Sockets:           socks,
		SizeBytes:         1 << 30,
		BlockSize:         4096,
		ServerFlags:       0x14d,
		ClientFlags:       ClientFlagDisconnectOnClose,
		Timeout:           1500 * time.Millisecond, // rounds up to 2 s
		DeadConnTimeout:   time.Minute,
		BackendIdentifier: "pvc-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Command != CmdConnect || m.Header.Version != 1 {
		t.Fatalf("header %+v", m.Header)
	}
	want := cat(
		attr(AttrIndex, u32(3)),
		attr(AttrSizeBytes, u64(1<<30)),
		attr(AttrBlockSizeBytes, u64(4096)),
		attr(AttrServerFlags, u64(0x14d)),
		attr(AttrClientFlags, u64(2)),
		attr(AttrTimeout, u64(2)),
		attr(AttrDeadConnTimeout, u64(60)),
		attr(AttrBackendIdentifier, []byte("pvc-1\x00")),
		attr(AttrSockets|nested, cat(
			attr(AttrSockItem|nested, attr(AttrSockFD, u32(uint32(socks[0].Fd())))),
			attr(AttrSockItem|nested, attr(AttrSockFD, u32(uint32(socks[1].Fd())))),
		)),
	)
	if !bytes.Equal(m.Data, want) {
		t.Fatalf("CONNECT attributes\n got %x\nwant %x", m.Data, want)
	}
}

func TestEncodeConnectAnyIndexMinimal(t *testing.T) {
	socks := sockets(t, 1)
	m, err := EncodeConnect(Config{Index: AnyIndex, Sockets: socks, SizeBytes: 1 << 20, ServerFlags: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := cat(
		attr(AttrSizeBytes, u64(1<<20)),
		attr(AttrServerFlags, u64(1)),
		attr(AttrSockets|nested, attr(AttrSockItem|nested, attr(AttrSockFD, u32(uint32(socks[0].Fd()))))),
	)
	if !bytes.Equal(m.Data, want) {
		t.Fatalf("CONNECT attributes\n got %x\nwant %x", m.Data, want)
	}
}

func TestEncodeInvalid(t *testing.T) {
	socks := sockets(t, 1)
	closed := sockets(t, 1)
	closed[0].Close()
	ok := Config{Index: 0, Sockets: socks, SizeBytes: 1 << 20}
	for name, mod := range map[string]func(*Config){
		"no sockets":       func(c *Config) { c.Sockets = nil },
		"nil socket":       func(c *Config) { c.Sockets = []*os.File{nil} },
		"closed socket":    func(c *Config) { c.Sockets = closed },
		"no size":          func(c *Config) { c.SizeBytes = 0 },
		"small block":      func(c *Config) { c.BlockSize = 256 },
		"odd block":        func(c *Config) { c.BlockSize = 3000 },
		"huge block":       func(c *Config) { c.BlockSize = 1 << 20 },
		"negative timeout": func(c *Config) { c.Timeout = -time.Second },
		"negative dead":    func(c *Config) { c.DeadConnTimeout = -time.Second },
		"negative index":   func(c *Config) { c.Index = -2 },
	} {
		c := ok
		mod(&c)
		if _, err := EncodeConnect(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := EncodeReconfigure(Config{Index: AnyIndex}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("RECONFIGURE without index: %v", err)
	}
	if _, err := EncodeDisconnect(-1); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("DISCONNECT -1: %v", err)
	}
}

func TestEncodeReconfigure(t *testing.T) {
	socks := sockets(t, 1)
	m, err := EncodeReconfigure(Config{
		Index: 7, Sockets: socks, ServerFlags: 0xffff, SetClientFlags: true,
		DeadConnTimeout: 30 * time.Second, BackendIdentifier: "pvc-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := cat(
		attr(AttrIndex, u32(7)),
		attr(AttrClientFlags, u64(0)), // SetClientFlags clears them
		attr(AttrDeadConnTimeout, u64(30)),
		attr(AttrBackendIdentifier, []byte("pvc-1\x00")),
		attr(AttrSockets|nested, attr(AttrSockItem|nested, attr(AttrSockFD, u32(uint32(socks[0].Fd()))))),
	)
	if m.Header.Command != CmdReconfigure || !bytes.Equal(m.Data, want) {
		t.Fatalf("RECONFIGURE %d\n got %x\nwant %x", m.Header.Command, m.Data, want)
	}
}

func TestEncodeDisconnectStatus(t *testing.T) {
	m, err := EncodeDisconnect(5)
	if err != nil || m.Header.Command != CmdDisconnect || !bytes.Equal(m.Data, attr(AttrIndex, u32(5))) {
		t.Fatalf("DISCONNECT %+v %v", m, err)
	}
	m, err = EncodeStatus(AnyIndex)
	if err != nil || m.Header.Command != CmdStatus || len(m.Data) != 0 {
		t.Fatalf("STATUS all %+v %v", m, err)
	}
	m, err = EncodeStatus(2)
	if err != nil || !bytes.Equal(m.Data, attr(AttrIndex, u32(2))) {
		t.Fatalf("STATUS 2 %+v %v", m, err)
	}
}

// statusReply builds what nbd_genl_status sends: the kernel nests with
// nla_nest_start_noflag, so there is no NLA_F_NESTED bit; with flag=true the
// bit is set, which must parse the same.
func statusReply(flag bool, devs ...DeviceStatus) []byte {
	n := uint16(0)
	if flag {
		n = nested
	}
	var items []byte
	for _, d := range devs {
		c := byte(0)
		if d.Connected {
			c = 1
		}
		items = append(items, attr(AttrDeviceItem|n, cat(attr(AttrDeviceIndex, u32(uint32(d.Index))), attr(AttrDeviceConnected, []byte{c})))...)
	}
	return attr(AttrDeviceList|n, items)
}

func TestDecodeStatus(t *testing.T) {
	devs := []DeviceStatus{{0, true}, {1, false}, {15, true}}
	for _, flag := range []bool{false, true} {
		got, err := DecodeStatus([]genetlink.Message{{Data: statusReply(flag, devs...)}})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got[0] != devs[0] || got[1] != devs[1] || got[2] != devs[2] {
			t.Fatalf("DecodeStatus = %+v", got)
		}
	}
	if got, err := DecodeStatus([]genetlink.Message{{Data: statusReply(false)}}); err != nil || len(got) != 0 {
		t.Fatalf("empty list: %v %v", got, err)
	}
	bad := attr(AttrDeviceList, attr(AttrDeviceItem, attr(AttrDeviceConnected, []byte{1})))
	if _, err := DecodeStatus([]genetlink.Message{{Data: bad}}); err == nil {
		t.Fatal("item without index accepted")
	}
	if _, err := DecodeStatus([]genetlink.Message{{Data: []byte{1, 2, 3}}}); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestDecodeConnectReply(t *testing.T) {
	i, err := DecodeConnectReply([]genetlink.Message{{Data: attr(AttrIndex, u32(9))}})
	if err != nil || i != 9 {
		t.Fatalf("%d %v", i, err)
	}
	if _, err := DecodeConnectReply([]genetlink.Message{{Data: nil}}); err == nil {
		t.Fatal("reply without index accepted")
	}
}

var testFamily = genetlink.Family{ID: 0x1d, Version: 1, Name: FamilyName}

// fakeKernel answers like the nbd driver for a device table.
func fakeKernel(t *testing.T, devices map[int]bool) genltest.Func {
	return genltest.ServeFamily(testFamily, func(greq genetlink.Message, nreq mnl.Message) ([]genetlink.Message, error) {
		if len(nreq.Data) == 0 {
			return nil, io.EOF // a receive with no request pending
		}
		ad, err := mnl.NewAttributeDecoder(greq.Data)
		if err != nil {
			t.Fatal(err)
		}
		index := -1
		var fds []uint32
		for ad.Next() {
			switch ad.Type() {
			case AttrIndex:
				index = int(ad.Uint32())
			case AttrSockets:
				ad.Nested(func(s *mnl.AttributeDecoder) error {
					for s.Next() {
						s.Nested(func(i *mnl.AttributeDecoder) error {
							for i.Next() {
								fds = append(fds, i.Uint32())
							}
							return nil
						})
					}
					return nil
				})
			}
		}
		wantAck := greq.Header.Command == CmdDisconnect || greq.Header.Command == CmdReconfigure
		if got := nreq.Header.Flags&mnl.Acknowledge != 0; got != wantAck {
			t.Errorf("command %d: ACK flag %v", greq.Header.Command, got)
		}
		switch greq.Header.Command {
		case CmdConnect:
			if len(fds) == 0 {
				return nil, genltest.Error(int(syscall.EINVAL))
			}
			if index == -1 {
				for index = 0; devices[index]; index++ {
				}
			} else if devices[index] {
				return nil, genltest.Error(int(syscall.EBUSY))
			}
			devices[index] = true
			return []genetlink.Message{{Header: greq.Header, Data: attr(AttrIndex, u32(uint32(index)))}}, nil
		case CmdDisconnect, CmdReconfigure:
			if _, ok := devices[index]; !ok {
				return nil, genltest.Error(int(syscall.EINVAL))
			}
			if greq.Header.Command == CmdDisconnect {
				devices[index] = false
			}
			return nil, io.EOF // the ACK: no reply messages
		case CmdStatus:
			var ds []DeviceStatus
			for i := 0; i < 16; i++ {
				if c, ok := devices[i]; ok && (index == -1 || index == i) {
					ds = append(ds, DeviceStatus{Index: i, Connected: c})
				}
			}
			return []genetlink.Message{{Header: greq.Header, Data: statusReply(false, ds...)}}, nil
		}
		return nil, genltest.Error(int(syscall.EOPNOTSUPP))
	})
}

func TestClientAgainstFakeKernel(t *testing.T) {
	devices := map[int]bool{0: true, 1: false}
	c, err := NewClient(genltest.Dial(fakeKernel(t, devices)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	socks := sockets(t, 2)
	idx, err := c.Connect(Config{Index: AnyIndex, Sockets: socks, SizeBytes: 1 << 20, BlockSize: 512, DeadConnTimeout: time.Minute})
	if err != nil || idx != 1 {
		t.Fatalf("Connect = %d, %v", idx, err)
	}
	if _, err := c.Connect(Config{Index: 1, Sockets: socks, SizeBytes: 1 << 20}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("Connect to a busy device: %v", err)
	}
	if ok, err := c.Connected(1); err != nil || !ok {
		t.Fatalf("Connected(1) = %v, %v", ok, err)
	}
	if err := c.Reconfigure(Config{Index: 1, Sockets: socks[:1]}); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(1); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Connected(1); err != nil || ok {
		t.Fatalf("Connected(1) after Disconnect = %v, %v", ok, err)
	}
	if ok, err := c.Connected(9); err != nil || ok {
		t.Fatalf("Connected(9) = %v, %v", ok, err)
	}
	all, err := c.Status(AnyIndex)
	if err != nil || len(all) != 2 {
		t.Fatalf("Status(all) = %v, %v", all, err)
	}
	if err := c.Disconnect(12); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Disconnect of a missing device: %v", err)
	}
}

func TestNoDriver(t *testing.T) {
	conn := genltest.Dial(func(genetlink.Message, mnl.Message) ([]genetlink.Message, error) {
		return nil, genltest.Error(int(syscall.ENOENT)) // the controller does not know "nbd"
	})
	if _, err := NewClient(conn); !errors.Is(err, ErrNoDriver) {
		t.Fatalf("NewClient without family: %v", err)
	}
	if ErrNoDriver.Error() != "nbd: kernel has no nbd driver (modprobe nbd)" {
		t.Fatal(ErrNoDriver)
	}
}

// TestDialKernel talks to the real kernel: it either has the nbd family
// (then STATUS must work) or Dial must say ErrNoDriver.
func TestDialKernel(t *testing.T) {
	c, err := Dial()
	if errors.Is(err, ErrNoDriver) {
		t.Logf("no nbd driver on this kernel: %v", err)
		return
	}
	if err != nil {
		t.Skipf("generic netlink unavailable: %v", err)
	}
	defer c.Close()
	if _, err := c.Status(AnyIndex); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
}

func FuzzDecodeStatus(f *testing.F) {
	f.Add(statusReply(false, DeviceStatus{0, true}, DeviceStatus{3, false}))
	f.Add(statusReply(true, DeviceStatus{1, true}))
	f.Add(attr(AttrIndex, u32(9)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs := []genetlink.Message{{Data: b}}
		if ds, err := DecodeStatus(msgs); err == nil {
			for _, d := range ds {
				if d.Index < 0 {
					t.Fatalf("negative index %+v", d)
				}
			}
		}
		_, _ = DecodeConnectReply(msgs)
	})
}
