package oci

import (
	"archive/tar"
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
)

// FlattenOptions are the limits and permissions Flatten enforces. A zero limit means its default.
type FlattenOptions struct {
	AllowDevices bool   // emit character and block device nodes; when false, dropped under /dev (counted) and refused elsewhere (ErrUnsafeEntry)
	AllowSetuid  bool   // emit files with setuid/setgid bits; refused when false (setgid directories are always allowed)
	MaxEntries   int    // refuse images with more tar entries than this, counted over all layers
	MaxDepth     int    // refuse paths with more components than this
	MaxFileSize  int64  // refuse regular files larger than this
	MaxPAXBytes  int    // refuse entries whose PAX records (xattrs included) exceed this many bytes
	TempDir      string // where hard-linked content that must move is spooled (see doc.go); "" = os.TempDir()
}

// Defaults, each sized to accept any real image and to bound the cost of a hostile one.
const (
	defaultMaxEntries  = 1_000_000 // large distro images have ~200k entries; the plan costs ~330 bytes each, and 2M took 21 s and 658 MiB to refuse
	defaultMaxDepth    = 256       // real trees are < 40 deep; deeper paths only stress consumers
	defaultMaxFileSize = 64 << 30  // 64 GiB: beyond any sane single file in an image
	defaultMaxPAXBytes = 1 << 20   // 1 MiB: archive/tar's own cap on a PAX header
)

// DefaultFlattenOptions returns the options lode builds with: no devices, setuid allowed (real images have
// setuid binaries such as su and passwd), and the default limits.
func DefaultFlattenOptions() FlattenOptions {
	return FlattenOptions{
		AllowSetuid: true,
		MaxEntries:  defaultMaxEntries,
		MaxDepth:    defaultMaxDepth,
		MaxFileSize: defaultMaxFileSize,
		MaxPAXBytes: defaultMaxPAXBytes,
	}
}

func (o *FlattenOptions) withDefaults() {
	if o.MaxEntries <= 0 {
		o.MaxEntries = defaultMaxEntries
	}
	if o.MaxDepth <= 0 {
		o.MaxDepth = defaultMaxDepth
	}
	if o.MaxFileSize <= 0 {
		o.MaxFileSize = defaultMaxFileSize
	}
	if o.MaxPAXBytes <= 0 {
		o.MaxPAXBytes = defaultMaxPAXBytes
	}
}

// FlattenStats counts what Flatten wrote.
type FlattenStats struct {
	Entries, Files, Dirs, Symlinks, Hardlinks int
	Bytes                                     int64 // regular file content
	// DroppedDevices counts device nodes under /dev left out because
	// AllowDevices is false (docs/decisions/20261203-device-nodes.md).
	DroppedDevices int
}

// Flatten writes the image's merged filesystem to w as one tar stream (PAX format), base layer first:
// see doc.go for the order, whiteouts, hard links and what is refused. It reads every layer twice (once
// for headers, once to copy) and verifies each layer's digests on both reads. On error, w holds a
// partial stream that must be discarded.
func Flatten(ctx context.Context, im *Image, w io.Writer, o FlattenOptions) (FlattenStats, error) {
	out := newTarOut(w)
	defer out.release()
	return flattenTo(ctx, im, out, o)
}

// FlattenInto is Flatten writing entries to ew, whose owner writes the end of the archive.
func FlattenInto(ctx context.Context, im *Image, ew EntryWriter, o FlattenOptions) (FlattenStats, error) {
	out := newEntryOut(ew)
	defer out.release()
	return flattenTo(ctx, im, out, o)
}

func flattenTo(ctx context.Context, im *Image, out *tarOut, o FlattenOptions) (FlattenStats, error) {
	o.withDefaults()
	f := &flattener{o: o, im: im, root: &node{children: map[string]*node{}}}
	defer func() {
		for _, l := range im.layers {
			l.closeSpool()
		}
	}()
	for _, l := range im.layers {
		if err := f.scan(ctx, l); err != nil {
			return FlattenStats{}, fmt.Errorf("flattening %s: %w", im, err)
		}
	}
	f.plan()
	out.stats = &f.stats
	if err := f.emit(ctx, out); err != nil {
		return f.stats, fmt.Errorf("flattening %s: %w", im, err)
	}
	return f.stats, nil
}

