package nbd

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/blockdev/devicetest"
)

// nbdDevice is an NBD export seen from the client side, as a Device: reads
// are NBD_CMD_READs over one connection (serialized), clamped to the
// export's size with io.EOF for the rest, as the Device contract says.
type nbdDevice struct {
	mu sync.Mutex
	c  *testClient
}

func (d *nbdDevice) Size() int64 { return int64(d.c.size) }

func (d *nbdDevice) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	n := int(max(0, min(int64(len(p)), d.Size()-off)))
	if n > 0 {
		d.mu.Lock()
		errno, err := d.c.do(cmdRead, uint64(off), uint32(n), nil, p)
		d.mu.Unlock()
		if err != nil {
			return 0, err
		}
		if errno != 0 {
			return 0, fmt.Errorf("NBD read at %d: errno %d", off, errno)
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// An export passes the Device suite through the protocol.
func TestDeviceConformanceNBD(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	img := make([]byte, 2<<20+4096*3)
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	addr := serve(t, "unix", map[string]Export{"img": {Device: blockdev.NewMemDevice(img)}}, DefaultConfig())
	c := dialNBD(t, "unix", addr)
	if typ, err := c.goExport("img"); err != nil || typ != repAck {
		t.Fatalf("NBD_OPT_GO = %d, %v", typ, err)
	}
	devicetest.Run(t, &nbdDevice{c: c}, img)
}
