package vm

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// cpio mode bits (the file type part of st_mode).
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeChar    = 0o020000
)

// cpioWriter writes a newc ("070701") cpio archive, the format the Linux
// kernel unpacks as an initramfs. Every entry is owned by root with mtime 0,
// so the same inputs give the same bytes.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
	n   int64
}

func newCPIOWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w} }

// entry is one archive member: a file (data), a directory, a symlink
// (data is the target) or a character device (rdev).
type entry struct {
	name         string
	mode         uint32 // type and permission bits
	data         []byte
	rmaj, rmin   uint32
	contentsFrom io.Reader // streamed instead of data when size > 0
	size         int64
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	var n int
	n, c.err = c.w.Write(b)
	c.n += int64(n)
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// add writes one member. Names are archive-relative ("init", "bin/sh").
func (c *cpioWriter) add(e entry) error {
	name := strings.TrimPrefix(path.Clean("/"+e.name), "/")
	if name == "" && e.name != "TRAILER!!!" {
		return fmt.Errorf("writing cpio entry %q: empty name", e.name)
	}
	if e.name == "TRAILER!!!" {
		name = e.name
	}
	size := int64(len(e.data))
	if e.contentsFrom != nil {
		size = e.size
	}
	if size > 0xffffffff {
		return fmt.Errorf("writing cpio entry %s: %d bytes is over the newc limit", name, size)
	}
	c.ino++
	nlink := uint32(1)
	if e.mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, e.mode, 0, 0, nlink, 0, size, 0, 0, e.rmaj, e.rmin, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
	if e.contentsFrom != nil {
		if c.err == nil {
			var n int64
			n, c.err = io.CopyN(c.w, e.contentsFrom, size)
			c.n += n
		}
	} else {
		c.write(e.data)
	}
	c.pad()
	if c.err != nil {
		return fmt.Errorf("writing cpio entry %s: %w", name, c.err)
	}
	return nil
}

// close writes the trailer. The writer underneath is not closed.
func (c *cpioWriter) close() error {
	return c.add(entry{name: "TRAILER!!!"})
}
