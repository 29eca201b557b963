package ext4img

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
)

// The chunk-aligned layout (Options.Align).
//
// tar2ext4 writes every file's data at the next free block, in stream order,
// and offers no control of placement. Align gets it anyway: it follows the
// writer's allocation block by block (alignedLayout mirrors hcsshim's
// compactext4: data starts after the descriptor reservation, small files
// inline, an extended-attribute block before a file's data when its
// attributes overflow the inode, extent blocks after a large file's data) and,
// before each large file, inserts a zero-filled padding file whose blocks
// bring the large file's first block onto the boundary. Once tar2ext4 is
// done, removePads unlinks the padding files and frees their blocks and
// inodes, so the image holds exactly the input's files; the freed blocks stay
// zero. A misprediction costs alignment, never correctness: the image is a
// valid ext4 of the input either way, and TestAlignedLayout checks the
// prediction against the written image.

// padDir and padPrefix name the padding files while the image is written.
// lost+found is the one directory every image has and no image fills.
const (
	padDir    = "lost+found"
	padPrefix = ".lode-align-"
)

// ErrReservedName is returned for an input entry that the aligned layout
// would take for one of its padding files.
var ErrReservedName = errors.New("name reserved by the aligned layout")

// compactext4's layout constants (hcsshim ext4/internal/compactext4).
const (
	blockSize          = 4096
	blocksPerGroup     = blockSize * 8
	groupsPerDescBlock = blockSize / groupDescSize
	inodeExtraSize     = 256 - 152 // inode size − fields through crtime_extra
	xattrInodeLeft     = inodeExtraSize - 8
	xattrBlockLeft     = blockSize - 36
	inlineDataMax      = 60 + inodeExtraSize - (8 + 16 + 4)
	smallSymlink       = 59
	blocksPerExtent    = 0x8000
	extentsPerBlock    = blockSize/12 - 1
)

// xattrPrefixes are the name prefixes ext4 stores as an index byte
// (compactext4's table, in its order).
var xattrPrefixes = []string{"system.posix_acl_access", "system.posix_acl_default", "system.richacl", "system.", "user.", "trusted.", "security."}

// simInode is what the layout needs to know of a written inode.
type simInode struct {
	dir        bool
	extents    bool // has data blocks
	xattrBlock bool
	links      int
	inline     map[string]string // xattrs kept in the inode
}

// alignedLayout follows compactext4's block allocation for one image.
type alignedLayout struct {
	pos    int64 // next free block
	inline bool
	nodes  map[string]*simInode
	align  int64 // boundary in blocks
	min    int64 // smallest file to align, bytes
	pads   int
}

func newAlignedLayout(o Options) *alignedLayout {
	maxBlocks := (maxDiskSize-1)/blockSize + 1
	maxGroups := (maxBlocks-1)/blocksPerGroup + 1
	gdBlocks := (maxGroups-1)/groupsPerDescBlock + 1
	l := &alignedLayout{
		pos:    1 + gdBlocks,
		inline: o.InlineData,
		nodes:  map[string]*simInode{"": {dir: true, links: 2}, padDir: {dir: true, links: 2}},
		align:  o.Align / blockSize,
		min:    o.AlignMin,
	}
	if l.min <= 0 {
		l.min = o.Align
	}
	return l
}

func cleanName(name string) string {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	return name
}

// makeParents mirrors Writer.MakeParents: missing parents become plain
// directories, which take no block.
func (l *alignedLayout) makeParents(name string) {
	dir := path.Dir(name)
	for dir != "." && dir != "/" && dir != "" {
		if _, ok := l.nodes[dir]; !ok {
			l.nodes[dir] = &simInode{dir: true, links: 1}
		}
		dir = path.Dir(dir)
	}
}

// xattrLen is the room an attribute takes in an inode or block.
func xattrLen(name, value string) int {
	for _, p := range xattrPrefixes {
		if strings.HasPrefix(name, p) {
			name = name[len(p):]
			break
		}
	}
	return (len(name)+3)&^3 + 16 + (len(value)+3)&^3
}

