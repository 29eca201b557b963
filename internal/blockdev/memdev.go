package blockdev

import (
	"context"
	"io"
)

// MemDevice is a Device over a byte slice. It exists for tests and
// benchmarks of the frontends, and for tiny images; it never fails.
type MemDevice struct {
	b []byte
}

var _ Device = (*MemDevice)(nil)

// NewMemDevice returns a Device reading b. b is not copied and must not be
// modified while the device is in use.
func NewMemDevice(b []byte) *MemDevice { return &MemDevice{b: b} }

// ReadAt implements Device. It honours ctx only on entry.
func (m *MemDevice) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, ErrOutOfRange
	}
	if off >= int64(len(m.b)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Size implements Device.
func (m *MemDevice) Size() int64 { return int64(len(m.b)) }
