// Command e2e-nbd is the VM harness's tool for kernel NBD scenarios: it
// serves a memory or file backend with pkg/nbd, attaches it to a kernel nbd
// device with Server.Attach (or Reattach), and takes commands over a unix
// control socket.
//
//	e2e-nbd serve -ctl SOCK [-mem | -file PATH] -size SIZE [-export NAME]
//	              [-connections N] [-index N | -reattach N]
//	              [-timeout D] [-dead-conn-timeout D]
//	    attach and serve until "detach" or SIGTERM; the control socket
//	    appears once the device is attached
//	e2e-nbd ctl -ctl SOCK device|status|resize SIZE|stacks|detach
//	e2e-nbd connected INDEX
//	    print whether /dev/nbdINDEX is connected
//
// SIZE takes the suffixes K, M, G (powers of 1024). Killing a serve process
// with SIGKILL is how scenarios simulate a plugin crash.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-cache/csi-cache/pkg/nbd"
)

func main() {
	klog.InitFlags(nil)
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "ctl":
		err = ctl(os.Args[2:])
	case "connected":
		err = connected(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e-nbd %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: e2e-nbd serve|ctl|connected ... (see the package comment)")
	os.Exit(2)
}

// parseSize parses "4096", "64K", "256M", "1G".
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// daemon is a serve process: one export, one attachment.
type daemon struct {
	srv  *nbd.Server
	mem  *nbd.MemoryBackend // nil for a file backend
	att  *nbd.Attachment
	done chan struct{} // closed by "detach"
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	ctlPath := fs.String("ctl", "", "control socket to create once attached (required)")
	mem := fs.Bool("mem", false, "serve a zero-filled memory backend")
	file := fs.String("file", "", "serve this file (created or grown to -size)")
	sizeStr := fs.String("size", "", "backend size (required with -mem; grows -file)")
	export := fs.String("export", "e2e", "export name (the device's backend identifier)")
	conns := fs.Int("connections", 0, "sockets per device (0: the default)")
	index := fs.Int("index", -1, "attach to /dev/nbdINDEX (-1: any free device)")
	reattach := fs.Int("reattach", -1, "reattach to the connected /dev/nbdN instead of attaching")
	timeout := fs.Duration("timeout", 0, "kernel request timeout (0: the default)")
	dead := fs.Duration("dead-conn-timeout", 0, "kernel dead-connection timeout (0: the default)")
	_ = fs.Parse(args)
	if *ctlPath == "" || *mem == (*file != "") {
		return errors.New("need -ctl and exactly one of -mem and -file")
	}
	var size int64
	if *sizeStr != "" {
		var err error
		if size, err = parseSize(*sizeStr); err != nil {
			return err
		}
	}

	d := &daemon{srv: nbd.NewServer(nbd.Options{}), done: make(chan struct{})}
	var backend nbd.Backend
	if *mem {
		if size == 0 {
			return errors.New("-mem needs -size")
		}
		d.mem = nbd.NewMemoryBackend(size)
		backend = d.mem
	} else {
		if err := growFile(*file, size); err != nil {
			return err
		}
		fb, err := nbd.OpenFileBackend(*file, false)
		if err != nil {
			return err
		}
		defer fb.Close()
		backend = fb
	}
	if err := d.srv.AddExport(*export, backend, false); err != nil {
		return err
	}
	opts := nbd.AttachOptions{Connections: *conns, Timeout: *timeout, DeadConnTimeout: *dead}
	var err error
	start := time.Now()
	if *reattach >= 0 {
		d.att, err = d.srv.Reattach(*export, *reattach, opts)
	} else {
		opts.Index, opts.UseIndex = *index, *index >= 0
		d.att, err = d.srv.Attach(*export, opts)
	}
	if err != nil {
		return err
	}
	verb := map[bool]string{false: "attached", true: "reattached"}[*reattach >= 0]
	fmt.Printf("e2e-nbd: %s %s (%d connections) in %v\n", verb, d.att.Device(), d.att.Connections(),
		time.Since(start).Round(time.Millisecond))

	l, err := net.Listen("unix", *ctlPath)
	if err != nil {
		_ = d.att.Detach()
		return err
	}
	defer l.Close()
	go d.accept(l)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-d.done:
	case s := <-sig:
		fmt.Printf("e2e-nbd: %v: detaching\n", s)
		if err := d.att.Detach(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.srv.Shutdown(ctx); err != nil {
		return err
	}
	st := d.srv.Stats()
	fmt.Printf("e2e-nbd: done; %d connections served, %d error replies\n", st.TotalConnections, errorReplies(st))
	return nil
}

func errorReplies(st nbd.Stats) uint64 {
	var n uint64
	for _, c := range st.Commands {
		n += c.Errors
	}
	return n
}

// growFile creates path or extends it to size bytes if it is a regular
// file.
func growFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Mode().IsRegular() && st.Size() < size {
		return f.Truncate(size)
	}
	return nil // a block device keeps its size
}

func (d *daemon) accept(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go d.handle(c)
	}
}

