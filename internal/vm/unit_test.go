package vm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/lodetest"
)

func TestCPIOExtractsWithBusybox(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("busybox"))
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	for _, e := range []entry{
		{name: "dir", mode: modeDir | 0o755},
		{name: "dir/file", mode: modeFile | 0o640, data: []byte("hello\n")},
		{name: "/dir/odd", mode: modeFile | 0o600, data: []byte("x")}, // leading slash dropped
		{name: "dir/streamed", mode: modeFile | 0o644, contentsFrom: strings.NewReader("streamed!"), size: 9},
		{name: "dir/empty", mode: modeFile | 0o644},
		{name: "link", mode: modeSymlink | 0o777, data: []byte("dir/file")},
	} {
		if err := c.add(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive is %d bytes, want a multiple of 4", buf.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command("busybox", "cpio", "-i", "-d")
	cmd.Dir, cmd.Stdin = dir, &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox cpio -i: %v\n%s", err, out)
	}
	got := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, _ := os.Lstat(p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			got[rel] = "-> " + target
		case fi.IsDir():
			got[rel] = "dir " + fi.Mode().Perm().String()
		default:
			b, _ := os.ReadFile(p)
			got[rel] = fi.Mode().Perm().String() + " " + string(b)
		}
		return nil
	})
	want := map[string]string{
		"dir": "dir -rwxr-xr-x", "dir/file": "-rw-r----- hello\n", "dir/odd": "-rw------- x",
		"dir/streamed": "-rw-r--r-- streamed!", "dir/empty": "-rw-r--r-- ", "link": "-> dir/file",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("extracted tree (-want +got):\n%s", diff)
	}
}

