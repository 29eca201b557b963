package ext4img

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
)

// MaxDiskSize is the largest filesystem image Build can write. It also sizes
// the block-group descriptor reservation at the start of every image, so it
// is a format constant: changing it changes every image's bytes.
const MaxDiskSize = 1 << 40 // 1 TiB

// maxDiskSize is MaxDiskSize; only FuzzAlign lowers it (export_test.go), because writing the reservation
// for 1 TiB is most of a small build (~4 ms), and the fuzzer needs thousands of builds a second.
var maxDiskSize int64 = MaxDiskSize

// FSType is the filesystem type recorded in manifests.
const FSType = "ext4"

// Options tune Build.
type Options struct {
	// InlineData stores files smaller than an inode's inline area inside the
	// inode instead of in a data block, which makes images smaller and keeps
	// tiny files from shifting data blocks.
	InlineData bool
	// Align, when not 0, starts the data of every regular file of at least
	// AlignMin bytes (default: Align) on a multiple of Align bytes, a
	// multiple of 4096: with Align the chunk size, identical large files
	// yield identical chunks wherever they sit in the image, so a changed
	// base layer or reordered layers no longer shift every later chunk. The
	// cost is up to Align−4096 free (zero) bytes before each such file.
	Align    int64
	AlignMin int64
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
	if err := checkAlign(o); err != nil {
		return Stats{}, err
	}
	in := io.Reader(&ctxReader{ctx: ctx, r: flat})
	// With Align, alignStream rewrites the stream on its way to tar2ext4,
	// inserting the padding files (align.go).
	var pr *io.PipeReader
	pads := make(chan alignResult, 1)
	if o.Align != 0 {
		var pw *io.PipeWriter
		pr, pw = io.Pipe()
		src := in
		go func() {
			n, err := alignStream(ctx, src, pw, o)
			pw.CloseWithError(err)
			pads <- alignResult{n, err}
		}()
		in = pr
	} else {
		pads <- alignResult{}
	}
	var r pipeReader
	if pr != nil {
		r = pr
	}
	return convert(ctx, in, r, w, o, pads)
}

// pipeReader is the reading end of io.Pipe or bufPipe.
type pipeReader interface {
	io.Reader
	CloseWithError(err error) error
}

// EntryWriter is what BuildEntries' producer writes the flattened tree
// through: a tar.Writer's WriteHeader and Write (internal/oci.FlattenInto).
type EntryWriter interface {
	WriteHeader(hdr *tar.Header) error
	io.Writer
}

// BuildEntries is Build for a producer that writes the flattened tree's
// entries itself (safe, relative names, whiteouts applied, as Build wants):
// the stream tar2ext4 reads is written from them, and with Align the padding
// files are inserted as the entries are written, so the stream is not
// parsed and written a second time as Build's alignStream does (issue #22:
// that rewrite was a whole tar parse and write of the default build). The
// image is the one Build writes from the same entries (TestBuildEntries).
// produce must not retain ew; its error is returned as it is, and ends the
// build.
func BuildEntries(ctx context.Context, w Output, o Options, produce func(ew EntryWriter) error) (Stats, error) {
	if err := checkAlign(o); err != nil {
		return Stats{}, err
	}
	// The stream goes through bufPipe's buffers, so that the producer
	// writes the next megabyte while tar2ext4 converts the last.
	pipe := newBufPipe()
	pads := make(chan alignResult, 1)
	go func() {
		tw := tar.NewWriter(pipe)
		var ew EntryWriter = tw
		var a *aligner
		if o.Align != 0 {
			a = newAligner(tw, o)
			ew = a
		}
		err := produce(ew)
		if err == nil {
			err = tw.Close()
		}
		pipe.CloseWrite(err)
		n := 0
		if a != nil {
			n = a.l.pads
		}
		pads <- alignResult{n, err}
	}()
	return convert(ctx, &ctxReader{ctx: ctx, r: pipe}, pipe, w, o, pads)
}

func checkAlign(o Options) error {
	if o.Align != 0 && (o.Align < blockSize || o.Align%blockSize != 0) {
		return fmt.Errorf("aligning files to %d bytes: not a multiple of %d", o.Align, blockSize)
	}
	return nil
}

// convert runs tar2ext4 over in, whose writer (when pr is set, the other
// end of pr) reports on pads, then edits the image: the inode bitmap's
// padding and, with Align, the padding files' removal.
func convert(ctx context.Context, in io.Reader, pr pipeReader, w Output, o Options, pads chan alignResult) (Stats, error) {
	opts := []tar2ext4.Option{tar2ext4.MaximumDiskSize(maxDiskSize)}
	if o.InlineData {
		opts = append(opts, tar2ext4.InlineData)
	}
	cerr := tar2ext4.ConvertTarToExt4(in, w, opts...)
	if pr != nil {
		if cerr != nil {
			// Stop the writer wherever it is, with the reason: a producer
			// (BuildEntries) reports it naming the entry it was writing.
			pr.CloseWithError(fmt.Errorf("writing ext4 image: %w", cerr))
		} else {
			_, _ = io.Copy(io.Discard, pr) // whatever follows the end of the archive
		}
	}
	r := <-pads
	if cerr != nil {
		if ctx.Err() != nil {
			return Stats{}, ctx.Err()
		}
		if r.err != nil && !errors.Is(r.err, io.ErrClosedPipe) {
			return Stats{}, r.err
		}
		return Stats{}, fmt.Errorf("writing ext4 image: %w", cerr)
	}
	if r.err != nil {
		return Stats{}, r.err
	}
	if err := fixInodeBitmapPadding(w); err != nil {
		return Stats{}, err
	}
	if r.pads > 0 {
		n, err := removePads(w)
		if err != nil {
			return Stats{}, fmt.Errorf("aligned layout: %w", err)
		}
		if n != r.pads {
			return Stats{}, fmt.Errorf("aligned layout: removed %d padding files, wrote %d", n, r.pads)
		}
	}
	end, err := w.Seek(0, io.SeekEnd)
	if err != nil {
		return Stats{}, fmt.Errorf("sizing ext4 image: %w", err)
	}
	return Stats{Size: end}, nil
}

type alignResult struct {
	pads int
	err  error
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
