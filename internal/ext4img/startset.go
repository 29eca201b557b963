package ext4img

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
)

// The build-time start set (issue #21): the parts of an image that every
// start reads, found from the finished image, so that a worker can fetch
// them in parallel the moment it opens the image (manifest.Hints) instead of
// one page fault after another.
//
// It is the ext4 metadata a mount and a path walk read — the superblock,
// the group descriptors, the bitmaps, the used part of every inode table,
// every directory's blocks and extent-tree blocks — and, for each file the
// start runs (the image's entrypoint), the file itself, its ELF interpreter,
// and the shared libraries it names (DT_NEEDED, transitively), resolved
// inside the image the way the dynamic loader would (RUNPATH/RPATH,
// ld.so.conf, the default directories), plus the loader's cache. The reader
// is hand-written (pads.go's fsys) for the images tar2ext4 writes; no Go
// ext4 library reads them with block addresses.

// Range is a byte range of the image in the start set.
type Range struct {
	Off, Len int64
	What     string // "metadata", or the file's path in the image
}

// StartSetOptions tune StartSet.
type StartSetOptions struct {
	// Files are the programs a start runs (the entrypoint): absolute paths,
	// or names looked up in PATH (Env's, or the usual default).
	Files []string
	Env   []string
	// Data are files every start reads whole when the image has them
	// (the runtime's /etc/passwd and /etc/group); missing ones are skipped.
	Data []string
	// MaxFileBytes caps the bytes of one file in the set (default 32 MiB):
	// a huge library is rarely read whole at a start.
	MaxFileBytes int64
}

// ErrNotFound is returned for a start file the image does not hold.
var ErrNotFound = errors.New("not in the image")

// StartSet returns the ranges of the image in r (a tar2ext4 image) that a
// start reads: metadata first, in the order a mount reads it, then each
// start file and its ELF closure. A start file that is missing, not ELF, or
// static is no error: it adds what it has (missing: nothing; a script or a
// static binary: itself; a missing interpreter or library: the rest), and
// each such case is listed in the returned notes.
func StartSet(r io.ReaderAt, o StartSetOptions) ([]Range, []string, error) {
	if o.MaxFileBytes <= 0 {
		o.MaxFileBytes = 32 << 20
	}
	f, err := openFsys(readOnly{r})
	if err != nil {
		return nil, nil, fmt.Errorf("start set: %w", err)
	}
	s := &startSet{f: f, o: o, seenFile: map[uint32]bool{}}
	if err := s.metadata(); err != nil {
		return nil, nil, fmt.Errorf("start set: %w", err)
	}
	for _, p := range o.Data {
		if n, node, err := s.lookup(p); err == nil && le.Uint16(node[inodeMode:])&modeTypeMask == modeReg && !s.seenFile[n] {
			s.seenFile[n] = true
			s.fileBlocks(node, o.MaxFileBytes, p)
		}
	}
	for _, p := range o.Files {
		s.program(p)
	}
	return s.ranges, s.notes, nil
}

type startSet struct {
	f        *fsys
	o        StartSetOptions
	ranges   []Range
	notes    []string
	seenFile map[uint32]bool
	ldPath   []string // the loader's search directories, once read
}

func (s *startSet) add(blk, n uint32, what string) {
	s.ranges = append(s.ranges, Range{Off: int64(blk) * blockSize, Len: int64(n) * blockSize, What: what})
}

func (s *startSet) note(format string, a ...any) {
	s.notes = append(s.notes, fmt.Sprintf(format, a...))
}

const (
	inodeFlags      = 32
	flagExtents     = 0x80000
	flagInline      = 0x10000000
	inodeMode       = 0
	inodeSizeLo     = 4
	inodeSizeHi     = 108
	modeTypeMask    = 0xF000
	modeDir         = 0x4000
	modeReg         = 0x8000
	modeLink        = 0xA000
	sbFirstDataBlk  = 20
	sbBlocksCountLo = 4
)

