package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/nbd"
	"github.com/csi-cache/csi-cache/pkg/nbd/netlink"
)

func TestToStatus(t *testing.T) {
	tests := []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{invalidf("x"), codes.InvalidArgument},
		{fmt.Errorf("wrapped: %w", engine.ErrInvalid), codes.InvalidArgument},
		{errorf(ErrNotFound, "x"), codes.NotFound},
		{fmt.Errorf("%w: pvc", engine.ErrNoVolume), codes.NotFound},
		{errorf(ErrExists, "x"), codes.AlreadyExists},
		{engine.ErrVolumeExists, codes.AlreadyExists},
		{errorf(ErrPrecondition, "x"), codes.FailedPrecondition},
		{fmt.Errorf("attaching: %w", netlink.ErrNoDriver), codes.FailedPrecondition},
		{errorf(ErrOutOfRange, "x"), codes.OutOfRange},
		{errorf(ErrNoSpace, "x"), codes.ResourceExhausted},
		{engine.ErrNoSpace, codes.ResourceExhausted},
		{errorf(ErrBusy, "x"), codes.Aborted},
		{errorf(ErrBadToken, "x"), codes.Aborted},
		{engine.ErrClosed, codes.Unavailable},
		{engine.ErrVolumeClosed, codes.Unavailable},
		{nbd.ErrServerClosed, codes.Unavailable},
		{context.Canceled, codes.Canceled},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{engine.ErrIO, codes.Internal},
		{errors.New("mount: permission denied"), codes.Internal},
		{status.Error(codes.Unauthenticated, "passed through"), codes.Unauthenticated},
	}
	for _, tt := range tests {
		err := toStatus(tt.err)
		if got := status.Code(err); got != tt.want {
			t.Errorf("toStatus(%v) = %v, want %v", tt.err, got, tt.want)
		}
		if tt.err != nil && status.Convert(err).Message() != tt.err.Error() && tt.want != codes.Unauthenticated {
			t.Errorf("toStatus(%v) lost the message: %q", tt.err, status.Convert(err).Message())
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	tests := []struct{ in, network, addr string }{
		{"unix:///csi/csi.sock", "unix", "/csi/csi.sock"},
		{"unix:/csi/csi.sock", "unix", "/csi/csi.sock"},
		{"/csi/csi.sock", "unix", "/csi/csi.sock"},
		{"tcp://127.0.0.1:10000", "tcp", "127.0.0.1:10000"},
		{"csi.sock", "", ""},
		{"unix://", "", ""},
		{"http://x", "", ""},
	}
	for _, tt := range tests {
		n, a, err := parseEndpoint(tt.in)
		if n != tt.network || a != tt.addr || (err == nil) != (tt.network != "") {
			t.Errorf("parseEndpoint(%q) = %q, %q, %v", tt.in, n, a, err)
		}
	}
}
