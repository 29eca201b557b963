package oci

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// layer is one layer of an Image: how to open its bytes and what they must hash to.
//
// go-containerregistry does not verify what it reads from an OCI layout or a docker-archive (see doc.go),
// so every read of a layer goes through a layerStream that hashes the raw and the uncompressed bytes and
// compares them with the expected digests when the stream has been read to its end.
type layer struct {
	index   int
	digest  string // for messages: blob digest (layout), diff ID (docker-archive), file digest (rootfs)
	wantRaw string // digest of the bytes open returns; "" = not checked
	// learnRaw, when set and wantRaw is "", makes the first read that
	// reaches the end hash the raw bytes as SHA-256 and take that digest
	// as wantRaw (and digest), passing it to learnRaw: later reads are
	// checked against it (rootfs files, whose digest nothing states).
	learnRaw func(digest string)
	wantDiff string                        // digest of the uncompressed tar; "" = not checked
	open     func() (io.ReadCloser, error) // raw bytes: gzip, zstd or plain tar (detected by magic)
	// openCtx, when set, is used instead of open (registry layers, whose
	// reads wait for a download and must stop with the flattener's context).
	openCtx func(context.Context) (io.ReadCloser, error)
	// alwaysSpool makes pass 1 spool the layer even when it is not
	// compressed, so that pass 2 never reads it from its source again
	// (registry layers: each byte is downloaded once).
	alwaysSpool bool
	// spool, when set, holds the layer's uncompressed tar exactly as the
	// first, verified read saw it (an unlinked temporary file). Later reads
	// come from it instead of decompressing and hashing the blob again.
	spool *os.File
}

