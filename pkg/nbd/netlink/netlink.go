// Package netlink attaches NBD sockets to the kernel's nbd driver through its
// generic netlink family "nbd" (include/uapi/linux/nbd-netlink.h), which,
// unlike the old ioctls, takes several sockets per device, server flags and a
// dead-connection timeout, and lets a restarted server RECONFIGURE fresh
// sockets into a device that stayed in use.
//
// Message building (Encode*, Decode*) is separate from sending (Client), so
// the encoding is tested without the kernel driver.
//
// Attributes (all native-endian, as netlink is):
//
//	NBD_CMD_CONNECT     INDEX u32 (omitted: any free device), SIZE_BYTES u64,
//	                    BLOCK_SIZE_BYTES u64, SERVER_FLAGS u64, CLIENT_FLAGS u64,
//	                    TIMEOUT u64 s, DEAD_CONN_TIMEOUT u64 s,
//	                    BACKEND_IDENTIFIER string,
//	                    SOCKETS { SOCK_ITEM { SOCK_FD u32 } ... }
//	                    reply: INDEX u32
//	NBD_CMD_RECONFIGURE INDEX u32 and any of the above (SOCKETS replace dead ones)
//	NBD_CMD_DISCONNECT  INDEX u32
//	NBD_CMD_STATUS      INDEX u32 (omitted: all devices)
//	                    reply: DEVICE_LIST { DEVICE_ITEM { DEVICE_INDEX u32,
//	                    DEVICE_CONNECTED u8 } ... }
package netlink

import (
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/mdlayher/genetlink"
	mnl "github.com/mdlayher/netlink"
)

// Family name, version and commands (enum in nbd-netlink.h).
const (
	FamilyName    = "nbd"
	FamilyVersion = 1

	CmdConnect     = 1
	CmdDisconnect  = 2
	CmdReconfigure = 3
	CmdLinkDead    = 4
	CmdStatus      = 5
)

// Attributes.
const (
	AttrIndex             = 1
	AttrSizeBytes         = 2
	AttrBlockSizeBytes    = 3
	AttrTimeout           = 4
	AttrServerFlags       = 5
	AttrClientFlags       = 6
	AttrSockets           = 7
	AttrDeadConnTimeout   = 8
	AttrDeviceList        = 9
	AttrBackendIdentifier = 10

	AttrDeviceItem      = 1 // in AttrDeviceList
	AttrDeviceIndex     = 1 // in AttrDeviceItem
	AttrDeviceConnected = 2 // in AttrDeviceItem

	AttrSockItem = 1 // in AttrSockets
	AttrSockFD   = 1 // in AttrSockItem
)

// Client flags (NBD_ATTR_CLIENT_FLAGS).
const (
	// ClientFlagDestroyOnDisconnect removes the device when it disconnects.
	ClientFlagDestroyOnDisconnect = 1 << 0
	// ClientFlagDisconnectOnClose disconnects when the last opener closes it.
	ClientFlagDisconnectOnClose = 1 << 1
)

// AnyIndex asks CONNECT for any free device.
const AnyIndex = -1

// ErrNoDriver means the generic netlink family "nbd" does not exist.
var ErrNoDriver = errors.New("nbd: kernel has no nbd driver (modprobe nbd)")

// ErrInvalidConfig is returned for configurations the kernel would refuse.
var ErrInvalidConfig = errors.New("nbd: invalid netlink configuration")

