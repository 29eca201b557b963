package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/lode-dev/lode/internal/lodetest"
	"github.com/lode-dev/lode/internal/worker"
)

// TestServeVhostBootsImage serves the sample through the agent as a
// vhost-user-blk backend and boots it with lode vm --disk vhost-user:…,
// first with an overlay (a guest write to the raw disk lands in it and
// reads back), then read-only (the write is refused and the block is the
// image's again).
func TestServeVhostBootsImage(t *testing.T) {
	lodetest.Require(t, vmRequirements...)
	c := newCLI(t)
	img := c.buildSample(t)
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	last := fi.Size()/4096 - 1
	const mark = "lode-overlay-test"
	// The sample has no dd: python3 writes the last block through the
	// page cache with fsync, and reads it back with O_DIRECT (into an
	// aligned mmap buffer) so the read reaches the device.
	py := `import mmap, os
n = int(open("/sys/block/vda/size").read()) // 8 - 1
print(open("/sys/block/vda/ro").read().strip())
try:
    fd = os.open("/dev/vda", os.O_RDWR)
    os.pwrite(fd, b"` + mark + `", n * 4096)
    os.fsync(fd)
    os.close(fd)
    print("wrote")
except OSError as e:
    print("refused")
fd = os.open("/dev/vda", os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
os.preadv(fd, [buf], n * 4096)
print("marked" if buf[:17] == b"` + mark + `" else "original")`
	script := `head -n1 /etc/os-release; python3 -c '` + py + `'; exit 5`
	cow := filepath.Join(t.TempDir(), "demo.cow")
	for _, tc := range []struct {
		name    string
		overlay string
		want    string
	}{
		{"overlay", cow, "PRETTY_NAME=\"lode sample image\"\n0\nwrote\nmarked\n"},
		{"read-only", "", "PRETTY_NAME=\"lode sample image\"\n1\nrefused\noriginal\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "vhost.sock")
			ctx, cancel := context.WithCancel(context.Background())
			ready := make(chan struct{})
			served := make(chan error, 1)
			report := filepath.Join(t.TempDir(), "report.json")
			o := serveVhostOptions{socket: sock, overlay: tc.overlay, workers: 8, report: report, worker: c.workerOpts()}
			go func() { served <- runServeVhost(ctx, o, "demo", ready) }()
			select {
			case <-ready:
			case err := <-served:
				t.Fatalf("serve-vhost: %v", err)
			}
			c.stdout.Reset()
			err := c.execLode(t, "vm", "demo", "--allow-store-secret", "--disk", "vhost-user:"+sock, "--entrypoint", "/bin/sh", "--", "-c", script)
			cancel()
			if serr := <-served; serr != nil {
				t.Errorf("serve-vhost: %v", serr)
			}
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 5 {
				t.Fatalf("lode vm = %v, want exit status 5\nstdout: %s\nstderr: %s", err, c.stdout.String(), c.stderr.String())
			}
			if diff := cmp.Diff(tc.want, c.stdout.String()); diff != "" {
				t.Errorf("guest output (-want +got):\n%s", diff)
			}
			if !strings.Contains(c.stderr.String(), "as vhost-user-blk on "+sock) {
				t.Errorf("serve-vhost did not announce its socket: %s", c.stderr.String())
			}
			// The report counts what the guest read and what the tiers fetched.
			var rep worker.VMReport
			if b, err := os.ReadFile(report); err != nil {
				t.Errorf("serve-vhost --report: %v", err)
			} else if err := json.Unmarshal(b, &rep); err != nil {
				t.Errorf("serve-vhost --report: %v", err)
			} else if rep.GuestReadBytes <= 0 || rep.GuestRequests <= 0 || rep.FetchedBytes < rep.GuestReadBytes/4 || len(rep.TierBytes) == 0 {
				t.Errorf("serve-vhost --report = %+v; want the guest's reads and the tiers' bytes", rep)
			}
		})
	}
	// The write is in the overlay file, at the image's last block.
	f, err := os.Open(cow)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, len(mark))
	if _, err := f.ReadAt(got, last*4096); err != nil || string(got) != mark {
		t.Errorf("overlay at block %d = %q, %v; want %q", last, got, err, mark)
	}
}