// ref names a tar entry: its layer and its position among that layer's headers.
type ref struct{ layer, index int }

func (r ref) less(s ref) bool { return r.layer < s.layer || (r.layer == s.layer && r.index < s.index) }

// node is a path in the merged tree that pass 1 builds.
type node struct {
	parent   *node
	name     string
	children map[string]*node // non-nil for directories
	seq      uint64           // creation order, to emit directories that share a position parent first
	ref      ref              // the entry that placed it; for directories the first (lowest) position
	hdr      *tar.Header      // directories: output header of the topmost declaration (nil: implicit only)
	placed   bool             // root only: declared by some layer
	ino      *inode           // non-directories
}

// inode is a file's identity, shared by hard links.
type inode struct {
	orig  ref // the entry that created it
	alive []*node
	spool *spooled // set when orig does not survive but a link to it does
}

type spooled struct {
	hdr  *tar.Header
	off  int64
	size int64
}

type emitKind uint8

const (
	emitCopy      emitKind = iota // the entry as read
	emitLink                      // a hard link to an entry already written
	emitFromSpool                 // the first surviving link of an inode whose original did not survive
)

type emission struct {
	kind emitKind
	name string
	link string
	ino  *inode
}

type flattener struct {
	o       FlattenOptions
	im      *Image
	root    *node
	seq     uint64
	entries int

	dirs  map[ref][]*node
	out   map[ref]*emission
	spool map[ref]*inode

	stats FlattenStats
}

type entryKind uint8

const (
	kindSkip entryKind = iota // PAX global headers, aufs metadata (.wh..wh.*)
	kindWhiteout
	kindOpaque
	kindDir
	kindReg
	kindSymlink
	kindLink
	kindChar
	kindBlock
	kindFifo
)

// op is one classified entry of a layer, kept between reading the layer's headers and applying them.
type op struct {
	kind   entryKind
	ref    ref
	name   string      // cleaned path, "." for the root; for whiteouts and opaque markers, what they act on
	target string      // hard links: cleaned target path
	raw    string      // name as written, for errors
	dirHdr *tar.Header // directories: output header
}

func (f *flattener) entryErr(l *layer, name string, sentinel error, cause error, format string, args ...any) error {
	return &EntryError{Layer: l.index, Digest: l.digest, Path: name, Reason: fmt.Sprintf(format, args...), Err: sentinel, Cause: cause}
}

// readErr classifies an error from archive/tar or the layer stream.
func (f *flattener) readErr(ctx context.Context, l *layer, last string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ee *EntryError
	if errors.As(err, &ee) {
		return err
	}
	if errors.Is(err, tar.ErrFieldTooLong) {
		return f.entryErr(l, last, ErrUnsafeEntry, err, "reading tar header after this entry")
	}
	if last == "" {
		return f.entryErr(l, last, ErrCorrupt, err, "reading tar")
	}
	return f.entryErr(l, last, ErrCorrupt, err, "reading tar at or after this entry")
}

// cleanPath normalises a tar name or hard link target; reason is non-empty if it is refused.
func (f *flattener) cleanPath(name string) (clean, reason string) {
	switch {
	case name == "":
		return "", "empty name"
	case strings.HasPrefix(name, "/"):
		return "", "absolute path"
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", "path escapes the image root"
	}
	if c == "." {
		return c, ""
	}
	depth := 0
	for rest := c; rest != ""; {
		var comp string
		comp, rest, _ = strings.Cut(rest, "/")
		depth++
		if len(comp) > 255 {
			return "", "path component longer than 255 bytes"
		}
	}
	if depth > f.o.MaxDepth {
		return "", fmt.Sprintf("path deeper than %d components", f.o.MaxDepth)
	}
	return c, ""
}

func paxBytes(h *tar.Header) int {
	n := 0
	for k, v := range h.PAXRecords {
		n += len(k) + len(v)
	}
	return n
}