// Config describes a device for CONNECT and RECONFIGURE.
type Config struct {
	// Index is the device number (/dev/nbdIndex), or AnyIndex for CONNECT.
	Index int
	// Sockets are connected stream sockets in the transmission phase. CONNECT
	// needs at least one; RECONFIGURE uses them to replace dead ones. The
	// caller keeps ownership and may close them once the call returns.
	Sockets []*os.File
	// SizeBytes is the device size (required for CONNECT; 0 leaves it alone
	// on RECONFIGURE).
	SizeBytes uint64
	// BlockSize is the logical block size, a power of two from 512 to 64 KiB
	// (0: the kernel default for CONNECT, unchanged for RECONFIGURE).
	BlockSize uint64
	// ServerFlags are the NBD transmission flags (nbd.ExportInfo.Flags).
	// Not sent by RECONFIGURE, which the kernel does not allow to change them.
	ServerFlags uint64
	// ClientFlags is a ClientFlag* mask; sent when nonzero or SetClientFlags.
	ClientFlags    uint64
	SetClientFlags bool
	// Timeout is the per-request timeout (whole seconds, rounded up; 0: not
	// sent).
	Timeout time.Duration
	// DeadConnTimeout is how long the kernel waits for a RECONFIGURE after all
	// sockets died before failing I/O (whole seconds, rounded up; 0: not
	// sent).
	DeadConnTimeout time.Duration
	// BackendIdentifier is shown in /sys/block/nbdX/backend; once set,
	// RECONFIGURE must repeat it.
	BackendIdentifier string
}

// DeviceStatus is one entry of a STATUS reply.
type DeviceStatus struct {
	Index     int
	Connected bool
}

func seconds(d time.Duration) (uint64, error) {
	if d < 0 {
		return 0, fmt.Errorf("%w: negative timeout %v", ErrInvalidConfig, d)
	}
	return uint64((d + time.Second - 1) / time.Second), nil
}

func checkIndex(i int) error {
	if i < 0 || i > math.MaxInt32 {
		return fmt.Errorf("%w: device index %d", ErrInvalidConfig, i)
	}
	return nil
}

// encodeConfig writes the attributes common to CONNECT and RECONFIGURE.
func encodeConfig(ae *mnl.AttributeEncoder, cfg Config, connect bool) error {
	if cfg.BlockSize != 0 && (cfg.BlockSize < 512 || cfg.BlockSize > 64<<10 || cfg.BlockSize&(cfg.BlockSize-1) != 0) {
		return fmt.Errorf("%w: block size %d", ErrInvalidConfig, cfg.BlockSize)
	}
	timeout, err := seconds(cfg.Timeout)
	if err != nil {
		return err
	}
	dead, err := seconds(cfg.DeadConnTimeout)
	if err != nil {
		return err
	}
	fds := make([]uint32, len(cfg.Sockets))
	for i, f := range cfg.Sockets {
		if f == nil {
			return fmt.Errorf("%w: nil socket", ErrInvalidConfig)
		}
		fd := f.Fd()
		if fd > math.MaxInt32 {
			return fmt.Errorf("%w: socket %d is closed", ErrInvalidConfig, i)
		}
		fds[i] = uint32(fd)
	}

	if cfg.SizeBytes != 0 {
		ae.Uint64(AttrSizeBytes, cfg.SizeBytes)
	}
	if cfg.BlockSize != 0 {
		ae.Uint64(AttrBlockSizeBytes, cfg.BlockSize)
	}
	if connect {
		ae.Uint64(AttrServerFlags, cfg.ServerFlags)
	}
	if cfg.ClientFlags != 0 || cfg.SetClientFlags {
		ae.Uint64(AttrClientFlags, cfg.ClientFlags)
	}
	if timeout != 0 {
		ae.Uint64(AttrTimeout, timeout)
	}
	if dead != 0 {
		ae.Uint64(AttrDeadConnTimeout, dead)
	}
	if cfg.BackendIdentifier != "" {
		ae.String(AttrBackendIdentifier, cfg.BackendIdentifier)
	}
	if len(fds) > 0 {
		ae.Nested(AttrSockets, func(nae *mnl.AttributeEncoder) error {
			for _, fd := range fds {
				nae.Nested(AttrSockItem, func(sae *mnl.AttributeEncoder) error {
					sae.Uint32(AttrSockFD, fd)
					return nil
				})
			}
			return nil
		})
	}
	return nil
}

func message(cmd uint8, ae *mnl.AttributeEncoder) (genetlink.Message, error) {
	b, err := ae.Encode()
	if err != nil {
		return genetlink.Message{}, err
	}
	return genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: FamilyVersion},
		Data:   b,
	}, nil
}

