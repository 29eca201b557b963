package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/lode-dev/lode/internal/blockdev/nbd"
	"github.com/lode-dev/lode/internal/run"
	"github.com/lode-dev/lode/internal/vm"
	"github.com/lode-dev/lode/internal/worker"
)

func init() { extraCommands = append(extraCommands, newVMCmd) }

type vmOptions struct {
	entrypoint    string
	setEntrypoint bool
	env           []string
	kernel        string
	busybox       string
	qemu          string
	accel         string
	memory        int
	cpus          int
	verbose       bool
	disk          string
	report        string
	worker        worker.Options
}

func newVMCmd() *cobra.Command {
	var o vmOptions
	cmd := &cobra.Command{
		Use:   "vm NAME [-- CMD ARGS...]",
		Short: "Boot an image as a QEMU microVM and run its entrypoint (or CMD) in it",
		Long: `Vm serves the image over NBD on a private unix socket (read on demand through
the worker's tiers, as serve-nbd does) and boots it as the root disk of a QEMU
microvm (-M microvm, software emulation by default) with the Debian cloud
kernel and an initramfs lode builds for the boot: a static busybox, the
virtio and overlay modules, and an init that mounts the image read-only under
a tmpfs overlay, runs the image's entrypoint and cmd — or CMD, which replaces
the cmd as in "docker run IMAGE CMD" — with the image's env and working dir,
prints its exit status and powers off. The command's output (stdout and stderr
merged, as the guest's serial console carries both) passes through, and its
exit status becomes lode's. The command runs as root in the guest with stdin
from /dev/null and no network.

At the end it prints the time to the guest's init, to the command's start and
to its exit, the bytes and requests the guest read, and what the worker
fetched from each tier. --disk boots from another server's disk instead (for
comparisons against reference servers); the image is then only read for its
config.`,
		Example: `  lode vm app
  lode vm app -- /bin/sh -c 'cat /etc/os-release'
  lode vm app --entrypoint /usr/bin/python3 -- -c 'print(42)'
  lode vm app --disk 'nbd+unix:///app?socket=/tmp/nbdkit.sock' -- true
  lode vm app --disk vhost-user:/tmp/qsd.sock -- true`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.setEntrypoint = cmd.Flags().Changed("entrypoint")
			return runVM(cmd.Context(), o, args[0], args[1:], stdout, stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.entrypoint, "entrypoint", "", "replace the image's entrypoint (and drop its cmd)")
	f.StringArrayVarP(&o.env, "env", "e", nil, "extra environment KEY=VALUE (repeatable)")
	f.StringVar(&o.kernel, "kernel", "", "kernel image, named vmlinuz-VERSION with modules in /lib/modules/VERSION (default: the newest "+vm.DefaultKernelGlob+")")
	f.StringVar(&o.busybox, "busybox", vm.DefaultBusybox, "statically linked busybox for the initramfs (Debian: busybox-static)")
	f.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "QEMU binary")
	f.StringVar(&o.accel, "accel", "tcg", "QEMU accelerator: tcg (software emulation) or kvm")
	f.IntVar(&o.memory, "memory", 512, "guest memory in MiB")
	f.IntVar(&o.cpus, "cpus", 1, "guest CPUs")
	f.BoolVar(&o.verbose, "verbose", false, "show the kernel's and the init's console lines too")
	f.StringVar(&o.disk, "disk", "", "boot from this disk instead of serving the image: nbd+unix:///EXPORT?socket=PATH, file:PATH or vhost-user:SOCKET (a vhost-user-blk backend such as qemu-storage-daemon)")
	f.StringVar(&o.report, "report", "", "also write the timings and byte counts as JSON to this file")
	bindWorker(f, &o.worker)
	return cmd
}

// vmReport is what lode vm measured, as --report writes it.
type vmReport struct {
	Image       string  `json:"image"`
	Disk        string  `json:"disk"` // "lode" or the --disk value
	ExitCode    int     `json:"exit_code"`
	InitMS      float64 `json:"init_ms"`  // QEMU start → the guest's init runs
	StartMS     float64 `json:"start_ms"` // → the command starts
	ExitMS      float64 `json:"exit_ms"`  // → the command exited
	TotalMS     float64 `json:"total_ms"` // → QEMU ended
	GuestInitMS float64 `json:"guest_uptime_init_ms"`
	GuestExitMS float64 `json:"guest_uptime_exit_ms"`
	// Only when lode served the disk:
	GuestReadBytes int64            `json:"guest_read_bytes,omitempty"`
	GuestRequests  int64            `json:"guest_requests,omitempty"`
	FetchedBytes   int64            `json:"fetched_bytes,omitempty"`
	TierBytes      map[string]int64 `json:"tier_bytes,omitempty"`
	TierHits       map[string]int64 `json:"tier_hits,omitempty"`
	MemHits        int64            `json:"mem_hits,omitempty"`
}

