package vm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lode-dev/lode/internal/lodetest"
)

// requireVM skips unless a microVM can boot here: QEMU, a cloud kernel
// and a static busybox.
func requireVM(t *testing.T) Kernel {
	t.Helper()
	lodetest.Require(t, lodetest.Tool("qemu-system-x86_64"), lodetest.Tool("mkfs.ext4"), lodetest.Tool("busybox"))
	k, err := FindKernel(DefaultKernelGlob, "/lib/modules")
	lodetest.Require(t, lodetest.Holds(err))
	return k
}

// busyboxRoot writes an ext4 image whose only program is a static busybox
// at /bin/sh: the smallest real root a guest can run a command in.
func busyboxRoot(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	for _, d := range []string{"bin", "etc", "work"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile(DefaultBusybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "bin", "sh"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "greeting"), []byte("hello from the image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "root.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

func TestBootRunsCommand(t *testing.T) {
	k := requireVM(t)
	img := busyboxRoot(t)
	marker := NewMarker()
	ird := filepath.Join(t.TempDir(), "initrd.cpio")
	f, err := os.Create(ird)
	if err != nil {
		t.Fatal(err)
	}
	g := Guest{
		Argv:    []string{"sh", "-c", `cat /etc/greeting; echo "wd=$(pwd) v=$V"; echo written > /tmp-file && cat /tmp-file; exit 7`},
		Env:     []string{"PATH=/bin", "V=it's here"},
		WorkDir: "/work",
	}
	if err := (Initramfs{Kernel: k, Guest: g, Marker: marker}).Write(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := Run(context.Background(), Machine{Kernel: k.Image, Initrd: ird, Disk: FileDisk(img), Marker: marker}, &out)
	if err != nil {
		t.Fatalf("Run: %v\noutput:\n%s", err, out.String())
	}
	want := "hello from the image\nwd=/work v=it's here\nwritten\n"
	if out.String() != want {
		t.Errorf("output = %q, want %q", out.String(), want)
	}
	if res.ExitCode != 7 {
		t.Errorf("exit code = %d, want 7", res.ExitCode)
	}
	if !(0 < res.Init && res.Init <= res.Start && res.Start <= res.Exit && res.Exit <= res.Total) {
		t.Errorf("host times out of order: %+v", res)
	}
	if !(0 < res.GuestInit && res.GuestInit <= res.GuestStart && res.GuestStart <= res.GuestExit) {
		t.Errorf("guest times out of order: %+v", res)
	}
	if strings.Contains(out.String(), marker) {
		t.Errorf("output shows the marker: %q", out.String())
	}
}

func TestBootReportsInitFailure(t *testing.T) {
	k := requireVM(t)
	dir := t.TempDir()
	blank := filepath.Join(dir, "blank.img")
	if err := os.WriteFile(blank, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	marker := NewMarker()
	ird := filepath.Join(dir, "initrd.cpio")
	f, err := os.Create(ird)
	if err != nil {
		t.Fatal(err)
	}
	if err := (Initramfs{Kernel: k, Guest: Guest{Argv: []string{"true"}}, Marker: marker}).Write(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var out bytes.Buffer
	_, err = Run(context.Background(), Machine{Kernel: k.Image, Initrd: ird, Disk: FileDisk(blank), Marker: marker}, &out)
	if !errors.Is(err, ErrGuestInit) || !strings.Contains(err.Error(), "mounting /dev/vda") {
		t.Errorf("booting a blank disk = %v, want ErrGuestInit naming the mount", err)
	}
	if out.Len() != 0 {
		t.Errorf("a failed boot printed %q", out.String())
	}
}