// xattrsInBlock mirrors makeInode's placement of attributes: the inline
// data's own attribute first, then the inode's earlier inline attributes
// merged with the new ones, by name, each in the inode if it fits, else in
// the block. It returns what stays in the inode and whether the block is
// used.
func xattrsInBlock(node *simInode, inlineFile bool, size int64, xattrs map[string]string) (map[string]string, bool) {
	if len(xattrs) == 0 && (node == nil || len(node.inline) == 0) {
		return nil, false // no attributes: nothing to place (most entries; this runs for each)
	}
	inodeLeft, blockLeft := xattrInodeLeft, xattrBlockLeft
	if inlineFile {
		inodeLeft -= xattrLen("system.data", strings.Repeat("\x00", int(max(size-60, 0))))
	}
	merged := map[string]string{}
	if node != nil {
		for k, v := range node.inline {
			merged[k] = v
		}
	}
	for k, v := range xattrs {
		merged[k] = v
	}
	names := make([]string, 0, len(merged))
	for k := range merged {
		names = append(names, k)
	}
	sort.Strings(names)
	inInode := map[string]string{}
	block := false
	for _, k := range names {
		n := xattrLen(k, merged[k])
		switch {
		case inodeLeft >= n:
			inInode[k] = merged[k]
			inodeLeft -= n
		case blockLeft >= n:
			block = true
			blockLeft -= n
		}
	}
	return inInode, block
}

// create mirrors Writer.Create (and makeInode) for hdr.
func (l *alignedLayout) create(name string, hdr *tar.Header, xattrs map[string]string) {
	node, reuse, ok := l.target(name, hdr)
	if !ok {
		return // tar2ext4 fails on these; nothing to follow
	}
	regular, inlineFile := l.kind(hdr)
	inInode, block := xattrsInBlock(node, inlineFile, hdr.Size, xattrs)
	if !reuse {
		node = &simInode{dir: hdr.Typeflag == tar.TypeDir}
		l.nodes[name] = node
	}
	node.inline = inInode
	if block && !node.xattrBlock {
		node.xattrBlock = true
		l.pos++
	}
	node.links++
	switch {
	case regular && !inlineFile:
		l.data(node, hdr.Size)
	case hdr.Typeflag == tar.TypeSymlink && len(hdr.Linkname) > smallSymlink:
		l.data(node, int64(len(hdr.Linkname)))
	}
}

// target is the inode Create would reuse for name (nil for a new one), and
// whether tar2ext4 accepts the entry at all.
func (l *alignedLayout) target(name string, hdr *tar.Header) (node *simInode, reuse, ok bool) {
	isDir := hdr.Typeflag == tar.TypeDir
	node = l.nodes[name]
	if node == nil {
		return nil, false, true
	}
	if node.dir != isDir {
		return nil, false, false
	}
	if node.dir {
		return node, true, true
	}
	if node.links < 2 {
		return node, true, !node.extents
	}
	return nil, false, true
}

// kind says whether hdr becomes a regular file (tar2ext4 makes one of any
// type it does not know) and whether its data is stored in the inode.
func (l *alignedLayout) kind(hdr *tar.Header) (regular, inline bool) {
	switch hdr.Typeflag {
	case tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
		return false, false
	}
	return true, l.inline && hdr.Size <= inlineDataMax
}

// data follows a file's data blocks and its extent tree.
func (l *alignedLayout) data(node *simInode, size int64) {
	if size == 0 {
		return
	}
	blocks := (size + blockSize - 1) / blockSize
	l.pos += blocks
	node.extents = true
	if extents := (blocks + blocksPerExtent - 1) / blocksPerExtent; extents > 4 {
		l.pos += extents/extentsPerBlock + 1
	}
}