// classify validates one header and says what it does.
func (f *flattener) classify(l *layer, h *tar.Header, r ref) (op, error) {
	unsafe := func(format string, args ...any) (op, error) {
		return op{}, f.entryErr(l, h.Name, ErrUnsafeEntry, nil, format, args...)
	}
	if h.Typeflag == tar.TypeXGlobalHeader {
		return op{kind: kindSkip}, nil
	}
	if n := paxBytes(h); n > f.o.MaxPAXBytes {
		return unsafe("PAX records of %d bytes exceed the limit of %d", n, f.o.MaxPAXBytes)
	}
	name, why := f.cleanPath(h.Name)
	if why != "" {
		return unsafe("%s", why)
	}
	o := op{ref: r, name: name, raw: h.Name}
	if base := path.Base(name); strings.HasPrefix(base, ".wh.") {
		switch {
		case base == ".wh..wh..opq":
			o.kind, o.name = kindOpaque, path.Dir(name)
		case strings.HasPrefix(base, ".wh..wh."):
			o.kind = kindSkip
		default:
			x := base[len(".wh."):]
			if x == "" || x == "." || x == ".." {
				return unsafe("whiteout of %q", x)
			}
			o.kind, o.name = kindWhiteout, path.Join(path.Dir(name), x)
		}
		return o, nil
	}
	if h.Uid < 0 || h.Gid < 0 || h.Mode < 0 || h.Devmajor < 0 || h.Devminor < 0 {
		return op{}, f.entryErr(l, h.Name, ErrCorrupt, nil, "negative uid, gid, mode or device number")
	}
	if _, ok := h.PAXRecords["SCHILY.xattr."]; ok {
		return unsafe("empty xattr name")
	}
	switch h.Typeflag {
	case tar.TypeDir:
		o.kind = kindDir
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse: // archive/tar expands sparse files
		o.kind = kindReg
		if h.Size > f.o.MaxFileSize {
			return unsafe("file of %d bytes exceeds the limit of %d", h.Size, f.o.MaxFileSize)
		}
	case tar.TypeSymlink:
		o.kind = kindSymlink
		t := h.Linkname
		if t == "" {
			return unsafe("symlink with an empty target")
		}
		if !strings.HasPrefix(t, "/") {
			if c := path.Clean(path.Join(path.Dir(name), t)); c == ".." || strings.HasPrefix(c, "../") {
				return unsafe("symlink target %q escapes the image root", t)
			}
		}
	case tar.TypeLink:
		o.kind = kindLink
		t, why := f.cleanPath(h.Linkname)
		if why != "" {
			return unsafe("hard link target %q: %s", h.Linkname, why)
		}
		if t == name {
			return unsafe("hard link to itself")
		}
		if t == "." {
			return unsafe("hard link to the root directory")
		}
		o.target = t
	case tar.TypeChar, tar.TypeBlock:
		if !f.o.AllowDevices {
			if name == "dev" || strings.HasPrefix(name, "dev/") {
				// Runtimes mount their own /dev over the image's: drop it.
				f.stats.DroppedDevices++
				return op{kind: kindSkip}, nil
			}
			return unsafe("device node (major %d, minor %d) outside /dev not allowed (--allow-devices keeps device nodes)", h.Devmajor, h.Devminor)
		}
		o.kind = kindChar
		if h.Typeflag == tar.TypeBlock {
			o.kind = kindBlock
		}
	case tar.TypeFifo:
		o.kind = kindFifo
	default:
		return op{}, f.entryErr(l, h.Name, ErrUnsupported, nil, "tar entry type %q", string(h.Typeflag))
	}
	if name == "." && o.kind != kindDir {
		return unsafe("the image root must be a directory")
	}
	if o.kind != kindDir && h.Mode&(0o4000|0o2000) != 0 && !f.o.AllowSetuid {
		return unsafe("setuid/setgid mode %#o not allowed", h.Mode&0o7777)
	}
	if o.kind == kindDir {
		o.dirHdr = outHeader(h, tar.TypeDir)
	}
	return o, nil
}

