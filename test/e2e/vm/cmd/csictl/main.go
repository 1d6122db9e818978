// Command csictl drives a CSI plugin over its socket the way the
// Kubernetes sidecars and kubelet do, one call per invocation, for the VM
// scenarios (test/e2e/vm).
//
//	csictl [-endpoint ENDPOINT] [-timeout 2m] COMMAND [flags] ARGS
//
// ENDPOINT defaults to $CSI_ENDPOINT, else unix:///csi/csi.sock.
//
//	wait                               Probe until the plugin is ready
//	create NAME [-size SIZE] [-p KEY=VALUE]... [-block] [-fs TYPE]
//	                                   CreateVolume; prints the volume id
//	delete ID                          DeleteVolume
//	stage ID STAGING [-block] [-fs TYPE] [-ro]
//	                                   NodeStageVolume
//	publish ID STAGING TARGET [-block] [-fs TYPE] [-ro]
//	                                   NodePublishVolume
//	unpublish ID TARGET                NodeUnpublishVolume
//	unstage ID STAGING                 NodeUnstageVolume
//	expand ID SIZE [-block] [-fs TYPE] ControllerExpandVolume; prints the
//	                                   capacity and "node-expansion-required"
//	                                   when the node must follow
//	node-expand ID PATH SIZE [-staging STAGING] [-block] [-fs TYPE]
//	                                   NodeExpandVolume; prints the capacity
//	stats ID PATH                      NodeGetVolumeStats: "bytes TOTAL USED
//	                                   AVAILABLE" and for a filesystem
//	                                   "inodes TOTAL USED AVAILABLE"
//	health ID                          NodeGetVolumeHealth: one line per
//	                                   status ("ok" when there is none)
//
// Flags may come before or after the arguments. SIZE is bytes or a number
// with K, M, G (or Ki, Mi, Gi; all powers of 1024). Access mode is
// SINGLE_NODE_WRITER (SINGLE_NODE_READER_ONLY with -ro). A failed call prints
// its gRPC code and message and exits with status 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func main() {
	global := flag.NewFlagSet("csictl", flag.ContinueOnError)
	def := os.Getenv("CSI_ENDPOINT")
	if def == "" {
		def = "unix:///csi/csi.sock"
	}
	endpoint := global.String("endpoint", def, "CSI endpoint of the plugin (default $CSI_ENDPOINT, else unix:///csi/csi.sock)")
	timeout := global.Duration("timeout", 2*time.Minute, "deadline of the call (of the whole wait for 'wait')")
	global.Usage = usage
	if err := global.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if global.NArg() == 0 {
		usage()
		os.Exit(2)
	}
	cmd, args := global.Arg(0), global.Args()[1:]
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := grpc.NewClient(*endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "csictl: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	c := client{
		id:   csi.NewIdentityClient(conn),
		ctrl: csi.NewControllerClient(conn),
		node: csi.NewNodeClient(conn),
	}
	err = c.run(ctx, cmd, args)
	var ue usageError
	switch {
	case err == nil:
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "csictl %s: %v\n", cmd, err)
		os.Exit(2)
	default:
		if st, ok := status.FromError(err); ok {
			fmt.Fprintf(os.Stderr, "csictl %s: %s: %s\n", cmd, st.Code(), st.Message())
		} else {
			fmt.Fprintf(os.Stderr, "csictl %s: %v\n", cmd, err)
		}
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: csictl [-endpoint unix:///csi/csi.sock] [-timeout 2m] wait|create|delete|stage|publish|unpublish|unstage|expand|node-expand|stats|health ... (see the package comment)")
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

type client struct {
	id   csi.IdentityClient
	ctrl csi.ControllerClient
	node csi.NodeClient
}

// capFlags are the volume capability flags shared by several commands.
type capFlags struct {
	block bool
	fs    string
	ro    bool
}

func (f *capFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.block, "block", false, "raw block access (default: mount)")
	fs.StringVar(&f.fs, "fs", "", "filesystem type of mount access (default: the plugin's)")
	fs.BoolVar(&f.ro, "ro", false, "read-only access mode")
}

func (f *capFlags) capability() *csi.VolumeCapability {
	mode := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	if f.ro {
		mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	}
	vc := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	if f.block {
		vc.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		vc.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: f.fs}}
	}
	return vc
}

// params collects repeated -p KEY=VALUE flags.
type params map[string]string

func (p params) String() string { return fmt.Sprint(map[string]string(p)) }

func (p params) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	p[k] = v
	return nil
}

// parse parses flags that may be mixed with n positional arguments.
func parse(fs *flag.FlagSet, args []string, names ...string) ([]string, error) {
	fs.SetOutput(os.Stderr)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usagef("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos, args = append(pos, args[0]), args[1:]
	}
	if len(pos) != len(names) {
		return nil, usagef("want arguments %s, got %q", strings.Join(names, " "), pos)
	}
	return pos, nil
}