// metadata adds the superblock and descriptors, each group's bitmaps and
// the used part of its inode table, and every directory's blocks.
func (s *startSet) metadata() error {
	f := s.f
	blocks := le.Uint32(f.sb[sbBlocksCountLo:])
	groups := (blocks - le.Uint32(f.sb[sbFirstDataBlk:]) + f.bpg - 1) / f.bpg
	s.add(0, 1, "metadata")
	s.add(gdtBlock, (groups*groupDescSize+blockSize-1)/blockSize, "metadata")
	for g := range groups {
		gd, _, err := f.groupDesc(g)
		if err != nil {
			return err
		}
		ib := le.Uint32(gd[gdInodeBitmapLow:])
		s.add(le.Uint32(gd[gdBlockBitmap:]), 1, "metadata")
		s.add(ib, 1, "metadata")
		bm := make([]byte, blockSize)
		if _, err := f.rw.ReadAt(bm, int64(ib)*blockSize); err != nil {
			return fmt.Errorf("reading inode bitmap of group %d: %w", g, err)
		}
		used := uint32(0) // inodes up to the last one in use
		for i := min(f.ipg, blockSize*8); i > 0; i-- {
			if bm[(i-1)/8]&(1<<((i-1)%8)) != 0 {
				used = i
				break
			}
		}
		if used > 0 {
			n := (int64(used)*f.inodeSize + blockSize - 1) / blockSize
			s.add(le.Uint32(gd[gdInodeTable:]), uint32(n), "metadata")
		}
	}
	return s.dirs(rootInode, 0)
}

