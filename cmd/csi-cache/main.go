// Command csi-cache is the single binary of the csi-cache CSI driver.
//
//	csi-cache serve    run the CSI plugin (Identity, Controller, Node)
//	csi-cache export   serve one volume over NBD, no Kubernetes
//	csi-cache inspect  print the state of a cache set (read-only)
//	csi-cache check    offline consistency check of a cache set
//	csi-cache version  print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"

	"k8s.io/klog/v2"

	"github.com/csi-cache/csi-cache/internal/version"
)

// command is one subcommand of the binary.
type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"serve":   {"run the CSI plugin (Identity, Controller and Node services)", runServe},
		"export":  {"serve one volume of a cache set over NBD (no Kubernetes)", runExport},
		"inspect": {"print the superblock, journal, btree and volumes of a cache set (read-only)", runInspect},
		"check":   {"offline consistency check of a cache set (exit 0: clean)", runCheck},
		"version": {"print the version", runVersion},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches to a subcommand and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "csi-cache: unknown command %q\n\n", args[0])
		usage(stderr, cmds)
		return 2
	}
	err := cmd.run(args[1:], stdout, stderr)
	klog.Flush()
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	default:
		fmt.Fprintf(stderr, "csi-cache %s: %v\n", args[0], err)
		return 1
	}
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintf(w, "csi-cache %s: a CSI driver with an NVMe cache in front of durable storage\n\n", version.Version)
	fmt.Fprintf(w, "Usage: csi-cache <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'csi-cache <command> -h' for the flags of a command.\n")
}

// newFlagSet returns a flag set for a subcommand with the klog flags added.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("csi-cache "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	klog.InitFlags(fs)
	return fs
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "csi-cache %s (commit %s)\n", version.Version, version.Commit)
	return nil
}
