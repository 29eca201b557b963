package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// ErrTwoPasses is FlattenOnce's answer for an image it cannot flatten in one read: more than one layer, a
// registry layer, a layer that is not in stream order (see FlattenOnce), or any error reading, checking or
// classifying the layer. The writer then holds a partial stream to discard; Flatten, on a fresh writer,
// writes the image or reports the error the image deserves.
var ErrTwoPasses = errors.New("image needs the two-pass flatten")

// FlattenOnce writes exactly what Flatten writes for a single-layer image (rootfs:, or a one-layer OCI
// layout or docker-archive), reading the layer once instead of twice (issue #22: the rootfs tar's first
// pass, read, parsed and hashed alone before any output, was a third of the default build's wall time).
//
// One read suffices when the layer is in stream order, as tar writers produce a tree: no path appears
// twice (a later entry would replace an earlier one, or a later directory would take an earlier one's
// position with its own attributes), no directory is declared after an entry below it, every hard link
// follows its target (which Flatten requires too). Then Flatten's plan emits every entry as read, at its
// own position, hard links naming their target's first path, whiteouts (no-ops in a base layer) and
// implied directories left out, which is what FlattenOnce does as it reads. When the layer turns out not
// to be in stream order, FlattenOnce stops with ErrTwoPasses. It does so on every other error of the input
// too (reading, checking, classifying an entry): the two-pass flatten then reports it, so that those
// errors stay Flatten's, which reads every header before writing. The context's error and the writer's
// are returned as they are (a writer that fails on an entry may do so before Flatten would have found an
// input error further on).
//
// Verification is unchanged: the layer's digests are checked when its stream ends (FlattenOnce returns
// ErrTwoPasses on a mismatch, and Flatten reports it); a rootfs file's digest is learned from this one
// read, so there is no second read to compare. As with Flatten, the output of a failed call must be
// discarded: the caller stores nothing before FlattenOnce returned nil.
func FlattenOnce(ctx context.Context, im *Image, w io.Writer, o FlattenOptions) (FlattenStats, error) {
	rw := &recordingWriter{w: w}
	out := newTarOut(rw)
	defer out.release()
	return flattenOnce(ctx, im, out, &rw.err, o)
}

// FlattenOnceInto is FlattenOnce writing entries to ew, whose owner writes the end of the archive.
func FlattenOnceInto(ctx context.Context, im *Image, ew EntryWriter, o FlattenOptions) (FlattenStats, error) {
	re := &recordingEntries{ew: ew}
	out := newEntryOut(re)
	defer out.release()
	return flattenOnce(ctx, im, out, &re.err, o)
}

// flattenOnce runs FlattenOnce; *werr is the first error of the output.
func flattenOnce(ctx context.Context, im *Image, out *tarOut, werr *error, o FlattenOptions) (FlattenStats, error) {
	if len(im.layers) != 1 || im.layers[0].alwaysSpool || im.layers[0].spool != nil {
		return FlattenStats{}, ErrTwoPasses
	}
	o.withDefaults()
	f := &flattener{o: o, im: im, root: &node{children: map[string]*node{}}}
	out.stats = &f.stats
	err := f.once(ctx, im.layers[0], out)
	switch {
	case err == nil:
		return f.stats, nil
	case ctx.Err() != nil:
		return f.stats, ctx.Err()
	case *werr != nil:
		return f.stats, fmt.Errorf("flattening %s: %w", im, err)
	}
	return FlattenStats{}, ErrTwoPasses
}

// recordingWriter and recordingEntries keep the first error of their output, so that FlattenOnce tells a
// failed output (returned) from a failed input (ErrTwoPasses).
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

type recordingEntries struct {
	ew  EntryWriter
	err error
}

func (r *recordingEntries) WriteHeader(h *tar.Header) error {
	err := r.ew.WriteHeader(h)
	if err != nil && r.err == nil {
		r.err = err
	}
	return err
}

func (r *recordingEntries) Write(p []byte) (int, error) {
	n, err := r.ew.Write(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

// errNotInOrder stops once: the layer needs Flatten's plan.
var errNotInOrder = errors.New("layer not in stream order")

// once reads layer l once, applying each entry to the tree as scan does and writing it as emit would.
func (f *flattener) once(ctx context.Context, l *layer, out *tarOut) error {
	s, err := l.openStream(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	tr := tar.NewReader(s.tar)
	last := ""
	for idx := 0; ; idx++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		last = h.Name
		f.entries++
		if f.entries > f.o.MaxEntries {
			return errNotInOrder // Flatten reports the limit
		}
		o, err := f.classify(l, h, ref{l.index, idx})
		if err != nil {
			return err
		}
		switch o.kind {
		case kindSkip, kindWhiteout, kindOpaque:
			// Whiteouts and opaque markers act on lower layers only: in the base layer they hide
			// nothing, and Flatten never writes them.
			continue
		}
		oh, content, err := f.applyOnce(&o, h, tr)
		if err != nil {
			return err
		}
		if oh == nil {
			continue
		}
		if err := out.write(oh, content); err != nil {
			return f.copyErr(ctx, l, h.Name, err)
		}
	}
	if err := s.finish(last); err != nil {
		return err
	}
	return out.close()
}

// applyOnce adds one entry to the tree and says what to write for it: nil when nothing (an implied
// parent's declaration can never come later, since a second entry at a path is errNotInOrder).
func (f *flattener) applyOnce(o *op, h *tar.Header, tr io.Reader) (*tar.Header, io.Reader, error) {
	if o.name == "." {
		if f.root.placed {
			return nil, nil, errNotInOrder
		}
		f.root.placed, f.root.ref, f.root.hdr = true, o.ref, o.dirHdr
		dh := *o.dirHdr
		dh.Name = "."
		return &dh, nil, nil
	}
	dir, base := path.Split(o.name)
	parent := f.root
	for rest := strings.TrimSuffix(dir, "/"); rest != ""; {
		var comp string
		comp, rest, _ = strings.Cut(rest, "/")
		c := parent.children[comp]
		switch {
		case c == nil:
			c = f.newNode(parent, comp, o.ref, true) // implied: never written (tar2ext4 creates it)
		case c.children == nil:
			return nil, nil, errNotInOrder // Flatten reports the entry below a non-directory
		}
		parent = c
	}
	if parent.children[base] != nil {
		return nil, nil, errNotInOrder
	}
	switch o.kind {
	case kindDir:
		n := f.newNode(parent, base, o.ref, true)
		n.hdr = o.dirHdr
		dh := *o.dirHdr
		dh.Name = o.name
		return &dh, nil, nil
	case kindLink:
		t := f.lookup(o.target)
		if t == nil || t.children != nil {
			return nil, nil, errNotInOrder // Flatten refuses it
		}
		f.newNode(parent, base, o.ref, false).ino = t.ino
		oh := outHeader(h, tar.TypeLink)
		oh.Name, oh.Linkname = o.name, pathOf(t.ino.alive[0])
		return oh, nil, nil
	}
	n := f.newNode(parent, base, o.ref, false)
	n.ino = &inode{orig: o.ref, alive: []*node{n}}
	oh := outHeader(h, outType(h))
	oh.Name = o.name
	return oh, tr, nil
}