// scan is pass 1 for one layer: read its headers, then apply them to the merged tree.
func (f *flattener) scan(ctx context.Context, l *layer) error {
	s, err := l.openStream(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	// A compressed layer is decompressed once: pass 1 keeps the verified
	// tar in an unlinked temporary file that pass 2 reads back.
	var spool *os.File
	if s.compressed() || l.alwaysSpool {
		if spool, err = os.CreateTemp(f.o.TempDir, "lode-layer-*.tar"); err != nil {
			return l.errorf(ErrCorrupt, err, "spooling layer")
		}
		os.Remove(spool.Name())
		s.teeTo(spool)
		defer func() {
			if l.spool != spool {
				spool.Close()
			}
		}()
	}
	tr := tar.NewReader(s.tar)
	var ops []op
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
			return f.readErr(ctx, l, last, s.explain(err))
		}
		last = h.Name
		f.entries++
		if f.entries > f.o.MaxEntries {
			return f.entryErr(l, h.Name, ErrUnsafeEntry, nil, "image has more than %d entries", f.o.MaxEntries)
		}
		o, err := f.classify(l, h, ref{l.index, idx})
		if err != nil {
			return err
		}
		if o.kind != kindSkip {
			ops = append(ops, o)
		}
	}
	if err := s.finish(last); err != nil {
		return err
	}
	l.spool = spool
	// Whiteouts and opaque markers hide lower layers only, wherever they sit in this layer's tar.
	for i := range ops {
		switch ops[i].kind {
		case kindWhiteout:
			if n := f.lookup(ops[i].name); n != nil && n != f.root {
				delete(n.parent.children, n.name)
			}
		case kindOpaque:
			if n := f.lookup(ops[i].name); n != nil && n.children != nil {
				n.children = map[string]*node{}
			}
		}
	}
	for i := range ops {
		if k := ops[i].kind; k != kindWhiteout && k != kindOpaque {
			if err := f.apply(l, &ops[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// lookup finds a path in the merged tree without following symlinks; nil if absent.
func (f *flattener) lookup(p string) *node {
	n := f.root
	if p == "." {
		return n
	}
	for rest := p; rest != ""; {
		var comp string
		comp, rest, _ = strings.Cut(rest, "/")
		if n.children == nil {
			return nil
		}
		if n = n.children[comp]; n == nil {
			return nil
		}
	}
	return n
}

func (f *flattener) newNode(parent *node, name string, r ref, dir bool) *node {
	f.seq++
	n := &node{parent: parent, name: name, seq: f.seq, ref: r}
	if dir {
		n.children = map[string]*node{}
	}
	parent.children[name] = n
	return n
}

// apply adds one entry of the layer being scanned to the merged tree.
func (f *flattener) apply(l *layer, o *op) error {
	if o.name == "." {
		if !f.root.placed {
			f.root.placed, f.root.ref = true, o.ref
		}
		f.root.hdr = o.dirHdr
		return nil
	}
	dir, base := path.Split(o.name)
	parent := f.root
	for rest := strings.TrimSuffix(dir, "/"); rest != ""; {
		var comp string
		comp, rest, _ = strings.Cut(rest, "/")
		c := parent.children[comp]
		switch {
		case c == nil:
			c = f.newNode(parent, comp, o.ref, true) // implicit parent: tar2ext4 creates it; see doc.go
		case c.children == nil:
			return f.entryErr(l, o.raw, ErrUnsupported, nil, "parent %q is not a directory (lode does not write through symlinks)", pathOf(c))
		}
		parent = c
	}
	existing := parent.children[base]
	switch o.kind {
	case kindDir:
		if existing != nil && existing.children != nil {
			existing.hdr = o.dirHdr // keep the first position, take the topmost attributes
			return nil
		}
		n := f.newNode(parent, base, o.ref, true)
		n.hdr = o.dirHdr
	case kindLink:
		t := f.lookup(o.target)
		if t == nil {
			return f.entryErr(l, o.raw, ErrUnsafeEntry, nil, "hard link to missing target %q", o.target)
		}
		if t.children != nil {
			return f.entryErr(l, o.raw, ErrUnsafeEntry, nil, "hard link to directory %q", o.target)
		}
		f.newNode(parent, base, o.ref, false).ino = t.ino
	default:
		n := f.newNode(parent, base, o.ref, false)
		n.ino = &inode{orig: o.ref}
	}
	return nil
}

func pathOf(n *node) string {
	if n.parent == nil {
		return "."
	}
	var parts []string
	for ; n.parent != nil; n = n.parent {
		parts = append(parts, n.name)
	}
	slices.Reverse(parts)
	return strings.Join(parts, "/")
}

// plan decides, from the merged tree, what each entry position emits.
func (f *flattener) plan() {
	f.dirs = map[ref][]*node{}
	f.out = map[ref]*emission{}
	f.spool = map[ref]*inode{}
	var inodes []*inode
	var walk func(n *node)
	walk = func(n *node) {
		for _, c := range n.children {
			if c.children != nil {
				if c.hdr != nil {
					f.dirs[c.ref] = append(f.dirs[c.ref], c)
				}
				walk(c)
				continue
			}
			if len(c.ino.alive) == 0 {
				inodes = append(inodes, c.ino)
			}
			c.ino.alive = append(c.ino.alive, c)
		}
	}
	if f.root.hdr != nil {
		f.dirs[f.root.ref] = append(f.dirs[f.root.ref], f.root)
	}
	walk(f.root)
	for _, ds := range f.dirs {
		slices.SortFunc(ds, func(a, b *node) int { return cmp.Compare(a.seq, b.seq) })
	}
	for _, ino := range inodes {
		slices.SortFunc(ino.alive, func(a, b *node) int {
			switch {
			case a.ref.less(b.ref):
				return -1
			case b.ref.less(a.ref):
				return 1
			}
			return 0
		})
		holder := ino.alive[0]
		hname := pathOf(holder)
		if holder.ref == ino.orig {
			f.out[holder.ref] = &emission{kind: emitCopy, name: hname}
		} else {
			f.out[holder.ref] = &emission{kind: emitFromSpool, name: hname, ino: ino}
			ino.spool = &spooled{}
			f.spool[ino.orig] = ino
		}
		for _, n := range ino.alive[1:] {
			f.out[n.ref] = &emission{kind: emitLink, name: pathOf(n), link: hname}
		}
	}
}

// outHeader copies the deterministic fields of h: no user or group names, only SCHILY.xattr PAX records.
func outHeader(h *tar.Header, typ byte) *tar.Header {
	o := &tar.Header{
		Typeflag:   typ,
		Mode:       h.Mode & 0o7777,
		Uid:        h.Uid,
		Gid:        h.Gid,
		ModTime:    h.ModTime,
		AccessTime: h.AccessTime,
		ChangeTime: h.ChangeTime,
		Format:     tar.FormatPAX,
	}
	switch typ {
	case tar.TypeReg:
		o.Size = h.Size
	case tar.TypeSymlink:
		o.Linkname = h.Linkname
	case tar.TypeChar, tar.TypeBlock:
		o.Devmajor, o.Devminor = h.Devmajor, h.Devminor
	}
	for k, v := range h.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			if o.PAXRecords == nil {
				o.PAXRecords = map[string]string{}
			}
			o.PAXRecords[k] = v
		}
	}
	return o
}

func outType(h *tar.Header) byte {
	switch h.Typeflag {
	case tar.TypeRegA, tar.TypeGNUSparse:
		return tar.TypeReg
	}
	return h.Typeflag
}

// Pools of emit's 1 MiB buffers (see readerPool).
var (
	writerPool  = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 1<<20) }}
	copyBufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}
)

