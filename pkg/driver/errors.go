package driver

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/nbd"
	"github.com/csi-cache/csi-cache/pkg/nbd/netlink"
)

// Errors of the driver. Handlers return them wrapped with %w and a message for
// the caller; toStatus turns them into gRPC codes.
var (
	// ErrInvalid: a request field is missing or malformed.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: the volume (or the path it should be at) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: the volume exists (or is staged or published) with
	// incompatible attributes.
	ErrExists = errors.New("already exists")
	// ErrPrecondition: the volume is not in the state the call needs (not
	// staged, still staged, published elsewhere) or the node cannot do it
	// (no nbd driver).
	ErrPrecondition = errors.New("failed precondition")
	// ErrOutOfRange: the capacity range cannot be satisfied.
	ErrOutOfRange = errors.New("out of range")
	// ErrNoSpace: not enough free space or volume slots on this node.
	ErrNoSpace = errors.New("resource exhausted")
	// ErrBusy: another operation on the same volume is in progress.
	ErrBusy = errors.New("operation pending for volume")
	// ErrBadToken: a ListVolumes starting token this driver did not issue.
	ErrBadToken = errors.New("invalid starting token")
)

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func errorf(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...))
}

// toStatus maps an error to a gRPC status. It is the only place where the
// driver chooses gRPC codes; the logging interceptor applies it to every
// handler's error.
//
//	driver ErrInvalid, engine.ErrInvalid                → InvalidArgument
//	driver ErrNotFound, engine.ErrNoVolume              → NotFound
//	driver ErrExists, engine.ErrVolumeExists            → AlreadyExists
//	driver ErrPrecondition, netlink.ErrNoDriver         → FailedPrecondition
//	driver ErrOutOfRange                                → OutOfRange
//	driver ErrNoSpace, engine.ErrNoSpace                → ResourceExhausted
//	driver ErrBusy, ErrBadToken                         → Aborted
//	engine.ErrClosed, ErrVolumeClosed, nbd.ErrServerClosed → Unavailable
//	context.Canceled / DeadlineExceeded                 → Canceled / DeadlineExceeded
//	engine.ErrIO, corruption, anything else             → Internal
//
// An error that already carries a status (a grpc error from a nested call) is
// passed through.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), err.Error())
}

func codeOf(err error) codes.Code {
	switch {
	case errors.Is(err, ErrInvalid), errors.Is(err, engine.ErrInvalid):
		return codes.InvalidArgument
	case errors.Is(err, ErrNotFound), errors.Is(err, engine.ErrNoVolume):
		return codes.NotFound
	case errors.Is(err, ErrExists), errors.Is(err, engine.ErrVolumeExists):
		return codes.AlreadyExists
	case errors.Is(err, ErrPrecondition), errors.Is(err, netlink.ErrNoDriver):
		return codes.FailedPrecondition
	case errors.Is(err, ErrOutOfRange):
		return codes.OutOfRange
	case errors.Is(err, ErrNoSpace), errors.Is(err, engine.ErrNoSpace):
		return codes.ResourceExhausted
	case errors.Is(err, ErrBusy), errors.Is(err, ErrBadToken):
		return codes.Aborted
	case errors.Is(err, engine.ErrClosed), errors.Is(err, engine.ErrVolumeClosed), errors.Is(err, nbd.ErrServerClosed):
		return codes.Unavailable
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	return codes.Internal
}