// handle answers one command per line with "ok ..." or "error ...".
func (d *daemon) handle(c net.Conn) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		reply, err := d.command(f)
		if err != nil {
			fmt.Fprintf(c, "error %v\n", err)
			continue
		}
		fmt.Fprintf(c, "ok %s\n", reply)
		if len(f) == 1 && f[0] == "detach" {
			// Exit only once the client has its reply.
			select {
			case <-d.done:
			default:
				close(d.done)
			}
		}
	}
}

func (d *daemon) command(f []string) (string, error) {
	if len(f) == 0 {
		return "", errors.New("empty command")
	}
	switch {
	case f[0] == "device" && len(f) == 1:
		return d.att.Device(), nil
	case f[0] == "status" && len(f) == 1:
		st := d.srv.Stats()
		return fmt.Sprintf("device=%s index=%d connections=%d active=%d total=%d errors=%d",
			d.att.Device(), d.att.Index(), d.att.Connections(), st.ActiveConnections, st.TotalConnections,
			errorReplies(st)), nil
	case f[0] == "resize" && len(f) == 2:
		size, err := parseSize(f[1])
		if err != nil {
			return "", err
		}
		if d.mem == nil {
			return "", errors.New("resize needs a -mem backend")
		}
		if size > d.mem.Size() {
			d.mem.Resize(size) // grow the export first, then the device
		}
		if err := d.att.Resize(size); err != nil {
			return "", err
		}
		return strconv.FormatInt(size, 10), nil
	case f[0] == "stacks" && len(f) == 1:
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		// One reply line: the client turns the separators back into newlines.
		return strings.ReplaceAll(string(buf[:n]), "\n", "\x1f"), nil
	case f[0] == "detach" && len(f) == 1:
		if err := d.att.Detach(); err != nil {
			return "", err
		}
		return "detached " + d.att.Device(), nil
	}
	return "", fmt.Errorf("unknown command %q", strings.Join(f, " "))
}

func ctl(args []string) error {
	fs := flag.NewFlagSet("ctl", flag.ExitOnError)
	ctlPath := fs.String("ctl", "", "control socket")
	_ = fs.Parse(args)
	if *ctlPath == "" || fs.NArg() == 0 {
		return errors.New("need -ctl and a command")
	}
	c, err := net.Dial("unix", *ctlPath)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := fmt.Fprintln(c, strings.Join(fs.Args(), " ")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	line = strings.TrimSpace(line)
	if line == "" {
		return errors.New("no reply (did the server exit?)")
	}
	if rest, ok := strings.CutPrefix(line, "ok "); ok {
		fmt.Println(strings.ReplaceAll(rest, "\x1f", "\n"))
		return nil
	}
	return errors.New(strings.TrimPrefix(line, "error "))
}

func connected(args []string) error {
	if len(args) != 1 {
		return errors.New("need a device index")
	}
	i, err := strconv.Atoi(args[0])
	if err != nil {
		return err
	}
	ok, err := nbd.DeviceConnected(i)
	if err != nil {
		return err
	}
	fmt.Println(ok)
	return nil
}
