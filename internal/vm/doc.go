// Package vm boots an image as a QEMU microVM: it builds the initramfs,
// composes QEMU's command line, runs the VM and collects the command's
// console output, exit status and boot times.
//
// It owns: the newc cpio writer; the initramfs (a static busybox, the
// virtio-mmio, virtio-blk and overlayfs modules of the chosen kernel with
// their dependencies from modules.dep, and an init script that mounts the
// root disk read-only under a tmpfs overlay, mounts proc, sys and dev,
// chroots, runs the command, prints its exit status and powers off with
// sysrq "o"); finding the kernel and the host's TSC frequency; the QEMU
// command line (-M microvm, TCG by default, -no-reboot, panic=-1,
// tsc_early_khz read at run time: without it TCG boots hang at random);
// parsing the serial console; and CountingDevice, which counts the reads
// the guest makes of its disk.
//
// It does not own the disk: the caller serves the image (cmd/lode serves
// the agent's Image over internal/blockdev/nbd on a private unix socket)
// and passes the -blockdev options (NBDDisk, FileDisk). It does not own the
// image's config either: the caller turns entrypoint, cmd, env and working
// directory into a Guest.
//
// The console is untrusted: the guest prints what it likes. The init's
// status lines start with a per-boot random marker ("lode-vm-…"; see
// NewMarker) followed by "init UPTIME", "start UPTIME", "exit STATUS
// UPTIME" or "error MESSAGE"; every other line is output, held to a
// bounded length. parseStatus and the line splitter have fuzz targets.
//
// DESIGN.md: "The data path" (a VM is one more frontend on an agent Image).
//
// Hand-written: the newc format is 13 hex fields and two paddings, smaller
// than a dependency (u-root's pkg/cpio pulls in much of u-root); QEMU is
// driven through its command line, which is its stable interface.
package vm
