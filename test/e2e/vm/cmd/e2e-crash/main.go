// Command e2e-crash shows what a process crash (SIGKILL, no power loss: every
// write the process handed to the kernel survives) does to writes the engine
// acknowledged without a flush.
//
//	e2e-crash write DIR MODE   format a cache set in DIR, create volume "v"
//	                           (MODE writeback or writethrough, no sequential
//	                           cutoff), write pattern A at 0 and flush, then
//	                           write pattern B at 0 and at 1 MiB without a
//	                           flush, and SIGKILL itself right away
//	e2e-crash read DIR         reopen the cache set and check that both
//	                           ranges read back B
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/engine"
)

const blk = 64 << 10

func pattern(b byte) []byte { return bytes.Repeat([]byte{b}, blk) }

func open(dir string) (*engine.CacheSet, error) {
	return driver.OpenCacheDevice(driver.CacheDeviceOptions{
		Path: filepath.Join(dir, "cache.img"), Size: 256 << 20,
		Config: engine.Config{BackingDir: filepath.Join(dir, "backing")},
	})
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "e2e-crash:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: e2e-crash write DIR MODE | read DIR")
	}
	cs, err := open(args[1])
	if err != nil {
		return err
	}
	switch args[0] {
	case "write":
		mode, err := engine.ParseCacheMode(args[2])
		if err != nil {
			return err
		}
		v, err := cs.CreateVolume(engine.VolumeSpec{Name: "v", Size: 64 << 20, Mode: mode, SeqCutoff: engine.NoSeqCutoff})
		if err != nil {
			return err
		}
		if err := v.WriteAt(pattern('A'), 0, false); err != nil {
			return err
		}
		if err := v.Flush(); err != nil {
			return err
		}
		if err := v.WriteAt(pattern('B'), 0, false); err != nil {
			return err
		}
		if err := v.WriteAt(pattern('B'), 1<<20, false); err != nil {
			return err
		}
		fmt.Println("wrote A at 0 (flushed), then B at 0 and at 1 MiB (acknowledged, not flushed); SIGKILL")
		return syscall.Kill(os.Getpid(), syscall.SIGKILL)
	case "read":
		v, err := cs.Volume("v")
		if err != nil {
			return err
		}
		bad := 0
		for _, off := range []int64{0, 1 << 20} {
			p := make([]byte, blk)
			if err := v.ReadAt(p, off); err != nil {
				return err
			}
			got := fmt.Sprintf("%q x %d", p[0], bytes.Count(p, p[:1]))
			if !bytes.Equal(p, pattern('B')) {
				bad++
				fmt.Printf("offset %d: got %s, want 'B' (acknowledged before the crash)\n", off, got)
			} else {
				fmt.Printf("offset %d: B, ok\n", off)
			}
		}
		cs.Close()
		if bad > 0 {
			return fmt.Errorf("%d acknowledged writes lost across a process crash", bad)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}