// dirs adds the blocks of directory n and of every directory under it.
func (s *startSet) dirs(n uint32, depth int) error {
	if depth > 256 {
		return fmt.Errorf("directory inode %d: tree deeper than 256", n)
	}
	node, err := s.f.readInode(n)
	if err != nil {
		return err
	}
	if err := s.fileBlocks(node, 1<<62, "metadata"); err != nil {
		return fmt.Errorf("directory inode %d: %w", n, err)
	}
	ents, err := s.entries(node)
	if err != nil {
		return fmt.Errorf("directory inode %d: %w", n, err)
	}
	for _, e := range ents {
		if e.typ == 2 && e.name != "." && e.name != ".." { // a directory
			if err := s.dirs(e.inode, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// fileBlocks adds the extent-tree blocks of an inode and up to max bytes
// of its data blocks; an inline or block-mapped-free inode adds nothing.
func (s *startSet) fileBlocks(node []byte, max int64, what string) error {
	if le.Uint32(node[inodeFlags:])&flagExtents == 0 {
		return nil // inline data or a fast symlink: all in the inode
	}
	exts, err := s.f.extentNode(node[inodeBlockArray:inodeBlockArray+60], 0, func(blk uint32) { s.add(blk, 1, what) })
	if err != nil {
		return err
	}
	limit := (max + blockSize - 1) / blockSize
	for _, e := range exts {
		if int64(e.logical) >= limit {
			continue
		}
		s.add(e.start, uint32(min(int64(e.len), limit-int64(e.logical))), what)
	}
	return nil
}

// contents reads up to max bytes of an inode's data.
func (s *startSet) contents(node []byte, max int64) ([]byte, error) {
	size := int64(le.Uint32(node[inodeSizeLo:])) | int64(le.Uint32(node[inodeSizeHi:]))<<32
	size = min(size, max)
	if size < 0 {
		return nil, errors.New("bad size")
	}
	if le.Uint32(node[inodeFlags:])&flagExtents == 0 {
		// In the inode: i_block, then (inline data) the system.data xattr,
		// which this reader does not follow; enough for names and symlinks.
		return bytes.Clone(node[inodeBlockArray : inodeBlockArray+min(size, 60)]), nil
	}
	exts, err := s.f.extents(node)
	if err != nil {
		return nil, err
	}
	out := make([]byte, size)
	for _, e := range exts {
		lo := int64(e.logical) * blockSize
		if lo >= size {
			continue
		}
		hi := min(size, lo+int64(e.len)*blockSize)
		if _, err := s.f.rw.ReadAt(out[lo:hi], int64(e.start)*blockSize); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// entries lists a directory's entries (block-mapped or inline).
func (s *startSet) entries(node []byte) ([]dirent, error) {
	var data []byte
	if le.Uint32(node[inodeFlags:])&flagInline != 0 {
		// Inline directory: the parent's inode (4 bytes), then entries in
		// the rest of i_block.
		b := node[inodeBlockArray : inodeBlockArray+60]
		ents := []dirent{{inode: le.Uint32(b), typ: 2, name: ".."}}
		more, err := parseDirents(b[4:])
		return append(ents, more...), err
	}
	data, err := s.contents(node, 1<<62)
	if err != nil {
		return nil, err
	}
	var ents []dirent
	for off := 0; off+blockSize <= len(data); off += blockSize {
		more, err := parseDirents(data[off : off+blockSize])
		if err != nil {
			return nil, err
		}
		ents = append(ents, more...)
	}
	return ents, nil
}

func parseDirents(b []byte) ([]dirent, error) {
	var ents []dirent
	for off := 0; off+8 <= len(b); {
		ino, rl, nl := le.Uint32(b[off:]), int(le.Uint16(b[off+4:])), int(b[off+6])
		if rl < 8 || off+rl > len(b) || 8+nl > rl {
			return nil, fmt.Errorf("bad directory entry at %d", off)
		}
		if ino != 0 {
			ents = append(ents, dirent{inode: ino, typ: b[off+7], name: string(b[off+8 : off+8+nl])})
		}
		off += rl
	}
	return ents, nil
}

// lookup resolves an absolute path in the image, following symlinks, and
// returns the inode number and the inode.
func (s *startSet) lookup(p string) (uint32, []byte, error) {
	return s.walk(p, 0)
}

func (s *startSet) walk(p string, links int) (uint32, []byte, error) {
	if links > 40 {
		return 0, nil, fmt.Errorf("%s: too many symlinks", p)
	}
	n := uint32(rootInode)
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	dir := "/"
	for i, name := range parts {
		if name == "" {
			continue
		}
		node, err := s.f.readInode(n)
		if err != nil {
			return 0, nil, err
		}
		ents, err := s.entries(node)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: %w", dir, err)
		}
		k := slices.IndexFunc(ents, func(e dirent) bool { return e.name == name })
		if k < 0 {
			return 0, nil, fmt.Errorf("%s: %w", p, ErrNotFound)
		}
		next := ents[k].inode
		child, err := s.f.readInode(next)
		if err != nil {
			return 0, nil, err
		}
		if le.Uint16(child[inodeMode:])&modeTypeMask == modeLink {
			target, err := s.contents(child, 4096)
			if err != nil {
				return 0, nil, fmt.Errorf("reading symlink %s: %w", path.Join(dir, name), err)
			}
			s.fileBlocks(child, 4096, path.Join(dir, name))
			t := string(target)
			if !path.IsAbs(t) {
				t = path.Join(dir, t)
			}
			return s.walk(path.Join(append([]string{t}, parts[i+1:]...)...), links+1)
		}
		n, dir = next, path.Join(dir, name)
	}
	node, err := s.f.readInode(n)
	return n, node, err
}

// defaultPath is PATH when the image's environment sets none (the one
// container runtimes use).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// program adds a start file and its ELF closure.
func (s *startSet) program(p string) {
	if !strings.Contains(p, "/") {
		search := defaultPath
		for _, kv := range s.o.Env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				search = v
			}
		}
		for _, d := range strings.Split(search, ":") {
			if _, node, err := s.lookup(path.Join(d, p)); err == nil && le.Uint16(node[inodeMode:])&modeTypeMask == modeReg {
				p = path.Join(d, p)
				break
			}
		}
	}
	if !path.IsAbs(p) {
		s.note("start file %s: not found in PATH", p)
		return
	}
	s.elf(p, nil, 0)
}

// elf adds file p and, if it is a dynamic ELF, its interpreter and needed
// libraries (searched in rpath first).
func (s *startSet) elf(p string, rpath []string, depth int) bool {
	n, node, err := s.lookup(p)
	if err != nil || le.Uint16(node[inodeMode:])&modeTypeMask != modeReg {
		if err == nil {
			err = errors.New("not a regular file")
		}
		if depth == 0 {
			s.note("start file %s: %v", p, err)
		}
		return false
	}
	if s.seenFile[n] {
		return true
	}
	s.seenFile[n] = true
	if err := s.fileBlocks(node, s.o.MaxFileBytes, p); err != nil {
		s.note("%s: %v", p, err)
		return true
	}
	data, err := s.contents(node, s.o.MaxFileBytes)
	if err != nil {
		s.note("%s: %v", p, err)
		return true
	}
	ef, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return true // a script, or not an executable: the file alone
	}
	defer ef.Close()
	for _, prog := range ef.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b, err := io.ReadAll(prog.Open())
		interp := strings.TrimRight(string(b), "\x00")
		if err != nil || !s.elf(interp, nil, depth+1) {
			s.note("%s: ELF interpreter %q not in the image", p, interp)
		}
	}
	libs, err := ef.ImportedLibraries()
	if err != nil || len(libs) == 0 {
		return true // static
	}
	if depth == 0 {
		s.elf("/etc/ld.so.cache", nil, depth+1)
	}
	var own []string
	for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
		vals, _ := ef.DynString(tag)
		for _, v := range vals {
			for _, d := range strings.Split(v, ":") {
				own = append(own, strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", path.Dir(p)), "$ORIGIN", path.Dir(p)))
			}
		}
	}
	own = append(own, rpath...)
	for _, lib := range libs {
		found := false
		for _, d := range append(own, s.searchPath(ef.Machine)...) {
			if s.elf(path.Join(d, lib), own, depth+1) {
				found = true
				break
			}
		}
		if !found {
			s.note("%s: library %s not in the image", p, lib)
		}
	}
	return true
}

// searchPath is the loader's directories: ld.so.conf (with its includes),
// then the multiarch and default ones.
func (s *startSet) searchPath(m elf.Machine) []string {
	if s.ldPath != nil {
		return s.ldPath
	}
	s.ldPath = s.ldConf("/etc/ld.so.conf", 0)
	switch m {
	case elf.EM_X86_64:
		s.ldPath = append(s.ldPath, "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")
	case elf.EM_AARCH64:
		s.ldPath = append(s.ldPath, "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
	}
	s.ldPath = append(s.ldPath, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
	return s.ldPath
}

func (s *startSet) ldConf(p string, depth int) []string {
	if depth > 8 {
		return nil
	}
	_, node, err := s.lookup(p)
	if err != nil || le.Uint16(node[inodeMode:])&modeTypeMask != modeReg {
		return nil
	}
	data, err := s.contents(node, 1<<20)
	if err != nil {
		return nil
	}
	var dirs []string
	for _, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "#")
		line = strings.TrimSpace(line)
		if pat, ok := strings.CutPrefix(line, "include"); ok {
			pat = strings.TrimSpace(pat)
			if !path.IsAbs(pat) {
				pat = path.Join(path.Dir(p), pat)
			}
			_, dn, err := s.lookup(path.Dir(pat))
			if err != nil {
				continue
			}
			ents, err := s.entries(dn)
			if err != nil {
				continue
			}
			var names []string
			for _, e := range ents {
				if ok, _ := path.Match(path.Base(pat), e.name); ok {
					names = append(names, e.name)
				}
			}
			slices.Sort(names)
			for _, nm := range names {
				dirs = append(dirs, s.ldConf(path.Join(path.Dir(pat), nm), depth+1)...)
			}
			continue
		}
		if path.IsAbs(line) {
			dirs = append(dirs, line)
		}
	}
	return dirs
}

// readOnly lets fsys read an image it must not write.
type readOnly struct{ io.ReaderAt }

func (readOnly) Read([]byte) (int, error)           { return 0, errors.ErrUnsupported }
func (readOnly) Write([]byte) (int, error)          { return 0, errors.ErrUnsupported }
func (readOnly) WriteAt([]byte, int64) (int, error) { return 0, errors.ErrUnsupported }
func (readOnly) Seek(int64, int) (int64, error)     { return 0, errors.ErrUnsupported }

// Chunks turns ranges into the chunk indexes they touch, in the order of
// first touch, each once: what manifest.Hints holds.
func Chunks(rs []Range, chunkSize, imageSize int64) []uint32 {
	var out []uint32
	seen := map[int64]bool{}
	for _, r := range rs {
		if r.Len <= 0 || r.Off >= imageSize {
			continue
		}
		end := min(r.Off+r.Len, imageSize)
		for c := r.Off / chunkSize; c <= (end-1)/chunkSize; c++ {
			if !seen[c] {
				seen[c] = true
				out = append(out, uint32(c))
			}
		}
	}
	return out
}
