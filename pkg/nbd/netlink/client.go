package netlink

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/mdlayher/genetlink"
	mnl "github.com/mdlayher/netlink"
)

// replyTimeout bounds the wait for a kernel reply, in case one is lost.
const replyTimeout = 30 * time.Second

// Client sends NBD commands to the kernel. It is safe for concurrent use
// (genetlink.Conn serializes request/reply pairs).
type Client struct {
	c      *genetlink.Conn
	family genetlink.Family
}

// Dial opens a generic netlink socket and resolves the "nbd" family. It
// returns ErrNoDriver if the nbd module is not loaded.
func Dial() (*Client, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("nbd: generic netlink: %w", err)
	}
	cl, err := NewClient(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

// NewClient resolves the "nbd" family on c and takes ownership of c (tests
// pass a genltest connection).
func NewClient(c *genetlink.Conn) (*Client, error) {
	f, err := c.GetFamily(FamilyName)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoDriver
	}
	if err != nil {
		return nil, fmt.Errorf("nbd: resolving netlink family %q: %w", FamilyName, err)
	}
	return &Client{c: c, family: f}, nil
}

// Close closes the netlink socket.
func (c *Client) Close() error { return c.c.Close() }

// execute sends m. Commands with a reply (CONNECT, STATUS) are sent without
// NLM_F_ACK: the kernel then answers with either the reply or an error,
// never both, so no stray ACK is left on the socket. The others ask for the
// ACK to learn the outcome.
func (c *Client) execute(m genetlink.Message, withReply bool) ([]genetlink.Message, error) {
	flags := mnl.Request
	if !withReply {
		flags |= mnl.Acknowledge
	}
	// Best effort: test sockets do not support deadlines.
	_ = c.c.SetReadDeadline(time.Now().Add(replyTimeout))
	msgs, err := c.c.Execute(m, c.family.ID, flags)
	if err != nil {
		return nil, fmt.Errorf("nbd: netlink command %d: %w", m.Header.Command, err)
	}
	return msgs, nil
}

// Connect attaches cfg.Sockets to a device and returns its index.
func (c *Client) Connect(cfg Config) (int, error) {
	m, err := EncodeConnect(cfg)
	if err != nil {
		return 0, err
	}
	msgs, err := c.execute(m, true)
	runtime.KeepAlive(cfg.Sockets) // the descriptors were in flight until now
	if err != nil {
		return 0, err
	}
	return DecodeConnectReply(msgs)
}

// Reconfigure updates a connected device; new sockets replace dead ones.
func (c *Client) Reconfigure(cfg Config) error {
	m, err := EncodeReconfigure(cfg)
	if err != nil {
		return err
	}
	_, err = c.execute(m, false)
	runtime.KeepAlive(cfg.Sockets)
	return err
}

// Disconnect disconnects a device (in-flight I/O fails).
func (c *Client) Disconnect(index int) error {
	m, err := EncodeDisconnect(index)
	if err != nil {
		return err
	}
	_, err = c.execute(m, false)
	return err
}

// Status returns the status of one device, or of all devices for AnyIndex.
// A device that does not exist is absent from the result.
func (c *Client) Status(index int) ([]DeviceStatus, error) {
	m, err := EncodeStatus(index)
	if err != nil {
		return nil, err
	}
	msgs, err := c.execute(m, true)
	if err != nil {
		return nil, err
	}
	return DecodeStatus(msgs)
}

// Connected reports whether device index exists and is connected.
func (c *Client) Connected(index int) (bool, error) {
	st, err := c.Status(index)
	if err != nil {
		return false, err
	}
	for _, d := range st {
		if d.Index == index {
			return d.Connected, nil
		}
	}
	return false, nil
}

// Connect is Dial + Client.Connect + Close.
func Connect(cfg Config) (int, error) {
	c, err := Dial()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.Connect(cfg)
}

// Reconfigure is Dial + Client.Reconfigure + Close.
func Reconfigure(cfg Config) error {
	c, err := Dial()
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Reconfigure(cfg)
}

// Disconnect is Dial + Client.Disconnect + Close.
func Disconnect(index int) error {
	c, err := Dial()
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Disconnect(index)
}

// Status is Dial + Client.Status + Close.
func Status(index int) ([]DeviceStatus, error) {
	c, err := Dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Status(index)
}