func TestCPIOShortStream(t *testing.T) {
	c := newCPIOWriter(io.Discard)
	err := c.add(entry{name: "f", mode: modeFile | 0o644, contentsFrom: strings.NewReader("abc"), size: 10})
	if !errors.Is(err, io.EOF) {
		t.Errorf("add of a short stream = %v, want io.EOF", err)
	}
}

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want event
		ok   bool
	}{
		{" init 1.52", event{kind: evInit, uptime: 1520 * time.Millisecond}, true},
		{" start 0.00", event{kind: evStart}, true},
		{" exit 7 2.25", event{kind: evExit, status: 7, uptime: 2250 * time.Millisecond}, true},
		{" exit 255 3", event{kind: evExit, status: 255, uptime: 3 * time.Second}, true},
		{" error mounting /dev/vda", event{kind: evError, msg: "mounting /dev/vda"}, true},
		{" exit 256 1.0", event{}, false},
		{" exit -1 1.0", event{}, false},
		{" exit 7", event{}, false},
		{" init", event{}, false},
		{" init x", event{}, false},
		{" init -1", event{}, false},
		{" start 1 2", event{}, false},
		{" hello", event{}, false},
		{"", event{}, false},
	} {
		got, ok := parseStatus(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseStatus(%q) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

const testMarker = "lode-vm-0123456789abcdef"

// feed writes s to a console in pieces of n bytes and returns what it
// passed on and the events it saw.
func feed(s string, n int, verbose bool) (string, []event) {
	var out bytes.Buffer
	var evs []event
	c := newConsole(testMarker, verbose, &out, func(e event) { evs = append(evs, e) })
	for len(s) > 0 {
		k := min(n, len(s))
		c.Write([]byte(s[:k]))
		s = s[k:]
	}
	c.Flush()
	return out.String(), evs
}

func TestConsole(t *testing.T) {
	M := testMarker
	boot := "[    0.1] kernel noise\r\n" + M + " init 1.50\r\nmodule loaded\r\n" + M + " start 1.60\r\n"
	for _, tc := range []struct {
		name    string
		in      string
		verbose bool
		want    string
		kinds   []eventKind
	}{
		{"output between start and exit", boot + "hello\r\nworld\r\n" + M + " exit 3 2.00\r\nreboot: Power down\r\n", false,
			"hello\nworld\n", []eventKind{evInit, evStart, evExit}},
		{"output without a final newline", boot + "no newline" + M + " exit 0 2.00\r\n", false,
			"no newline", []eventKind{evInit, evStart, evExit}},
		{"a fake status line is output", boot + M + " exit lots\r\n" + M + " exit 1 2.0\r\n", false,
			M + " exit lots\n", []eventKind{evInit, evStart, evExit}},
		{"another marker is output", boot + "lode-vm-ffffffffffffffff exit 9 1.0\r\n" + M + " exit 1 2.0\r\n", false,
			"lode-vm-ffffffffffffffff exit 9 1.0\n", []eventKind{evInit, evStart, evExit}},
		{"init error", "noise\r\n" + M + " init 1.0\r\n" + M + " error mounting /dev/vda\r\n", false,
			"", []eventKind{evInit, evError}},
		{"verbose shows everything", "noise\r\n" + M + " init 1.0\r\nout\r\n" + M + " exit 0 2.0\r\n", true,
			"noise\n" + M + " init 1.0\nout\n" + M + " exit 0 2.0\n", []eventKind{evInit, evExit}},
		{"last line without newline", boot + "tail", false, "tail\n", []eventKind{evInit, evStart}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range []int{1, 3, 7, 1 << 20} {
				got, evs := feed(tc.in, n, tc.verbose)
				if got != tc.want {
					t.Errorf("pieces of %d: output = %q, want %q", n, got, tc.want)
				}
				var kinds []eventKind
				for _, e := range evs {
					kinds = append(kinds, e.kind)
				}
				if !cmp.Equal(kinds, tc.kinds) {
					t.Errorf("pieces of %d: events = %v, want %v", n, kinds, tc.kinds)
				}
			}
		})
	}
}

func TestConsoleLongLine(t *testing.T) {
	long := strings.Repeat("x", 3*maxLine+17)
	in := testMarker + " start 1.0\n" + long + testMarker + " exit 0 2.0\n"
	for _, n := range []int{1, 100, 1 << 20} {
		var out bytes.Buffer
		var exits int
		c := newConsole(testMarker, false, &out, func(e event) {
			if e.kind == evExit {
				exits++
			}
		})
		for s := in; len(s) > 0; {
			k := min(n, len(s))
			c.Write([]byte(s[:k]))
			s = s[k:]
			if len(c.buf) > maxLine+n {
				t.Fatalf("pieces of %d: console holds %d bytes", n, len(c.buf))
			}
		}
		if out.String() != long || exits != 1 {
			t.Errorf("pieces of %d: output %d bytes (want %d), %d exits (want 1)", n, out.Len(), len(long), exits)
		}
	}
}

func TestConsoleTail(t *testing.T) {
	var in strings.Builder
	for i := 0; i < 30; i++ {
		in.WriteString(strings.Repeat("y", i) + "\n")
	}
	c := newConsole(testMarker, false, io.Discard, nil)
	c.Write([]byte(in.String()))
	tail := c.Tail()
	if len(tail) != tailLines || tail[0] != strings.Repeat("y", 30-tailLines) || tail[tailLines-1] != strings.Repeat("y", 29) {
		t.Errorf("tail = %q", tail)
	}
}

func FuzzConsole(f *testing.F) {
	f.Add([]byte(testMarker+" init 1.0\r\n"+testMarker+" start 1.1\r\nhi\r\n"+testMarker+" exit 3 2.0\r\n"), uint8(3))
	f.Add([]byte(testMarker+" error mounting\n"), uint8(1))
	f.Add([]byte(strings.Repeat("z", 5000)+testMarker+" exit 0 0\n"), uint8(200))
	f.Fuzz(func(t *testing.T, in []byte, piece uint8) {
		n := int(piece) + 1
		var out bytes.Buffer
		c := newConsole(testMarker, false, &out, func(e event) {
			if e.kind == evExit && (e.status < 0 || e.status > 255) {
				t.Fatalf("exit status %d", e.status)
			}
		})
		for s := in; len(s) > 0; {
			k := min(n, len(s))
			c.Write(s[:k])
			s = s[k:]
			if len(c.buf) > maxLine+n {
				t.Fatalf("console holds %d bytes", len(c.buf))
			}
		}
		c.Flush()
		// Whatever was passed on came from the input.
		if out.Len() > len(in)+bytes.Count(in, []byte("\n"))+1 {
			t.Fatalf("output %d bytes from %d input bytes", out.Len(), len(in))
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	for _, s := range []string{" init 1.5", " exit 7 2.0", " error x y", " start 0", " exit 1e9 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ev, ok := parseStatus(s)
		if !ok {
			return
		}
		if ev.uptime < 0 || ev.status < 0 || ev.status > 255 {
			t.Fatalf("parseStatus(%q) = %+v", s, ev)
		}
	})
}

func TestResolveModules(t *testing.T) {
	dep := `kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko:
kernel/fs/x/comp-ressed.ko.xz:
`
	deps, err := parseModulesDep(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	got, err := resolveModules(deps, map[string]bool{"ext4": true}, []string{"virtio_mmio", "virtio-blk", "overlay", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_mmio.ko",
		"kernel/drivers/block/virtio_blk.ko", "kernel/fs/overlayfs/overlay.ko"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("load order (-want +got):\n%s", diff)
	}
	if _, err := resolveModules(deps, nil, []string{"nope"}); err == nil {
		t.Error("resolving an unknown module succeeded")
	}
	if _, err := resolveModules(deps, nil, []string{"comp_ressed"}); err == nil {
		t.Error("resolving a compressed module succeeded")
	}
	if _, err := parseModulesDep(strings.NewReader("no colon here\n")); err == nil {
		t.Error("parsing a line without a colon succeeded")
	}
}

func FuzzParseModulesDep(f *testing.F) {
	f.Add("a.ko: b.ko c.ko\nb.ko:\nc.ko: b.ko\n")
	f.Add("# comment\n\nx/y-z.ko.xz:\n")
	f.Fuzz(func(t *testing.T, s string) {
		deps, err := parseModulesDep(strings.NewReader(s))
		if err != nil {
			return
		}
		for name, d := range deps {
			if len(d) == 0 {
				t.Fatalf("module %s has no path", name)
			}
			resolveModules(deps, nil, []string{name})
		}
	})
}

func TestHostKernelModules(t *testing.T) {
	k, err := FindKernel(DefaultKernelGlob, "/lib/modules")
	lodetest.Require(t, lodetest.Holds(err))
	mods, err := k.Modules(DefaultModules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, moduleName(m))
	}
	for _, want := range DefaultModules {
		if !contains(names, want) {
			t.Errorf("modules %v lack %s", names, want)
		}
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func TestVersionLess(t *testing.T) {
	sorted := []string{"vmlinuz-5.10.0-9-cloud-amd64", "vmlinuz-6.1.0-9-cloud-amd64", "vmlinuz-6.1.0-10-cloud-amd64", "vmlinuz-6.1.0-56-cloud-amd64", "vmlinuz-6.10.0-1-cloud-amd64"}
	for i := range sorted {
		for j := range sorted {
			if got := versionLess(sorted[i], sorted[j]); got != (i < j) {
				t.Errorf("versionLess(%s, %s) = %v", sorted[i], sorted[j], got)
			}
		}
	}
}

func TestKernelAt(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vmlinuz-9.9.9-test")
	os.WriteFile(img, nil, 0o644)
	if _, err := KernelAt(img, dir); err == nil {
		t.Error("KernelAt without modules.dep succeeded")
	}
	os.MkdirAll(filepath.Join(dir, "9.9.9-test"), 0o755)
	os.WriteFile(filepath.Join(dir, "9.9.9-test", "modules.dep"), nil, 0o644)
	k, err := KernelAt(img, dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Kernel{Image: img, Version: "9.9.9-test", ModulesDir: filepath.Join(dir, "9.9.9-test")}); k != want {
		t.Errorf("KernelAt = %+v, want %+v", k, want)
	}
	if _, err := KernelAt(filepath.Join(dir, "bzImage"), dir); err == nil {
		t.Error("KernelAt of a name without a version succeeded")
	}
	if _, err := FindKernel(filepath.Join(dir, "nothing-*"), dir); !errors.Is(err, ErrNoKernel) {
		t.Errorf("FindKernel with no match = %v, want ErrNoKernel", err)
	}
}

func TestTSC(t *testing.T) {
	dmesg := "[    0.000000] Linux version 6.1\n[    0.000051] tsc: Detected 2596.146 MHz processor\n[ 1.2] tsc: Refined TSC clocksource calibration: 2596.001 MHz\n"
	if khz, ok := tscFromDmesg(strings.NewReader(dmesg)); !ok || khz != 2596146 {
		t.Errorf("tscFromDmesg = %d, %v; want 2596146", khz, ok)
	}
	if _, ok := tscFromDmesg(strings.NewReader("nothing here\ntsc: Detected lots MHz\n")); ok {
		t.Error("tscFromDmesg found a frequency in a log without one")
	}
	if khz, ok := tscFromCPUInfo(strings.NewReader("processor\t: 0\ncpu MHz\t\t: 2096.040\n")); !ok || khz != 2096040 {
		t.Errorf("tscFromCPUInfo = %d, %v; want 2096040", khz, ok)
	}
	khz, err := HostTSCKHz(context.Background())
	if err != nil || khz < 100_000 || khz > 10_000_000 {
		t.Errorf("HostTSCKHz = %d, %v; want a frequency between 100 MHz and 10 GHz", khz, err)
	}
}

func TestMachineArgs(t *testing.T) {
	m := Machine{Kernel: "/boot/k", Initrd: "/tmp/i", Disk: NBDDisk("/tmp/a,b.sock", "root"), TSCKHz: 2596146, Append: []string{"foo=1"}}
	got := strings.Join(m.Args(), " ")
	for _, want := range []string{
		"-M microvm -accel tcg -cpu max -m 512 -smp 1 ", "-no-reboot", "-serial stdio", "-kernel /boot/k -initrd /tmp/i",
		"console=ttyS0 rdinit=/init panic=-1 reboot=t tsc=reliable tsc_early_khz=2596146 quiet loglevel=3 foo=1",
		"-blockdev node-name=root,read-only=on,driver=nbd,server.type=unix,server.path=/tmp/a,,b.sock,export=root",
		"-device virtio-blk-device,drive=root",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("args %q lack %q", got, want)
		}
	}
	m.Verbose, m.Accel, m.MemoryMiB = true, "kvm", 1024
	got = strings.Join(m.Args(), " ")
	if strings.Contains(got, "quiet") || !strings.Contains(got, "-accel kvm") || !strings.Contains(got, "-m 1024") {
		t.Errorf("verbose kvm args = %q", got)
	}
	m.VhostUser = "/run/qsd.sock"
	got = strings.Join(m.Args(), " ")
	for _, want := range []string{
		"-M microvm,memory-backend=mem", "-object memory-backend-memfd,id=mem,size=1024M,share=on",
		"-global virtio-mmio.force-legacy=false", "-chardev socket,id=vhost0,path=/run/qsd.sock",
		"-device vhost-user-blk,chardev=vhost0,num-queues=1",
	} {
		if !strings.Contains(got, want) || strings.Contains(got, "-blockdev") {
			t.Errorf("vhost-user args %q lack %q or have a -blockdev", got, want)
		}
	}
}

func TestEnv(t *testing.T) {
	for _, tc := range []struct {
		image, over, want []string
	}{
		{nil, nil, []string{"PATH=" + DefaultPath, "HOME=/root"}},
		{[]string{"PATH=/bin", "A=1", "HOME=/h"}, []string{"A=2", "B"}, []string{"PATH=/bin", "A=2", "HOME=/h", "B="}},
		{[]string{"=bad", "X=a=b"}, nil, []string{"X=a=b", "PATH=" + DefaultPath, "HOME=/root"}},
	} {
		if diff := cmp.Diff(tc.want, Env(tc.image, tc.over)); diff != "" {
			t.Errorf("Env(%q, %q) (-want +got):\n%s", tc.image, tc.over, diff)
		}
	}
}

func TestRunScriptQuotes(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("busybox"))
	// Run the script with a stand-in for /.lode/busybox that prints its
	// arguments, one per line.
	g := Guest{Argv: []string{"prog", "it's", "$HOME", "a b", ""}, Env: []string{"K=v'q"}, WorkDir: t.TempDir()}
	script := strings.ReplaceAll(runScript(g), "/.lode/busybox", `printf '%s\n'`)
	out, err := exec.Command("busybox", "sh", "-c", script).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "env\n-i\nK=v'q\nprog\nit's\n$HOME\na b\n\n"
	if string(out) != want {
		t.Errorf("script passed %q, want %q", out, want)
	}
}

func TestInitramfsRefuses(t *testing.T) {
	lodetest.Require(t, lodetest.Tool("ls"))
	dyn, err := exec.LookPath("ls") // dynamically linked on Debian
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		i    Initramfs
		want error
	}{
		{"no command", Initramfs{Marker: testMarker}, ErrNoCommand},
		{"option-like command", Initramfs{Marker: testMarker, Guest: Guest{Argv: []string{"-i"}}}, ErrBadCommand},
		{"variable-like command", Initramfs{Marker: testMarker, Guest: Guest{Argv: []string{"A=b"}}}, ErrBadCommand},
		{"bad env", Initramfs{Marker: testMarker, Guest: Guest{Argv: []string{"sh"}, Env: []string{"NOVALUE"}}}, nil},
		{"bad marker", Initramfs{Marker: "a b", Guest: Guest{Argv: []string{"sh"}}}, nil},
		{"dynamic busybox", Initramfs{Marker: testMarker, Busybox: dyn, Guest: Guest{Argv: []string{"sh"}}}, nil},
	} {
		err := tc.i.Write(io.Discard)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: Write = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestCountingDevice(t *testing.T) {
	c := Count(blockdev.NewMemDevice(make([]byte, 10000)))
	buf := make([]byte, 4096)
	c.ReadAt(context.Background(), buf, 0)
	c.ReadAt(context.Background(), buf, 8192) // 1808 bytes to the end
	if c.Requests() != 2 || c.Bytes() != 4096+1808 || c.Size() != 10000 {
		t.Errorf("counted %d requests, %d bytes, size %d", c.Requests(), c.Bytes(), c.Size())
	}
}

func BenchmarkConsole(b *testing.B) {
	line := []byte(strings.Repeat("output of the guest command ", 4) + "\r\n")
	chunk := bytes.Repeat(line, 64)
	c := newConsole(testMarker, false, io.Discard, nil)
	c.Write([]byte(testMarker + " start 1.0\n"))
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Write(chunk)
	}
}
