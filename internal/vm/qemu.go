package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// ErrNoTSC: the host's TSC frequency could not be found.
var ErrNoTSC = errors.New("host TSC frequency unknown")

// Machine is one microVM boot: QEMU's -M microvm with a kernel, an
// initramfs from Initramfs.Write, and one read-only virtio-blk root disk.
type Machine struct {
	// QEMU is the emulator binary (default "qemu-system-x86_64").
	QEMU string
	// Accel is QEMU's accelerator (default "tcg", software emulation,
	// which boots anywhere; "kvm" where the host's KVM can run a guest).
	Accel string
	// Kernel and Initrd are the boot files.
	Kernel, Initrd string
	// MemoryMiB (default 512) and CPUs (default 1) size the guest.
	MemoryMiB, CPUs int
	// Disk is the root disk's -blockdev options without node-name (see
	// NBDDisk and FileDisk).
	Disk string
	// VhostUser, instead of Disk, is the unix socket of a vhost-user-blk
	// backend (qemu-storage-daemon, say) serving the root disk; the
	// guest's memory is then a shared memfd the backend maps.
	VhostUser string
	// TSCKHz is passed as tsc_early_khz: without it TCG boots hang at
	// random. Zero means HostTSCKHz at Run time.
	TSCKHz int64
	// Verbose keeps the kernel's messages (no "quiet").
	Verbose bool
	// Append adds kernel parameters.
	Append []string
	// Marker is the Initramfs's marker.
	Marker string
}

// escapeOpt escapes a value for QEMU's comma-separated options.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// NBDDisk is a Disk read from the NBD export name on the unix socket.
func NBDDisk(socket, export string) string {
	return "driver=nbd,server.type=unix,server.path=" + escapeOpt(socket) + ",export=" + escapeOpt(export)
}

// FileDisk is a Disk read from a local raw image file.
func FileDisk(p string) string {
	return "driver=file,filename=" + escapeOpt(p)
}

func (m Machine) withDefaults() Machine {
	if m.QEMU == "" {
		m.QEMU = "qemu-system-x86_64"
	}
	if m.Accel == "" {
		m.Accel = "tcg"
	}
	if m.MemoryMiB == 0 {
		m.MemoryMiB = 512
	}
	if m.CPUs == 0 {
		m.CPUs = 1
	}
	return m
}

// KernelParams is the kernel command line.
func (m Machine) KernelParams() []string {
	p := []string{"console=ttyS0", "rdinit=/init", "panic=-1", "reboot=t", "tsc=reliable"}
	if m.TSCKHz > 0 {
		p = append(p, "tsc_early_khz="+strconv.FormatInt(m.TSCKHz, 10))
	}
	if !m.Verbose {
		p = append(p, "quiet", "loglevel=3")
	}
	return append(p, m.Append...)
}

// Args is QEMU's command line (without the binary). The console is the
// serial port on QEMU's stdout; the disk is read-only; the VM ends when
// the guest powers off, reboots or panics (-no-reboot, panic=-1).
func (m Machine) Args() []string {
	m = m.withDefaults()
	machine := "microvm"
	var disk []string
	if m.VhostUser != "" {
		machine += ",memory-backend=mem"
		disk = []string{
			"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", m.MemoryMiB),
			"-global", "virtio-mmio.force-legacy=false",
			"-chardev", "socket,id=vhost0,path=" + escapeOpt(m.VhostUser),
			"-device", "vhost-user-blk,chardev=vhost0,num-queues=1",
		}
	} else {
		disk = []string{
			"-blockdev", "node-name=root,read-only=on," + m.Disk,
			"-device", "virtio-blk-device,drive=root",
		}
	}
	return append([]string{
		"-M", machine, "-accel", m.Accel, "-cpu", "max",
		"-m", strconv.Itoa(m.MemoryMiB), "-smp", strconv.Itoa(m.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio",
		"-kernel", m.Kernel, "-initrd", m.Initrd,
		"-append", strings.Join(m.KernelParams(), " "),
	}, disk...)
}

// HostTSCKHz reads the host's TSC frequency from the kernel log ("tsc:
// Detected 2596.146 MHz processor"), or failing that from /proc/cpuinfo's
// "cpu MHz". It differs between machines, so it is read at run time.
func HostTSCKHz(ctx context.Context) (int64, error) {
	if out, err := exec.CommandContext(ctx, "dmesg").Output(); err == nil {
		if khz, ok := tscFromDmesg(strings.NewReader(string(out))); ok {
			return khz, nil
		}
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("reading the host TSC frequency: %w", err)
	}
	defer f.Close()
	if khz, ok := tscFromCPUInfo(f); ok {
		return khz, nil
	}
	return 0, fmt.Errorf("reading the host TSC frequency: %w (neither dmesg nor /proc/cpuinfo name it)", ErrNoTSC)
}

func tscFromDmesg(r io.Reader) (int64, bool) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		_, rest, ok := strings.Cut(sc.Text(), "tsc: Detected ")
		if !ok {
			continue
		}
		mhz, _, ok := strings.Cut(rest, " MHz")
		if !ok {
			continue
		}
		if khz, ok := mhzToKHz(mhz); ok {
			return khz, true
		}
	}
	return 0, false
}

func tscFromCPUInfo(r io.Reader) (int64, bool) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			return mhzToKHz(strings.TrimSpace(v))
		}
	}
	return 0, false
}

func mhzToKHz(s string) (int64, bool) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || v <= 0 || v > 1e6 {
		return 0, false
	}
	return int64(v*1000 + 0.5), true
}
