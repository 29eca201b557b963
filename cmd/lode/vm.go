package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"

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

// runVM wires lode vm: open the image and boot it (worker.Image.RunVM).
func runVM(ctx context.Context, o vmOptions, name string, args []string, out, errOut io.Writer) error {
	w, err := openImage(ctx, o.worker, name, nil)
	if err != nil {
		return err
	}
	defer w.Close()
	vo := worker.VMOptions{Args: args, Env: o.env, Kernel: o.kernel, Busybox: o.busybox, QEMU: o.qemu, Accel: o.accel,
		MemoryMiB: o.memory, CPUs: o.cpus, Verbose: o.verbose, Disk: o.disk, Out: out, ErrOut: errOut}
	if o.setEntrypoint {
		vo.Entrypoint = []string{}
		if o.entrypoint != "" {
			vo.Entrypoint = []string{o.entrypoint}
		}
	}
	rep, err := w.RunVM(ctx, vo)
	if err != nil {
		return err
	}
	if o.report != "" {
		if err := rep.WriteReport(o.report); err != nil {
			return err
		}
	}
	if rep.ExitCode != 0 {
		return &exitError{code: rep.ExitCode}
	}
	return nil
}
