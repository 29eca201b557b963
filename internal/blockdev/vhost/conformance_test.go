package vhost

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/blockdev/devicetest"
)

// vhostDevice is a vhost-user-blk disk seen from the guest's side, as a
// Device: the test front-end (server_test.go, playing QEMU and the virtio
// driver) turns each read into VIRTIO_BLK_T_IN requests of whole 512-byte
// sectors, at most 64 KiB each, one at a time on the ring, and copies the
// asked-for bytes out of guest memory; reads are clamped to the disk's
// capacity with io.EOF for the rest, as the Device contract says.
type vhostDevice struct {
	mu   sync.Mutex
	f    *frontend
	size int64
}

func (d *vhostDevice) Size() int64 { return d.size }

func (d *vhostDevice) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	n := int(max(0, min(int64(len(p)), d.size-off)))
	d.mu.Lock()
	defer d.mu.Unlock()
	for done := 0; done < n; {
		pos := off + int64(done)
		start := pos &^ 511
		end := min((off+int64(n)+511)&^511, start+64<<10)
		d.f.submit(0, blkTIn, uint64(start/512), make([]byte, end-start), true)
		u := d.f.wait(1)
		a := d.f.area(0, int(end-start))
		if u[0][1] != uint32(end-start)+1 || a[end-start] != blkSOK {
			return done, fmt.Errorf("virtio-blk read of sectors %d+%d: status %d, used length %d", start/512, (end-start)/512, a[end-start], u[0][1])
		}
		done += copy(p[done:n], a[pos-start:end-start])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// A disk passes the Device suite through the vhost-user protocol and the
// virtqueue.
func TestDeviceConformanceVhost(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	img := make([]byte, 2<<20+4096*3)
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	f, _ := serve(t, blockdev.NewMemDevice(img), Config{})
	f.start()
	// The capacity the guest sees: struct virtio_blk_config's first field.
	f.send(reqGetConfig, flagVersion, configPayload(0, 60, 0, make([]byte, 60)))
	capacity := binary.LittleEndian.Uint64(f.recv(reqGetConfig)[12:])
	devicetest.Run(t, &vhostDevice{f: f, size: int64(capacity) * 512}, img)
}