// padBefore is how many blocks of padding put the data of the entry hdr
// on the boundary, or 0.
func (l *alignedLayout) padBefore(name string, hdr *tar.Header, xattrs map[string]string) int64 {
	if l.align <= 1 || hdr.Typeflag != tar.TypeReg || hdr.Size < l.min || hdr.Size <= inlineDataMax {
		return 0
	}
	node, _, ok := l.target(name, hdr)
	if !ok {
		return 0
	}
	start := l.pos
	if _, block := xattrsInBlock(node, false, hdr.Size, xattrs); block && (node == nil || !node.xattrBlock) {
		start++ // the attribute block goes before the data
	}
	return (l.align - start%l.align) % l.align
}

// paxXattrs are the extended attributes tar2ext4 takes from a header.
func paxXattrs(hdr *tar.Header) map[string]string {
	var x map[string]string
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if x == nil {
				x = map[string]string{}
			}
			x[name] = v
		}
	}
	return x
}

var zeroBlock [blockSize]byte

// alignStreamBuf is the size of alignStream's read and write buffers. Both
// ends are pipes: unbuffered, every 512-byte tar header and every 4 KiB
// padding block was one hand-off between goroutines, and io.Copy allocated
// a 32 KiB buffer per file (together ~10% of an aligned build's CPU).
const alignStreamBuf = 1 << 20

// aligner writes entries through a tar.Writer, inserting before each large
// regular file the padding file that starts its data on the boundary.
type aligner struct {
	l  *alignedLayout
	tw *tar.Writer
}

func newAligner(tw *tar.Writer, o Options) *aligner { return &aligner{l: newAlignedLayout(o), tw: tw} }

// WriteHeader writes hdr, after its padding file if it needs one.
func (a *aligner) WriteHeader(hdr *tar.Header) error {
	l := a.l
	name := cleanName(hdr.Name)
	if strings.HasPrefix(name, padDir+"/"+padPrefix) {
		return fmt.Errorf("%s: %w", hdr.Name, ErrReservedName)
	}
	l.makeParents(name)
	xattrs := paxXattrs(hdr)
	if pad := l.padBefore(name, hdr, xattrs); pad > 0 {
		l.pads++
		ph := &tar.Header{
			Typeflag: tar.TypeReg, Name: fmt.Sprintf("%s/%s%06d", padDir, padPrefix, l.pads),
			Mode: 0o600, Size: pad * blockSize, ModTime: time.Unix(0, 0), Format: tar.FormatPAX,
		}
		if err := a.tw.WriteHeader(ph); err != nil {
			return err
		}
		for range pad {
			if _, err := a.tw.Write(zeroBlock[:]); err != nil {
				return err
			}
		}
		l.create(cleanName(ph.Name), ph, nil)
	}
	if hdr.Typeflag == tar.TypeLink {
		if n := l.nodes[cleanName(hdr.Linkname)]; n != nil {
			n.links++
			l.nodes[name] = n
		}
	} else {
		l.create(name, hdr, xattrs)
	}
	if err := a.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", hdr.Name, err)
	}
	return nil
}

// Write writes the current entry's content.
func (a *aligner) Write(p []byte) (int, error) { return a.tw.Write(p) }

// alignStream copies the tar stream in to w, inserting before each large
// regular file the padding file that starts its data on the boundary
// (aligner). It returns how many padding files it wrote.
func alignStream(ctx context.Context, in io.Reader, w io.Writer, o Options) (int, error) {
	tr := tar.NewReader(bufio.NewReaderSize(in, alignStreamBuf))
	bw := bufio.NewWriterSize(w, alignStreamBuf)
	tw := tar.NewWriter(bw)
	a := newAligner(tw, o)
	buf := make([]byte, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("reading the flattened stream: %w", err)
		}
		hdr.Format = tar.FormatPAX
		if err := a.WriteHeader(hdr); err != nil {
			return 0, err
		}
		if _, err := io.CopyBuffer(tw, tr, buf); err != nil {
			return 0, fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return a.l.pads, nil
}
