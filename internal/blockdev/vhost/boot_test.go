package vhost

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/vm"
)

// fileDevice is a read-only Device over a local image file.
type fileDevice struct {
	f    *os.File
	size int64
}

func (d *fileDevice) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return d.f.ReadAt(p, off)
}
func (d *fileDevice) Size() int64 { return d.size }

func openFileDevice(t *testing.T, p string) *fileDevice {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return &fileDevice{f: f, size: fi.Size()}
}

// requireVM skips unless a microVM can boot here.
func requireVM(t *testing.T) vm.Kernel {
	t.Helper()
	lodetest.Require(t, lodetest.Root, lodetest.Tool("qemu-system-x86_64"), lodetest.Tool("mkfs.ext4"), lodetest.Tool("busybox"))
	k, err := vm.FindKernel(vm.DefaultKernelGlob, "/lib/modules")
	lodetest.Require(t, lodetest.Holds(err))
	return k
}

// busyboxRoot writes a 16 MiB ext4 image holding a static busybox as
// /bin/sh with the applets the tests call.
func busyboxRoot(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(vm.DefaultBusybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "bin", "sh"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"cat", "dd", "cmp", "sync", "head", "od", "echo"} {
		if err := os.Symlink("sh", filepath.Join(tree, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "greeting"), []byte("hello over vhost-user\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "root.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

// boot serves dev on a fresh socket and boots k with script as the
// guest's command; it returns the console output and exit status.
func boot(t *testing.T, k vm.Kernel, dev blockdev.Device, c Config, script string) (string, int) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "vhost.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- NewServer(dev, c).Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	marker := vm.NewMarker()
	ird := filepath.Join(dir, "initrd.cpio")
	f, err := os.Create(ird)
	if err != nil {
		t.Fatal(err)
	}
	g := vm.Guest{Argv: []string{"sh", "-c", script}, Env: []string{"PATH=/bin"}}
	if err := (vm.Initramfs{Kernel: k, Guest: g, Marker: marker}).Write(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := vm.Run(ctx, vm.Machine{Kernel: k.Image, Initrd: ird, VhostUser: sock, Marker: marker}, &out)
	if err != nil {
		t.Fatalf("booting over vhost-user: %v\noutput:\n%s", err, out.String())
	}
	return out.String(), res.ExitCode
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// lastBlock is the guest's dd arguments for the image's last 4 KiB block
// (free space in a 16 MiB ext4 image).
const lastBlock = "bs=4096 seek=4095"

func TestBootReadOnly(t *testing.T) {
	k := requireVM(t)
	img := busyboxRoot(t)
	before := fileSum(t, img)
	script := `cat /greeting; cat /sys/block/vda/ro /sys/block/vda/serial; echo; ` +
		`echo x | dd of=/dev/vda ` + lastBlock + ` conv=fsync 2>/dev/null && echo wrote || echo refused; exit 3`
	out, code := boot(t, k, openFileDevice(t, img), Config{Serial: "lode-test"}, script)
	if want := "hello over vhost-user\n1\nlode-test\nrefused\n"; out != want || code != 3 {
		t.Errorf("guest printed %q, exit %d; want %q, exit 3", out, code, want)
	}
	if fileSum(t, img) != before {
		t.Error("the image changed")
	}
}

func TestBootOverlay(t *testing.T) {
	k := requireVM(t)
	img := busyboxRoot(t)
	before := fileSum(t, img)
	cow := filepath.Join(t.TempDir(), "root.cow")
	ov, err := blockdev.NewOverlay(openFileDevice(t, img), cow)
	if err != nil {
		t.Fatal(err)
	}
	defer ov.Close()
	// The guest writes a block past what the page cache holds, flushes,
	// and reads it back with O_DIRECT so the read reaches the device.
	script := `cat /sys/block/vda/ro; echo written-by-the-guest | dd of=/dev/vda ` + lastBlock + ` conv=fsync 2>/dev/null || echo write failed; ` +
		`dd if=/dev/vda ` + "bs=4096 skip=4095" + ` count=1 iflag=direct 2>/dev/null | head -n1`
	out, code := boot(t, k, ov, Config{}, script)
	if want := "0\nwritten-by-the-guest\n"; out != want || code != 0 {
		t.Errorf("guest printed %q, exit %d; want %q, exit 0", out, code, want)
	}
	got := make([]byte, 21)
	if _, err := ov.ReadAt(context.Background(), got, 4095*4096); err != nil {
		t.Fatal(err)
	}
	if string(got) != "written-by-the-guest\n" {
		t.Errorf("the overlay holds %q at the last block", got)
	}
	if fileSum(t, img) != before {
		t.Error("the base image changed")
	}
}
