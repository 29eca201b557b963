package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/vm"
	"github.com/lode-dev/lode/internal/worker"
)

// vmRequirements are what booting a microVM needs: root, QEMU, busybox for
// the initramfs, and the Debian cloud kernel with its modules.
var vmRequirements = []lodetest.Requirement{lodetest.Root, lodetest.Tool("qemu-system-x86_64"), lodetest.Tool("busybox"),
	func() error { _, err := vm.FindKernel(vm.DefaultKernelGlob, "/lib/modules"); return err }}

// TestVMBootsImage boots the sample (a real Debian userland: dash,
// coreutils, python3) as a microVM from lode's NBD export, and from the
// built ext4 file as the reference, and checks the guest's output, exit
// status and the report.
func TestVMBootsImage(t *testing.T) {
	lodetest.Require(t, vmRequirements...)
	c := newCLI(t)
	img := c.buildSample(t)
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	script := `echo hello-from-guest; echo "$GREETING in $(pwd)"; head -n1 /etc/os-release; python3 -c 'print(6*7)'; exit 7`
	want := "hello-from-guest\nhello from a lazily loaded image in /app\nPRETTY_NAME=\"lode sample image\"\n42\n"
	for _, tc := range []struct {
		name string
		disk []string
	}{
		{"lode", nil},
		{"file", []string{"--disk", "file:" + img}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.stdout.Reset()
			c.stderr.Reset()
			report := filepath.Join(t.TempDir(), "report.json")
			args := append([]string{"vm", "demo", "--allow-store-secret", "--cache-dir", filepath.Join(t.TempDir(), "cache"), "--report", report, "--entrypoint", "/bin/sh"}, tc.disk...)
			err := c.execLode(t, append(args, "--", "-c", script)...)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 7 {
				t.Fatalf("lode vm = %v, want exit status 7\nstdout: %s\nstderr: %s", err, c.stdout.String(), c.stderr.String())
			}
			if diff := cmp.Diff(want, c.stdout.String()); diff != "" {
				t.Errorf("guest output (-want +got):\n%s", diff)
			}
			var rep worker.VMReport
			readJSON(t, report, &rep)
			if rep.ExitCode != 7 || !(0 < rep.InitMS && rep.InitMS <= rep.StartMS && rep.StartMS <= rep.ExitMS && rep.ExitMS <= rep.TotalMS) {
				t.Errorf("report = %+v, want exit 7 and ordered times", rep)
			}
			if tc.disk != nil {
				if rep.GuestReadBytes != 0 || rep.FetchedBytes != 0 {
					t.Errorf("with --disk the report counts lode reads: %+v", rep)
				}
				return
			}
			// The guest reads a few MiB of the image; the cold worker
			// fetches them all from the origin, and read-ahead keeps the
			// excess bounded.
			if rep.GuestReadBytes <= 0 || rep.GuestRequests <= 0 || rep.GuestReadBytes >= fi.Size() {
				t.Errorf("guest read %d bytes in %d requests of a %d-byte image", rep.GuestReadBytes, rep.GuestRequests, fi.Size())
			}
			if rep.TierBytes["origin"] != rep.FetchedBytes || rep.FetchedBytes < rep.GuestReadBytes/2 || rep.FetchedBytes > fi.Size() {
				t.Errorf("fetched %d bytes (%v by tier) for %d bytes the guest read", rep.FetchedBytes, rep.TierBytes, rep.GuestReadBytes)
			}
		})
	}
}

func TestParseDisk(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"file:/var/img.ext4", "driver=file,filename=/var/img.ext4", true},
		{"nbd+unix:///app?socket=/tmp/a,b.sock", "driver=nbd,server.type=unix,server.path=/tmp/a,,b.sock,export=app", true},
		{"nbd+unix:///?socket=/tmp/s", "driver=nbd,server.type=unix,server.path=/tmp/s,export=", true},
		{"nbd://host:10809/app", "", false},
		{"nbd+unix:///app", "", false},
		{"file:", "", false},
		{"/var/img.ext4", "", false},
	} {
		got, err := worker.ParseDisk(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseDisk(%q) = %q, %v; want %q (ok %v)", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
