package blockdev

import "context"

// Device is a read-only block device image.
//
// ReadAt fills p from offset off. It returns len(p) bytes, or fewer only
// when the device ends before off+len(p) (then with io.EOF). It is safe for
// concurrent calls. An error is an I/O error: no partial data is meaningful.
type Device interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	Size() int64
}
