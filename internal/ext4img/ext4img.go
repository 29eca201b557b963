package ext4img

import (
	"context"
	"fmt"
	"io"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
)

// MaxDiskSize is the largest filesystem image Build can write. It also sizes
// the block-group descriptor reservation at the start of every image, so it
// is a format constant: changing it changes every image's bytes.
const MaxDiskSize = 1 << 40 // 1 TiB

// FSType is the filesystem type recorded in manifests.
const FSType = "ext4"

// Options tune Build.
type Options struct {
	// InlineData stores files smaller than an inode's inline area inside the
	// inode instead of in a data block, which makes images smaller and keeps
	// tiny files from shifting data blocks.
	InlineData bool
}

// DefaultOptions are the options lode builds with.
func DefaultOptions() Options { return Options{InlineData: true} }

// Stats describes a built image.
type Stats struct {
	Size int64 // bytes of the filesystem image
}

// Output is where Build writes the image (an *os.File): the writer seeks
// back to write metadata.
type Output interface {
	io.ReadWriteSeeker
	io.ReaderAt
	io.WriterAt
}

// Build reads a flattened tar stream (internal/oci.Flatten output: safe,
// relative names, whiteouts already applied) and writes an ext4 image to w.
// Cancelling ctx aborts the build at the next read of the stream.
func Build(ctx context.Context, flat io.Reader, w Output, o Options) (Stats, error) {
	opts := []tar2ext4.Option{tar2ext4.MaximumDiskSize(MaxDiskSize)}
	if o.InlineData {
		opts = append(opts, tar2ext4.InlineData)
	}
	if err := tar2ext4.ConvertTarToExt4(&ctxReader{ctx: ctx, r: flat}, w, opts...); err != nil {
		if ctx.Err() != nil {
			return Stats{}, ctx.Err()
		}
		return Stats{}, fmt.Errorf("writing ext4 image: %w", err)
	}
	if err := fixInodeBitmapPadding(w); err != nil {
		return Stats{}, err
	}
	end, err := w.Seek(0, io.SeekEnd)
	if err != nil {
		return Stats{}, fmt.Errorf("sizing ext4 image: %w", err)
	}
	return Stats{Size: end}, nil
}

// ctxReader stops a stream when its context is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