// EntryWriter receives the flattened stream as entries: a tar.Writer's WriteHeader and Write
// (ext4img.BuildEntries' writer). FlattenInto writes through one instead of an io.Writer.
type EntryWriter interface {
	WriteHeader(hdr *tar.Header) error
	io.Writer
}

// tarOut writes the flattened stream's entries, content through a pooled 1 MiB buffer, counting what it
// writes in stats: to an EntryWriter, or as PAX tar through a pooled 1 MiB buffer to an io.Writer.
type tarOut struct {
	ew    EntryWriter
	bw    *bufio.Writer // nil for an EntryWriter
	tw    *tar.Writer
	bp    *[]byte
	stats *FlattenStats // the flattener's
}

func newTarOut(w io.Writer) *tarOut {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(w)
	tw := tar.NewWriter(bw)
	return &tarOut{ew: tw, bw: bw, tw: tw, bp: copyBufPool.Get().(*[]byte)}
}

func newEntryOut(ew EntryWriter) *tarOut {
	return &tarOut{ew: ew, bp: copyBufPool.Get().(*[]byte)}
}

// release returns the buffers to their pools.
func (t *tarOut) release() {
	if t.bw != nil {
		t.bw.Reset(nil)
		writerPool.Put(t.bw)
	}
	copyBufPool.Put(t.bp)
}