// fillTierReport sets the report's guest and tier figures from a counted
// export of w's image.
func fillTierReport(rep *vmReport, w *worker.Image, counted *vm.CountingDevice) {
	rep.GuestReadBytes, rep.GuestRequests = counted.Bytes(), counted.Requests()
	s := w.Image.Stats()
	rep.TierBytes, rep.TierHits, rep.MemHits = map[string]int64{}, map[string]int64{}, s.MemHits
	for _, t := range s.Tiers {
		rep.TierBytes[t.Tier] += t.Bytes
		rep.TierHits[t.Tier] += t.Hits
		rep.FetchedBytes += t.Bytes
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func runVM(ctx context.Context, o vmOptions, name string, args []string, out, errOut io.Writer) error {
	w, err := openImage(ctx, o.worker, name, nil)
	if err != nil {
		return err
	}
	defer w.Close()
	var ep []string
	if o.setEntrypoint {
		ep = []string{}
		if o.entrypoint != "" {
			ep = []string{o.entrypoint}
		}
	}
	argv, err := run.Argv(w.Manifest.Config, ep, args)
	if err != nil {
		return fmt.Errorf("starting %s: %w", w.Name, err)
	}
	if u := w.Manifest.Config.User; u != "" && u != "root" && u != "0" && u != "0:0" {
		fmt.Fprintf(errOut, "lode: %s: the image's user %q is ignored: commands run as root inside the VM\n", w.Name, u)
	}
	var k vm.Kernel
	if o.kernel != "" {
		k, err = vm.KernelAt(o.kernel, "/lib/modules")
	} else {
		k, err = vm.FindKernel(vm.DefaultKernelGlob, "/lib/modules")
	}
	if err != nil {
		return err
	}
	// In /tmp rather than under --home: a unix socket path must stay
	// under 108 bytes.
	dir, err := os.MkdirTemp("", "lode-vm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	marker := vm.NewMarker()
	initrd := filepath.Join(dir, "initrd.cpio")
	ir := vm.Initramfs{
		Busybox: o.busybox,
		Kernel:  k,
		Guest:   vm.Guest{Argv: argv, Env: vm.Env(w.Manifest.Config.Env, o.env), WorkDir: w.Manifest.Config.WorkingDir},
		Marker:  marker,
	}
	if err := writeInitramfs(initrd, ir); err != nil {
		return err
	}

	rep := vmReport{Image: w.Name, Disk: "lode"}
	var counted *vm.CountingDevice
	disk, vhost := "", ""
	if p, ok := strings.CutPrefix(o.disk, "vhost-user:"); ok && p != "" {
		rep.Disk, vhost = o.disk, p
	} else if o.disk != "" {
		rep.Disk = o.disk
		if disk, err = parseDisk(o.disk); err != nil {
			return err
		}
	} else {
		counted = vm.Count(w.Image)
		sock := filepath.Join(dir, "nbd.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", sock, err)
		}
		c := nbd.DefaultConfig()
		c.Log = logger
		c.ReadOnly = true
		srv := nbd.NewServer(map[string]nbd.Export{"root": {Device: counted, Description: w.Name}}, c)
		sctx, stop := context.WithCancel(ctx)
		served := make(chan error, 1)
		go func() { served <- srv.Serve(sctx, l) }()
		defer func() {
			stop()
			if err := <-served; err != nil {
				logger.Error("serving the VM's disk", "image", w.Name, "err", err)
			}
		}()
		disk = vm.NBDDisk(sock, "root")
	}

	m := vm.Machine{
		QEMU: o.qemu, Accel: o.accel, Kernel: k.Image, Initrd: initrd,
		MemoryMiB: o.memory, CPUs: o.cpus, Disk: disk, VhostUser: vhost, Verbose: o.verbose, Marker: marker,
	}
	res, err := vm.Run(ctx, m, out)
	rep.ExitCode, rep.InitMS, rep.StartMS, rep.ExitMS, rep.TotalMS = res.ExitCode, ms(res.Init), ms(res.Start), ms(res.Exit), ms(res.Total)
	rep.GuestInitMS, rep.GuestExitMS = ms(res.GuestInit), ms(res.GuestExit)
	if err != nil {
		return fmt.Errorf("running %s in a VM: %w", w.Name, err)
	}
	fmt.Fprintf(errOut, "lode: vm %s: init after %v (guest uptime %v), command started after %v, exit %d after %v; VM ended after %v\n",
		w.Name, res.Init.Round(time.Millisecond), res.GuestInit.Round(time.Millisecond), res.Start.Round(time.Millisecond),
		res.ExitCode, res.Exit.Round(time.Millisecond), res.Total.Round(time.Millisecond))
	if counted != nil {
		fillTierReport(&rep, w, counted)
		fmt.Fprintf(errOut, "  the guest read %s in %d requests\n", humanize.IBytes(uint64(rep.GuestReadBytes)), rep.GuestRequests)
		w.WriteStats(errOut)
	}
	if o.report != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(o.report, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("writing the report: %w", err)
		}
	}
	if res.ExitCode != 0 {
		return &exitError{code: res.ExitCode}
	}
	return nil
}

func writeInitramfs(p string, ir vm.Initramfs) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if err := ir.Write(f); err != nil {
		f.Close()
		return fmt.Errorf("writing the initramfs: %w", err)
	}
	return f.Close()
}

// parseDisk turns --disk into QEMU -blockdev options.
func parseDisk(s string) (string, error) {
	if p, ok := strings.CutPrefix(s, "file:"); ok && p != "" {
		return vm.FileDisk(p), nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "nbd+unix" || u.Query().Get("socket") == "" {
		return "", fmt.Errorf("parsing --disk %q: %w", s, errBadDisk)
	}
	return vm.NBDDisk(u.Query().Get("socket"), strings.TrimPrefix(u.Path, "/")), nil
}

var errBadDisk = errors.New("want nbd+unix:///EXPORT?socket=PATH or file:PATH")
