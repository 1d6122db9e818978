// Command nbdserve serves one image file over NBD on a unix socket with
// pkg/nbd's FileBackend: the NBD layer without the engine, which
// bench/nbd-compare.sh measures with CSI_CACHE_STANDIN=1 (by default it serves
// through `csi-cache export`). The file is opened without O_DIRECT, so once its
// pages are in the page cache it stands in for a fully cached volume, and
// -delay adds a fixed latency to every read and write, standing in for a cold
// cache over a slow backing store.
//
//	nbdserve -image disk.img -socket /tmp/nbd.sock [-export name] [-delay 1ms]
//
// It serves until SIGINT or SIGTERM, then shuts the server down (which
// flushes the export). -cpuprofile writes a CPU profile of the whole run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/csi-cache/csi-cache/pkg/nbd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nbdserve:", err)
		os.Exit(1)
	}
}

func run() error {
	image := flag.String("image", "", "image file to serve (required)")
	socket := flag.String("socket", "", "unix socket to listen on (required)")
	export := flag.String("export", "", "export name (the default export if empty)")
	delay := flag.Duration("delay", 0, "latency added to every READ and WRITE (e.g. 1ms)")
	readOnly := flag.Bool("readonly", false, "serve the image read-only")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	flag.Parse()
	if *image == "" || *socket == "" || flag.NArg() != 0 {
		flag.Usage()
		return errors.New("-image and -socket are required")
	}

	fb, err := nbd.OpenFileBackend(*image, *readOnly)
	if err != nil {
		return err
	}
	defer fb.Close()
	var b nbd.Backend = fb
	if *delay > 0 {
		b = &delayBackend{FileBackend: fb, delay: *delay}
	}
	srv := nbd.NewServer(nbd.Options{})
	if err := srv.AddExport(*export, b, *readOnly); err != nil {
		return err
	}
	l, err := nbd.ListenUnix(*socket)
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// delayBackend adds a fixed latency to every read and write, like nbdkit's
// delay filter with rdelay and wdelay. The sleep holds no lock, so requests
// in flight overlap their delays as they would on a slow device.
type delayBackend struct {
	*nbd.FileBackend
	delay time.Duration
}

func (d *delayBackend) ReadAt(p []byte, off int64) error {
	time.Sleep(d.delay)
	return d.FileBackend.ReadAt(p, off)
}

func (d *delayBackend) WriteAt(p []byte, off int64, fua bool) error {
	time.Sleep(d.delay)
	return d.FileBackend.WriteAt(p, off, fua)
}