// EncodeConnect builds an NBD_CMD_CONNECT message. The socket descriptors
// are read from cfg.Sockets now: keep them open until the message is sent.
func EncodeConnect(cfg Config) (genetlink.Message, error) {
	if len(cfg.Sockets) == 0 {
		return genetlink.Message{}, fmt.Errorf("%w: CONNECT needs at least one socket", ErrInvalidConfig)
	}
	if cfg.SizeBytes == 0 {
		return genetlink.Message{}, fmt.Errorf("%w: CONNECT needs a size", ErrInvalidConfig)
	}
	ae := mnl.NewAttributeEncoder()
	if cfg.Index != AnyIndex {
		if err := checkIndex(cfg.Index); err != nil {
			return genetlink.Message{}, err
		}
		ae.Uint32(AttrIndex, uint32(cfg.Index))
	}
	if err := encodeConfig(ae, cfg, true); err != nil {
		return genetlink.Message{}, err
	}
	return message(CmdConnect, ae)
}

// EncodeReconfigure builds an NBD_CMD_RECONFIGURE message for cfg.Index.
func EncodeReconfigure(cfg Config) (genetlink.Message, error) {
	if err := checkIndex(cfg.Index); err != nil {
		return genetlink.Message{}, err
	}
	ae := mnl.NewAttributeEncoder()
	ae.Uint32(AttrIndex, uint32(cfg.Index))
	if err := encodeConfig(ae, cfg, false); err != nil {
		return genetlink.Message{}, err
	}
	return message(CmdReconfigure, ae)
}

// EncodeDisconnect builds an NBD_CMD_DISCONNECT message.
func EncodeDisconnect(index int) (genetlink.Message, error) {
	if err := checkIndex(index); err != nil {
		return genetlink.Message{}, err
	}
	ae := mnl.NewAttributeEncoder()
	ae.Uint32(AttrIndex, uint32(index))
	return message(CmdDisconnect, ae)
}

// EncodeStatus builds an NBD_CMD_STATUS message for one device, or for all
// with AnyIndex.
func EncodeStatus(index int) (genetlink.Message, error) {
	ae := mnl.NewAttributeEncoder()
	if index != AnyIndex {
		if err := checkIndex(index); err != nil {
			return genetlink.Message{}, err
		}
		ae.Uint32(AttrIndex, uint32(index))
	}
	return message(CmdStatus, ae)
}

// DecodeConnectReply returns the device index from the CONNECT reply.
func DecodeConnectReply(msgs []genetlink.Message) (int, error) {
	for _, m := range msgs {
		ad, err := mnl.NewAttributeDecoder(m.Data)
		if err != nil {
			return 0, fmt.Errorf("nbd: connect reply: %w", err)
		}
		for ad.Next() {
			if ad.Type() == AttrIndex {
				idx := ad.Uint32()
				if err := ad.Err(); err != nil {
					return 0, fmt.Errorf("nbd: connect reply: %w", err)
				}
				return int(idx), nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, fmt.Errorf("nbd: connect reply: %w", err)
		}
	}
	return 0, errors.New("nbd: connect reply has no device index")
}

// DecodeStatus parses a STATUS reply.
func DecodeStatus(msgs []genetlink.Message) ([]DeviceStatus, error) {
	var out []DeviceStatus
	for _, m := range msgs {
		ad, err := mnl.NewAttributeDecoder(m.Data)
		if err != nil {
			return nil, fmt.Errorf("nbd: status reply: %w", err)
		}
		for ad.Next() {
			if ad.Type() != AttrDeviceList {
				continue
			}
			ad.Nested(func(list *mnl.AttributeDecoder) error {
				for list.Next() {
					if list.Type() != AttrDeviceItem {
						continue
					}
					list.Nested(func(item *mnl.AttributeDecoder) error {
						d := DeviceStatus{Index: -1}
						for item.Next() {
							switch item.Type() {
							case AttrDeviceIndex:
								d.Index = int(item.Uint32())
							case AttrDeviceConnected:
								d.Connected = item.Uint8() != 0
							}
						}
						if err := item.Err(); err != nil {
							return err
						}
						if d.Index < 0 {
							return errors.New("device item without index")
						}
						out = append(out, d)
						return nil
					})
				}
				return list.Err()
			})
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("nbd: status reply: %w", err)
		}
	}
	return out, nil
}
