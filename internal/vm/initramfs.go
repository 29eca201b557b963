package vm

import (
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ErrNoCommand: the guest has nothing to run.
var ErrNoCommand = errors.New("no command to run in the guest")

// ErrBadCommand: the command's name is empty, starts with "-" or contains
// "=" (env(1), which starts it, would take it for an option or a variable).
var ErrBadCommand = errors.New("unusable command name")

// DefaultBusybox is where Debian's busybox-static installs its binary.
const DefaultBusybox = "/bin/busybox"

// Guest is what runs inside the VM once its root is mounted.
type Guest struct {
	// Argv is the command and its arguments (the image's entrypoint and
	// cmd, or what the user asked for). A bare name is looked up in the
	// PATH of Env.
	Argv []string
	// Env is the command's whole environment, KEY=VALUE each.
	Env []string
	// WorkDir is the directory the command starts in (default /).
	WorkDir string
}

// Initramfs is the small root the kernel unpacks first: a static busybox,
// the modules the root disk needs, and an init that mounts the disk
// read-only under a tmpfs overlay, runs the guest's command in it, reports
// its exit status on the console and powers the VM off.
type Initramfs struct {
	// Busybox is a statically linked busybox (default DefaultBusybox).
	Busybox string
	// Kernel gives the modules; Modules names those to load (default
	// DefaultModules), their dependencies are added.
	Kernel  Kernel
	Modules []string
	// Guest is the command to run.
	Guest Guest
	// Marker prefixes the lines the init prints for the host (see
	// NewMarker); Run needs the same value.
	Marker string
}

// NewMarker returns a fresh random marker: the host recognizes the init's
// status lines by it, so a command's output will not be taken for them by
// accident.
func NewMarker() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return "lode-vm-" + hex.EncodeToString(b[:])
}

// busyboxApplets are the applets the init scripts call, linked in /bin.
var busyboxApplets = []string{"sh", "mount", "mkdir", "insmod", "cat", "cp", "chroot", "usleep", "cut", "env", "sync", "sleep"}

// Write writes the initramfs as an uncompressed newc cpio archive.
func (i Initramfs) Write(w io.Writer) error {
	if len(i.Guest.Argv) == 0 {
		return ErrNoCommand
	}
	if i.Marker == "" || strings.ContainsAny(i.Marker, " '\"\\\n$`") {
		return fmt.Errorf("writing the initramfs: marker %q is empty or not a plain word", i.Marker)
	}
	if a := i.Guest.Argv[0]; a == "" || strings.HasPrefix(a, "-") || strings.Contains(a, "=") {
		return fmt.Errorf("writing the initramfs: command %q: %w", a, ErrBadCommand)
	}
	for _, kv := range i.Guest.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("writing the initramfs: environment entry %q is not KEY=VALUE", kv)
		}
	}
	bb := i.Busybox
	if bb == "" {
		bb = DefaultBusybox
	}
	if err := checkStatic(bb); err != nil {
		return err
	}
	names := i.Modules
	if names == nil {
		names = DefaultModules
	}
	mods, err := i.Kernel.Modules(names)
	if err != nil {
		return err
	}
	c := newCPIOWriter(w)
	for _, d := range []string{"bin", "dev", "proc", "sys", "lib", "lib/modules", "lode", "ro", "rw", "newroot"} {
		if err := c.add(entry{name: d, mode: modeDir | 0o755}); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for init before anything is mounted.
	if err := c.add(entry{name: "dev/console", mode: modeChar | 0o600, rmaj: 5, rmin: 1}); err != nil {
		return err
	}
	if err := addFile(c, "bin/busybox", bb, 0o755); err != nil {
		return err
	}
	for _, a := range busyboxApplets {
		if err := c.add(entry{name: "bin/" + a, mode: modeSymlink | 0o777, data: []byte("busybox")}); err != nil {
			return err
		}
	}
	var loads []string
	for _, m := range mods {
		name := "lib/modules/" + path.Base(m)
		if err := addFile(c, name, filepath.Join(i.Kernel.ModulesDir, m), 0o644); err != nil {
			return err
		}
		loads = append(loads, "/"+name)
	}
	if err := c.add(entry{name: "init", mode: modeFile | 0o755, data: []byte(initScript(i.Marker, loads))}); err != nil {
		return err
	}
	if err := c.add(entry{name: "lode/run", mode: modeFile | 0o755, data: []byte(runScript(i.Guest))}); err != nil {
		return err
	}
	return c.close()
}

// checkStatic refuses a dynamically linked busybox: the initramfs has no
// libc for it.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("opening busybox %s: %w (apt-get install busybox-static)", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("opening busybox %s: it is dynamically linked (apt-get install busybox-static)", p)
		}
	}
	return nil
}

func addFile(c *cpioWriter, name, src string, perm uint32) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("adding %s to the initramfs: %w", src, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("adding %s to the initramfs: %w", src, err)
	}
	return c.add(entry{name: name, mode: modeFile | perm, contentsFrom: f, size: fi.Size()})
}

// shQuote quotes s as one word for a POSIX shell.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// initScript is /init. It reports on the console, each line starting with
// the marker: "init UPTIME" once proc is mounted, "start UPTIME" just
// before the command, "exit STATUS UPTIME" after it, or "error MESSAGE"
// if the root cannot be set up; then it powers the VM off.
func initScript(marker string, modules []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `#!/bin/sh
# lode microVM init: mount the image read-only under a tmpfs overlay, run
# /lode/run chrooted in it, report its exit status, power off.
M=%s
up() { cut -d' ' -f1 /proc/uptime; }
fail() { echo "$M error $*"; echo o > /proc/sysrq-trigger; sleep 30; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "$M init $(up)"
`, marker)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod %s || fail loading module %s\n", shQuote(m), path.Base(m))
	}
	b.WriteString(`i=0
while [ ! -b /dev/vda ]; do
  i=$((i+1)); [ $i -gt 200 ] && fail no root disk /dev/vda after 10 s
  usleep 50000
done
mount -t ext4 -o ro,noload /dev/vda /ro || fail mounting /dev/vda
mount -t tmpfs -o mode=0755 tmpfs /rw || fail mounting the tmpfs
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail mounting the overlay
mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/.lode
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts && mount -t devpts devpts /newroot/dev/pts
cp /bin/busybox /lode/run /newroot/.lode/ || fail copying the runner
echo "$M start $(up)"
chroot /newroot /.lode/busybox sh /.lode/run </dev/null
rc=$?
echo "$M exit $rc $(up)"
echo o > /proc/sysrq-trigger
sleep 30
`)
	return b.String()
}

// runScript is /.lode/run, run by busybox sh inside the guest's root:
// enter the working directory, replace the environment, exec the command.
func runScript(g Guest) string {
	wd := g.WorkDir
	if wd == "" {
		wd = "/"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "cd %s || exit 126\nexec /.lode/busybox env -i", shQuote(wd))
	for _, kv := range g.Env {
		b.WriteString(" " + shQuote(kv))
	}
	// env would take an argv[0] with "=" or a leading "-" for a variable or
	// an option: Write refuses those.
	for _, a := range g.Argv {
		b.WriteString(" " + shQuote(a))
	}
	b.WriteString("\n")
	return b.String()
}
