package worker

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
	"github.com/lode-dev/lode/internal/blockdev/nbd"
	"github.com/lode-dev/lode/internal/run"
	"github.com/lode-dev/lode/internal/vm"
)

// VMReport is what lode vm measured, as --report writes it.
type VMReport struct {
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
func (w *Image) fillTierReport(rep *VMReport, counted *vm.CountingDevice) {
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

// VMOptions configure RunVM: the flags of lode vm.
type VMOptions struct {
	// Entrypoint, if not nil, replaces the image's entrypoint (and drops its
	// cmd); Args replace its cmd; Env adds KEY=VALUE pairs.
	Entrypoint  []string
	Args, Env   []string
	Kernel      string // vmlinuz-VERSION with modules in /lib/modules/VERSION; "" the newest vm.DefaultKernelGlob
	Busybox     string
	QEMU, Accel string
	MemoryMiB   int
	CPUs        int
	Verbose     bool
	// Disk, if set, boots from another server's disk (nbd+unix:///EXPORT?
	// socket=PATH, file:PATH or vhost-user:SOCKET) instead of the image.
	Disk string
	// Out receives the guest's console; ErrOut lode's own lines.
	Out, ErrOut io.Writer
}

// RunVM is lode vm's sequence: serve the image over NBD on a private unix
// socket (counted), build an initramfs that runs the image's command, boot
// it as a QEMU microVM (internal/vm) and report the times and bytes. The
// guest's exit status is in the report.
func (w *Image) RunVM(ctx context.Context, o VMOptions) (VMReport, error) {
	var rep VMReport
	argv, err := run.Argv(w.Manifest.Config, o.Entrypoint, o.Args)
	if err != nil {
		return rep, fmt.Errorf("starting %s: %w", w.Name, err)
	}
	if u := w.Manifest.Config.User; u != "" && u != "root" && u != "0" && u != "0:0" {
		fmt.Fprintf(o.ErrOut, "lode: %s: the image's user %q is ignored: commands run as root inside the VM\n", w.Name, u)
	}
	var k vm.Kernel
	if o.Kernel != "" {
		k, err = vm.KernelAt(o.Kernel, "/lib/modules")
	} else {
		k, err = vm.FindKernel(vm.DefaultKernelGlob, "/lib/modules")
	}
	if err != nil {
		return rep, err
	}
	// In /tmp rather than under --home: a unix socket path must stay
	// under 108 bytes.
	dir, err := os.MkdirTemp("", "lode-vm-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)

	marker := vm.NewMarker()
	initrd := filepath.Join(dir, "initrd.cpio")
	ir := vm.Initramfs{
		Busybox: o.Busybox,
		Kernel:  k,
		Guest:   vm.Guest{Argv: argv, Env: vm.Env(w.Manifest.Config.Env, o.Env), WorkDir: w.Manifest.Config.WorkingDir},
		Marker:  marker,
	}
	if err := writeInitramfs(initrd, ir); err != nil {
		return rep, err
	}

	rep = VMReport{Image: w.Name, Disk: "lode"}
	var counted *vm.CountingDevice
	disk, vhost := "", ""
	if p, ok := strings.CutPrefix(o.Disk, "vhost-user:"); ok && p != "" {
		rep.Disk, vhost = o.Disk, p
	} else if o.Disk != "" {
		rep.Disk = o.Disk
		if disk, err = ParseDisk(o.Disk); err != nil {
			return rep, err
		}
	} else {
		counted = vm.Count(w.Image)
		sock := filepath.Join(dir, "nbd.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			return rep, fmt.Errorf("listening on %s: %w", sock, err)
		}
		c := nbd.DefaultConfig()
		c.Log = w.log
		c.ReadOnly = true
		srv := nbd.NewServer(map[string]nbd.Export{"root": {Device: counted, Description: w.Name}}, c)
		sctx, stop := context.WithCancel(ctx)
		served := make(chan error, 1)
		go func() { served <- srv.Serve(sctx, l) }()
		defer func() {
			stop()
			if err := <-served; err != nil {
				w.log.Error("serving the VM's disk", "image", w.Name, "err", err)
			}
		}()
		disk = vm.NBDDisk(sock, "root")
	}

	m := vm.Machine{
		QEMU: o.QEMU, Accel: o.Accel, Kernel: k.Image, Initrd: initrd,
		MemoryMiB: o.MemoryMiB, CPUs: o.CPUs, Disk: disk, VhostUser: vhost, Verbose: o.Verbose, Marker: marker,
	}
	res, err := vm.Run(ctx, m, o.Out)
	rep.ExitCode, rep.InitMS, rep.StartMS, rep.ExitMS, rep.TotalMS = res.ExitCode, ms(res.Init), ms(res.Start), ms(res.Exit), ms(res.Total)
	rep.GuestInitMS, rep.GuestExitMS = ms(res.GuestInit), ms(res.GuestExit)
	if err != nil {
		return rep, fmt.Errorf("running %s in a VM: %w", w.Name, err)
	}
	fmt.Fprintf(o.ErrOut, "lode: vm %s: init after %v (guest uptime %v), command started after %v, exit %d after %v; VM ended after %v\n",
		w.Name, res.Init.Round(time.Millisecond), res.GuestInit.Round(time.Millisecond), res.Start.Round(time.Millisecond),
		res.ExitCode, res.Exit.Round(time.Millisecond), res.Total.Round(time.Millisecond))
	if counted != nil {
		w.fillTierReport(&rep, counted)
		fmt.Fprintf(o.ErrOut, "  the guest read %s in %d requests\n", humanize.IBytes(uint64(rep.GuestReadBytes)), rep.GuestRequests)
		w.WriteStats(o.ErrOut)
	}
	return rep, nil
}

// WriteReport writes rep as JSON to path (lode vm --report, lode
// serve-vhost --report).
func (rep VMReport) WriteReport(path string) error {
	b, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the report %s: %w", path, err)
	}
	return nil
}

// ServeReport is the report of a served image in the fields lode vm
// --report uses (lode serve-vhost --report), from a counted device over
// w's image.
func (w *Image) ServeReport(counted *vm.CountingDevice) VMReport {
	rep := VMReport{Image: w.Name, Disk: "lode"}
	w.fillTierReport(&rep, counted)
	return rep
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

// ParseDisk turns --disk into QEMU -blockdev options.
func ParseDisk(s string) (string, error) {
	if p, ok := strings.CutPrefix(s, "file:"); ok && p != "" {
		return vm.FileDisk(p), nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "nbd+unix" || u.Query().Get("socket") == "" {
		return "", fmt.Errorf("parsing --disk %q: %w", s, ErrBadDisk)
	}
	return vm.NBDDisk(u.Query().Get("socket"), strings.TrimPrefix(u.Path, "/")), nil
}

// ErrBadDisk: --disk names no disk lode vm can boot from.
var ErrBadDisk = errors.New("want nbd+unix:///EXPORT?socket=PATH or file:PATH")