func (l *layer) errorf(err error, cause error, format string, args ...any) *EntryError {
	return &EntryError{Layer: l.index, Digest: l.digest, Reason: fmt.Sprintf(format, args...), Err: err, Cause: cause}
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// layerStream reads one layer as an uncompressed tar stream and verifies its digests in finish.
type layerStream struct {
	l        *layer
	raw      io.ReadCloser
	rawBuf   *bufio.Reader // over raw, hashed by rawHash
	rawHash  hash.Hash
	dec      io.Reader // decompressed bytes (or rawBuf)
	decClose func()
	diffHash hash.Hash
	tar      io.Reader // dec, hashed by diffHash: what archive/tar reads
	tarTee   io.Reader // tar before teeTo: finish drains the trailer through it, not into the spool
}

// maxTrailer bounds the bytes a layer may hold after its tar's end-of-archive marker. Tar writers pad
// to a record of at most 10 KiB (GNU tar's default blocking factor; archive/tar writes none); such bytes
// are no part of the image, yet a few kilobytes of zstd or gzip expand to gigabytes of them, which were
// decompressed, hashed and spooled to disk whole (a decompression bomb that cost the build minutes).
const maxTrailer = 1 << 20

// readerPool holds the 1 MiB read buffers of layer streams: Flatten opens every layer twice, and a
// fresh megabyte per open was most of the work for small layers.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 1<<20) }}

func getReader(r io.Reader) *bufio.Reader {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func newHash(digest string) (hash.Hash, error) {
	alg, _, _ := strings.Cut(digest, ":")
	switch alg {
	case "sha256":
		return sha256.New(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("%w: digest algorithm %q", ErrUnsupported, alg)
}

func (l *layer) openStream(ctx context.Context) (*layerStream, error) {
	if l.spool != nil {
		r := getReader(io.NewSectionReader(l.spool, 0, 1<<62))
		return &layerStream{l: l, raw: io.NopCloser(nil), rawBuf: r, dec: r, tar: r, tarTee: r}, nil
	}
	s := &layerStream{l: l}
	var err error
	opened := false
	defer func() {
		if !opened {
			s.stopHashes()
		}
	}()
	if l.wantRaw != "" {
		if s.rawHash, err = newHash(l.wantRaw); err != nil {
			return nil, l.errorf(ErrUnsupported, nil, "%v", err)
		}
	} else if l.learnRaw != nil {
		s.rawHash = sha256.New()
	}
	if l.wantDiff != "" {
		if s.diffHash, err = newHash(l.wantDiff); err != nil {
			return nil, l.errorf(ErrUnsupported, nil, "%v", err)
		}
	}
	var rc io.ReadCloser
	if l.openCtx != nil {
		rc, err = l.openCtx(ctx)
	} else {
		rc, err = l.open()
	}
	if err != nil {
		return nil, l.errorf(ErrCorrupt, err, "opening layer")
	}
	s.raw = rc
	var r io.Reader = rc
	if s.rawHash != nil {
		s.rawHash = newAsyncHash(s.rawHash)
		r = io.TeeReader(r, s.rawHash)
	}
	s.rawBuf = getReader(r)
	magic, err := s.rawBuf.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		rc.Close()
		var ee *EntryError
		if errors.As(err, &ee) {
			return nil, err // a registry download that failed: it says which layer and why
		}
		return nil, l.errorf(ErrCorrupt, err, "reading layer")
	}
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		zr, err := gzip.NewReader(s.rawBuf)
		if err != nil {
			rc.Close()
			return nil, l.errorf(ErrCorrupt, err, "reading gzip header")
		}
		s.dec, s.decClose = zr, func() { zr.Close() }
	case bytes.HasPrefix(magic, zstdMagic):
		zr, err := zstd.NewReader(s.rawBuf, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(1<<27)) // 128 MiB, zstd --long's default; bounds memory on hostile input
		if err != nil {
			rc.Close()
			return nil, l.errorf(ErrCorrupt, err, "reading zstd header")
		}
		s.dec, s.decClose = zr, zr.Close
	default:
		s.dec = s.rawBuf
	}
	s.tar = s.dec
	if s.diffHash != nil {
		s.diffHash = newAsyncHash(s.diffHash)
		s.tar = io.TeeReader(s.dec, s.diffHash)
	}
	s.tarTee = s.tar
	opened = true
	return s, nil
}

// finish reads what is left of the layer (tar padding, the compressed stream's trailer, trailing bytes)
// and checks the digests. Call it once archive/tar has returned io.EOF. The bytes after the tar are
// hashed but not spooled, and more than maxTrailer of them is ErrCorrupt.
// last, the name of the last entry read, goes into errors from the compressed stream.
func (s *layerStream) finish(last string) error {
	n, err := io.Copy(io.Discard, io.LimitReader(s.tarTee, maxTrailer+1))
	if err == nil && n > maxTrailer {
		err = fmt.Errorf("more than %d bytes after the end of the tar archive", maxTrailer)
	}
	if err != nil {
		e := s.l.errorf(ErrCorrupt, err, "reading layer at or after this entry")
		e.Path = last
		return s.explain(e)
	}
	if _, err := io.Copy(io.Discard, s.rawBuf); err != nil {
		return s.l.errorf(ErrCorrupt, err, "reading layer after its tar")
	}
	if s.rawHash != nil && s.l.wantRaw == "" {
		d := "sha256:" + hex.EncodeToString(s.rawHash.Sum(nil))
		s.l.wantRaw, s.l.digest = d, d
		s.l.learnRaw(d)
	} else if s.rawHash != nil {
		if got := digestString(s.l.wantRaw, s.rawHash); got != s.l.wantRaw {
			return s.l.errorf(ErrCorrupt, nil, "digest mismatch: blob has %s, want %s", got, s.l.wantRaw)
		}
	}
	if s.diffHash != nil {
		if got := digestString(s.l.wantDiff, s.diffHash); got != s.l.wantDiff {
			return s.l.errorf(ErrCorrupt, nil, "diff ID mismatch: uncompressed layer has %s, want %s", got, s.l.wantDiff)
		}
	}
	return nil
}

// explain returns what to report for err, met while reading the layer's
// tar: when the rest of the blob does not hash to its digest (or cannot be
// read), that is the cause, and the decompressor's or archive/tar's
// complaint only its symptom.
func (s *layerStream) explain(err error) error {
	if s.rawHash == nil || s.l.wantRaw == "" { // nothing to compare with yet (learnRaw)
		return err
	}
	if _, derr := io.Copy(io.Discard, s.rawBuf); derr != nil {
		var ee *EntryError
		if errors.As(derr, &ee) {
			return derr
		}
		return err
	}
	if got := digestString(s.l.wantRaw, s.rawHash); got != s.l.wantRaw {
		return s.l.errorf(ErrCorrupt, err, "digest mismatch: blob has %s, want %s", got, s.l.wantRaw)
	}
	return err
}

// stopHashes ends the goroutines of the stream's hashes.
func (s *layerStream) stopHashes() {
	for _, h := range []hash.Hash{s.rawHash, s.diffHash} {
		if a, ok := h.(*asyncHash); ok {
			a.stop()
		}
	}
}

func (s *layerStream) Close() error {
	s.stopHashes()
	if s.decClose != nil {
		s.decClose()
	}
	if s.rawBuf != nil {
		s.rawBuf.Reset(nil)
		readerPool.Put(s.rawBuf)
		s.rawBuf = nil
	}
	return s.raw.Close()
}

func digestString(like string, h hash.Hash) string {
	alg, _, _ := strings.Cut(like, ":")
	return alg + ":" + hex.EncodeToString(h.Sum(nil))
}

// compressed reports whether the stream decompresses its blob.
func (s *layerStream) compressed() bool { return s.dec != io.Reader(s.rawBuf) }

// teeTo copies everything archive/tar reads from s into w as well.
func (s *layerStream) teeTo(w io.Writer) { s.tar = io.TeeReader(s.tar, w) }

// closeSpool drops the layer's spooled copy, if any.
func (l *layer) closeSpool() {
	if l.spool != nil {
		l.spool.Close()
		l.spool = nil
	}
}