func (c client) run(ctx context.Context, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	var cf capFlags
	switch cmd {
	case "wait":
		if _, err := parse(fs, args); err != nil {
			return err
		}
		return c.wait(ctx)

	case "create":
		size := fs.String("size", "", "required capacity (default: the plugin's)")
		p := params{}
		fs.Var(p, "p", "StorageClass parameter KEY=VALUE (repeatable)")
		cf.register(fs)
		a, err := parse(fs, args, "NAME")
		if err != nil {
			return err
		}
		req := &csi.CreateVolumeRequest{Name: a[0], Parameters: p,
			VolumeCapabilities: []*csi.VolumeCapability{cf.capability()}}
		if *size != "" {
			n, err := parseSize(*size)
			if err != nil {
				return err
			}
			req.CapacityRange = &csi.CapacityRange{RequiredBytes: n}
		}
		resp, err := c.ctrl.CreateVolume(ctx, req)
		if err != nil {
			return err
		}
		fmt.Println(resp.GetVolume().GetVolumeId())
		return nil

	case "delete":
		a, err := parse(fs, args, "ID")
		if err != nil {
			return err
		}
		_, err = c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: a[0]})
		return err

	case "stage":
		cf.register(fs)
		a, err := parse(fs, args, "ID", "STAGING")
		if err != nil {
			return err
		}
		_, err = c.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
			VolumeId: a[0], StagingTargetPath: a[1], VolumeCapability: cf.capability()})
		return err

	case "publish":
		cf.register(fs)
		a, err := parse(fs, args, "ID", "STAGING", "TARGET")
		if err != nil {
			return err
		}
		_, err = c.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
			VolumeId: a[0], StagingTargetPath: a[1], TargetPath: a[2],
			VolumeCapability: cf.capability(), Readonly: cf.ro})
		return err

	case "unpublish":
		a, err := parse(fs, args, "ID", "TARGET")
		if err != nil {
			return err
		}
		_, err = c.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: a[0], TargetPath: a[1]})
		return err

	case "unstage":
		a, err := parse(fs, args, "ID", "STAGING")
		if err != nil {
			return err
		}
		_, err = c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: a[0], StagingTargetPath: a[1]})
		return err

	case "expand":
		cf.register(fs)
		a, err := parse(fs, args, "ID", "SIZE")
		if err != nil {
			return err
		}
		n, err := parseSize(a[1])
		if err != nil {
			return err
		}
		resp, err := c.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
			VolumeId: a[0], CapacityRange: &csi.CapacityRange{RequiredBytes: n}, VolumeCapability: cf.capability()})
		if err != nil {
			return err
		}
		fmt.Print(resp.GetCapacityBytes())
		if resp.GetNodeExpansionRequired() {
			fmt.Print(" node-expansion-required")
		}
		fmt.Println()
		return nil

	case "node-expand":
		cf.register(fs)
		staging := fs.String("staging", "", "staging target path")
		a, err := parse(fs, args, "ID", "PATH", "SIZE")
		if err != nil {
			return err
		}
		n, err := parseSize(a[2])
		if err != nil {
			return err
		}
		resp, err := c.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
			VolumeId: a[0], VolumePath: a[1], StagingTargetPath: *staging,
			CapacityRange: &csi.CapacityRange{RequiredBytes: n}, VolumeCapability: cf.capability()})
		if err != nil {
			return err
		}
		fmt.Println(resp.GetCapacityBytes())
		return nil

	case "stats":
		a, err := parse(fs, args, "ID", "PATH")
		if err != nil {
			return err
		}
		resp, err := c.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: a[0], VolumePath: a[1]})
		if err != nil {
			return err
		}
		for _, u := range resp.GetUsage() {
			unit := map[csi.VolumeUsage_Unit]string{csi.VolumeUsage_BYTES: "bytes", csi.VolumeUsage_INODES: "inodes"}[u.GetUnit()]
			fmt.Println(unit, u.GetTotal(), u.GetUsed(), u.GetAvailable())
		}
		return nil

	case "health":
		a, err := parse(fs, args, "ID")
		if err != nil {
			return err
		}
		resp, err := c.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: a[0]})
		if err != nil {
			return err
		}
		st := resp.GetVolumeHealth().GetHealthStatuses()
		if len(st) == 0 {
			fmt.Println("ok")
		}
		for _, h := range st {
			fmt.Println(h.GetStatus(), h.GetReason(), h.GetMessage())
		}
		return nil
	}
	return usagef("unknown command %q", cmd)
}

// wait calls Probe until it reports ready or ctx ends.
func (c client) wait(ctx context.Context) error {
	for {
		resp, err := c.id.Probe(ctx, &csi.ProbeRequest{})
		if err == nil && (resp.GetReady() == nil || resp.GetReady().GetValue()) {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New("plugin not ready")
			}
			return fmt.Errorf("%w (%v)", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// parseSize parses bytes or a number with K, M, G, Ki, Mi or Gi (all powers
// of 1024).
func parseSize(s string) (int64, error) {
	num := strings.TrimSuffix(s, "i")
	mult := int64(1)
	if n := len(num); n > 0 {
		switch num[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			num = num[:n-1]
		} else if num != s {
			return 0, usagef("bad size %q", s)
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, usagef("bad size %q", s)
	}
	return n * mult, nil
}