// write writes one entry, with h.Size bytes of content for a regular file.
func (t *tarOut) write(h *tar.Header, content io.Reader) error {
	if err := t.ew.WriteHeader(h); err != nil {
		return fmt.Errorf("writing %q: %w", h.Name, err)
	}
	t.stats.Entries++
	switch h.Typeflag {
	case tar.TypeReg:
		t.stats.Files++
		if h.Size > 0 {
			n, err := io.CopyBuffer(t.ew, io.LimitReader(readSide{content}, h.Size), *t.bp)
			t.stats.Bytes += n
			if err != nil {
				return err
			}
			if n != h.Size {
				return io.ErrUnexpectedEOF
			}
		}
	case tar.TypeDir:
		t.stats.Dirs++
	case tar.TypeSymlink:
		t.stats.Symlinks++
	case tar.TypeLink:
		t.stats.Hardlinks++
	}
	return nil
}

// close writes the tar trailer and flushes (an EntryWriter's owner closes it).
func (t *tarOut) close() error {
	if t.tw == nil {
		return nil
	}
	if err := t.tw.Close(); err != nil {
		return fmt.Errorf("writing tar trailer: %w", err)
	}
	return t.bw.Flush()
}

// emit is pass 2: stream every layer again, base first, writing what plan decided.
func (f *flattener) emit(ctx context.Context, out *tarOut) error {
	write := out.write
	buf := *out.bp
	var spoolFile *os.File
	var spoolOff int64
	defer func() {
		if spoolFile != nil {
			spoolFile.Close()
		}
	}()
	for _, l := range f.im.layers {
		if err := f.emitLayer(ctx, l, write, func(ino *inode, h *tar.Header, tr io.Reader) error {
			ino.spool.hdr = outHeader(h, outType(h))
			if ino.spool.hdr.Typeflag != tar.TypeReg || h.Size == 0 {
				return nil
			}
			if spoolFile == nil {
				var err error
				if spoolFile, err = os.CreateTemp(f.o.TempDir, "lode-oci-spool-*"); err != nil {
					return fmt.Errorf("spooling hard-linked file: %w", err)
				}
				os.Remove(spoolFile.Name()) // unlinked: nothing to clean up if we crash
			}
			n, err := io.CopyBuffer(spoolFile, readSide{tr}, buf)
			ino.spool.off, ino.spool.size = spoolOff, n
			spoolOff += n
			return err
		}, func(ino *inode, name string) error {
			h := *ino.spool.hdr
			h.Name = name
			return write(&h, io.NewSectionReader(spoolFile, ino.spool.off, ino.spool.size))
		}); err != nil {
			return err
		}
	}
	return out.close()
}

func (f *flattener) emitLayer(ctx context.Context, l *layer,
	write func(*tar.Header, io.Reader) error,
	spool func(*inode, *tar.Header, io.Reader) error,
	unspool func(*inode, string) error,
) error {
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
			return f.readErr(ctx, l, last, err)
		}
		last = h.Name
		r := ref{l.index, idx}
		for _, d := range f.dirs[r] {
			dh := *d.hdr
			dh.Name = pathOf(d)
			if err := write(&dh, nil); err != nil {
				return err
			}
		}
		if e := f.out[r]; e != nil {
			switch e.kind {
			case emitCopy:
				oh := outHeader(h, outType(h))
				oh.Name = e.name
				err = write(oh, tr)
			case emitLink:
				oh := outHeader(h, tar.TypeLink)
				oh.Name, oh.Linkname = e.name, e.link
				err = write(oh, nil)
			case emitFromSpool:
				err = unspool(e.ino, e.name)
			}
			if err != nil {
				return f.copyErr(ctx, l, h.Name, err)
			}
		}
		if ino := f.spool[r]; ino != nil {
			if err := spool(ino, h, tr); err != nil {
				return f.copyErr(ctx, l, h.Name, err)
			}
		}
	}
	return s.finish(last)
}

// readSide marks errors from reading an entry's content, so that copyErr can tell them from write errors.
type readSide struct{ r io.Reader }

type readError struct{ err error }

func (e readError) Error() string { return e.err.Error() }
func (e readError) Unwrap() error { return e.err }

func (r readSide) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = readError{err}
	}
	return n, err
}

// copyErr classifies an error met while copying an entry: short or corrupt input is ErrCorrupt.
func (f *flattener) copyErr(ctx context.Context, l *layer, name string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var re readError
	if errors.As(err, &re) || errors.Is(err, io.ErrUnexpectedEOF) {
		return f.entryErr(l, name, ErrCorrupt, err, "reading content")
	}
	return fmt.Errorf("layer %d (%s): %q: %w", l.index, shortDigest(l.digest), name, err)
}
