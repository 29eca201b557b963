package vm

import (
	"context"
	"sync/atomic"

	"github.com/lode-dev/lode/internal/blockdev"
)

// CountingDevice passes reads to a Device and counts them: the requests
// and bytes the guest read, to set against what lode fetched. It is
// read-only whatever it wraps.
type CountingDevice struct {
	dev      blockdev.Device
	requests atomic.Int64
	bytes    atomic.Int64
}

// Count wraps d.
func Count(d blockdev.Device) *CountingDevice { return &CountingDevice{dev: d} }

// ReadAt reads from the wrapped device and counts the request and the
// bytes it returned.
func (c *CountingDevice) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := c.dev.ReadAt(ctx, p, off)
	c.requests.Add(1)
	c.bytes.Add(int64(n))
	return n, err
}

// Size is the wrapped device's size.
func (c *CountingDevice) Size() int64 { return c.dev.Size() }

// Requests is the number of reads so far.
func (c *CountingDevice) Requests() int64 { return c.requests.Load() }

// Bytes is the number of bytes read so far.
func (c *CountingDevice) Bytes() int64 { return c.bytes.Load() }
