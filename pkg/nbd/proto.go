package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Handshake constants. go-nbd has the magics and some option and reply
// numbers; the others are from proto.md.
const (
	magicNBDMAGIC = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicIHAVEOPT = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptReply = protocol.NEGOTIATION_MAGIC_REPLY

	hflagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	hflagNoZeroes      = uint16(1 << 1)

	cflagFixedNewstyle = uint32(1 << 0)
	cflagNoZeroes      = uint32(1 << 1)
	cflagsKnown        = cflagFixedNewstyle | cflagNoZeroes

	optExportName      = uint32(1)
	optAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList            = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS        = uint32(5)
	optInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo              = protocol.NEGOTIATION_ID_OPTION_GO
	optStructuredReply = uint32(8)

	repAck         = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer      = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo        = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repErrUnsup    = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy   = uint32(1<<31 | 2)
	repErrInvalid  = uint32(1<<31 | 3)
	repErrUnknown  = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown = uint32(1<<31 | 7)
	repErrTooBig   = uint32(1<<31 | 9)

	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	// maxNameLength bounds export names (proto.md: at most 4096 bytes).
	maxNameLength = 4096
	// maxOptionLength bounds the option data the server buffers.
	maxOptionLength = 64 << 10
	// maxOptionSkip bounds the option data the server discards to stay in
	// sync; longer options are a hard disconnect.
	maxOptionSkip = 1 << 20
	// maxOptions bounds the options one connection may send.
	maxOptions = 1024
)

// Transmission flags, sent with the export size at the end of the handshake
// (and given to the kernel as NBD_ATTR_SERVER_FLAGS).
const (
	FlagHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	FlagReadOnly        = uint16(1 << 1)
	FlagSendFlush       = uint16(1 << 2)
	FlagSendFUA         = uint16(1 << 3)
	FlagRotational      = uint16(1 << 4)
	FlagSendTrim        = uint16(1 << 5)
	FlagSendWriteZeroes = uint16(1 << 6)
	FlagCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
)

// Command is an NBD request type.
type Command uint16

// Request types.
const (
	CmdRead        = Command(protocol.TRANSMISSION_TYPE_REQUEST_READ)
	CmdWrite       = Command(protocol.TRANSMISSION_TYPE_REQUEST_WRITE)
	CmdDisc        = Command(protocol.TRANSMISSION_TYPE_REQUEST_DISC)
	CmdFlush       = Command(3)
	CmdTrim        = Command(4)
	CmdCache       = Command(5)
	CmdWriteZeroes = Command(6)
	CmdBlockStatus = Command(7)

	// numCommands sizes the per-command counters; unknown commands are
	// counted under CmdUnknown.
	numCommands = 8
	// CmdUnknown is the counter slot for request types this server does not
	// know.
	CmdUnknown = Command(0xffff)
)

var commandNames = [...]string{"read", "write", "disc", "flush", "trim", "cache", "write_zeroes", "block_status"}

// String returns the lower-case command name, for logs and metric labels.
func (c Command) String() string {
	if int(c) < len(commandNames) {
		return commandNames[c]
	}
	if c == CmdUnknown {
		return "unknown"
	}
	return "cmd_" + strconv.Itoa(int(c))
}

// Command flags.
const (
	CmdFlagFUA      = uint16(1 << 0)
	CmdFlagNoHole   = uint16(1 << 1)
	CmdFlagDF       = uint16(1 << 2)
	CmdFlagReqOne   = uint16(1 << 3)
	CmdFlagFastZero = uint16(1 << 4)
)

// Errno is an NBD error value, as sent in the error field of a reply.
// Backends may return an Errno directly.
type Errno uint32

// NBD error values (proto.md, "Error values").
const (
	EPERM     = Errno(protocol.TRANSMISSION_ERROR_EPERM)
	EIO       = Errno(5)
	ENOMEM    = Errno(12)
	EINVAL    = Errno(protocol.TRANSMISSION_ERROR_EINVAL)
	ENOSPC    = Errno(28)
	EOVERFLOW = Errno(75)
	ENOTSUP   = Errno(95)
	ESHUTDOWN = Errno(108)
)

func (e Errno) Error() string {
	switch e {
	case 0:
		return "nbd: success"
	case EPERM:
		return "nbd: EPERM"
	case EIO:
		return "nbd: EIO"
	case ENOMEM:
		return "nbd: ENOMEM"
	case EINVAL:
		return "nbd: EINVAL"
	case ENOSPC:
		return "nbd: ENOSPC"
	case EOVERFLOW:
		return "nbd: EOVERFLOW"
	case ENOTSUP:
		return "nbd: ENOTSUP"
	case ESHUTDOWN:
		return "nbd: ESHUTDOWN"
	}
	return fmt.Sprintf("nbd: errno %d", uint32(e))
}

const (
	requestHeaderSize = 28
	replyHeaderSize   = 16
)

// errBadRequestMagic means the stream is out of sync; the connection is
// closed.
var errBadRequestMagic = errors.New("nbd: bad request magic")

// request is a decoded request header.
type request struct {
	flags  uint16
	cmd    Command
	cookie uint64
	offset uint64
	length uint32
}

// parseRequest decodes a request header. It fails only on a bad magic; the
// fields are validated by checkRequest.
func parseRequest(b *[requestHeaderSize]byte) (request, error) {
	if binary.BigEndian.Uint32(b[0:4]) != protocol.TRANSMISSION_MAGIC_REQUEST {
		return request{}, errBadRequestMagic
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		cmd:    Command(binary.BigEndian.Uint16(b[6:8])),
		cookie: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// appendReplyHeader appends a simple reply header to b.
func appendReplyHeader(b []byte, errno Errno, cookie uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, protocol.TRANSMISSION_MAGIC_REPLY)
	b = binary.BigEndian.AppendUint32(b, uint32(errno))
	return binary.BigEndian.AppendUint64(b, cookie)
}

// limits are the checks checkRequest applies for one export.
type limits struct {
	flags      uint16 // transmission flags advertised
	minBlock   uint64
	maxPayload uint32
}

// checkRequest validates a request against the export's limits and current
// size, in the order documented in the package comment. It returns 0 if the
// request may be executed.
func checkRequest(r request, l limits, size uint64) Errno {
	allowed := uint16(0)
	if l.flags&FlagSendFUA != 0 {
		allowed |= CmdFlagFUA // valid on every command once negotiated
	}
	write := false
	switch r.cmd {
	case CmdRead, CmdFlush:
	case CmdWrite, CmdTrim:
		write = true
	case CmdWriteZeroes:
		write = true
		allowed |= CmdFlagNoHole
	default:
		return EINVAL
	}
	if write && l.flags&FlagReadOnly != 0 {
		return EPERM
	}
	if r.flags&^allowed != 0 {
		return EINVAL
	}
	switch r.cmd {
	case CmdFlush:
		if r.offset != 0 || r.length != 0 {
			return EINVAL
		}
		return 0
	case CmdTrim:
		if l.flags&FlagSendTrim == 0 {
			return EINVAL
		}
	case CmdWriteZeroes:
		if l.flags&FlagSendWriteZeroes == 0 {
			return EINVAL
		}
	case CmdRead, CmdWrite:
		if r.length > l.maxPayload {
			return EINVAL
		}
	}
	if l.minBlock > 1 && (r.offset%l.minBlock != 0 || uint64(r.length)%l.minBlock != 0) {
		return EINVAL
	}
	if r.offset > size || uint64(r.length) > size-r.offset {
		if r.cmd == CmdWrite || r.cmd == CmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	}
	return 0
}
