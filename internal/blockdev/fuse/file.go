package fuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lode-dev/lode/internal/blockdev"
)

// Options tune the FUSE file server. The zero value is usable.
type Options struct {
	// Log receives read errors and teardown events. Nil discards.
	Log *slog.Logger
	// MaxRead is the largest FUSE READ the kernel sends (default 1 MiB, the
	// kernel's ceiling): fewer, larger requests for sequential loop I/O.
	MaxRead int
	// PageCache keeps the FUSE file's own page cache (FOPEN_KEEP_CACHE)
	// instead of the default direct I/O. Off by default: under a loop mount
	// ext4 already caches every page, so a second copy only costs memory.
	PageCache bool
	// Debug logs every FUSE request (go-fuse's debug output, to Log).
	Debug bool
}

func (o Options) withDefaults() Options {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.MaxRead <= 0 {
		o.MaxRead = 1 << 20
	}
	return o
}

// FileMount is a FUSE filesystem exposing one read-only regular file.
type FileMount struct {
	mnt, name string
	server    *gofuse.Server
	cancel    context.CancelFunc // cancels every Device read in flight
	done      chan struct{}      // closed when the server loop exits
}

// ServeFile mounts at mnt (an existing directory) a FUSE filesystem holding
// one read-only regular file, name, whose bytes are d's. Reads of the file
// call d.ReadAt with a context that ends when the kernel interrupts the
// request, when ctx ends, or when the mount is unmounted; a Device error
// reaches the reader as EIO. ctx bounds only the life of the server: when
// it ends, reads fail with EIO (the mount stays until Unmount).
func ServeFile(ctx context.Context, mnt, name string, d blockdev.Device, o Options) (*FileMount, error) {
	o = o.withDefaults()
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return nil, fmt.Errorf("serving FUSE file %q: %w", name, ErrBadName)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	file := &fileNode{d: d, ctx: rctx, log: o.Log, pageCache: o.PageCache}
	root := &rootNode{name: name, file: file}
	long := time.Hour // the file never changes while mounted
	opts := &fs.Options{
		EntryTimeout: &long,
		AttrTimeout:  &long,
		MountOptions: gofuse.MountOptions{
			FsName:       "lode",
			Name:         "lode",
			DirectMount:  true, // we are root: mount(2) directly, no fusermount
			MaxWrite:     o.MaxRead,
			MaxReadAhead: o.MaxRead,
			// Loop issues reads from a kernel worker; answering several at
			// once keeps the pipe full.
			MaxBackground: 64,
			Debug:         o.Debug,
			// Splicing a 1 MiB read needs a pipe larger than the default
			// 1 MiB; go-fuse would log and fall back to a copy every time.
			DisableSplice: true,
			Options:       []string{"ro", "default_permissions"},
		},
		UID: 0, GID: 0,
	}
	if o.Debug {
		opts.MountOptions.Logger = slog.NewLogLogger(o.Log.Handler(), slog.LevelDebug)
	}
	server, err := fs.Mount(mnt, root, opts)
	if err != nil {
		stop()
		cancel()
		return nil, fmt.Errorf("mounting FUSE at %s: %w", mnt, err)
	}
	m := &FileMount{mnt: mnt, name: name, server: server, cancel: cancel, done: make(chan struct{})}
	go func() {
		server.Wait()
		stop()
		cancel()
		close(m.done)
	}()
	return m, nil
}

// ErrBadName reports a file name that is not a single path element.
var ErrBadName = errors.New("fuse: file name must be one path element")

// Path returns the served file's path, mnt/name.
func (m *FileMount) Path() string { return filepath.Join(m.mnt, m.name) }

// Dir returns the FUSE mount point.
func (m *FileMount) Dir() string { return m.mnt }

// Unmount cancels reads in flight and unmounts the FUSE filesystem. It
// fails with EBUSY while the file is open (a loop device over it, say).
func (m *FileMount) Unmount() error {
	select {
	case <-m.done:
		return nil
	default:
	}
	if err := m.server.Unmount(); err != nil {
		return fmt.Errorf("unmounting FUSE at %s: %w", m.mnt, err)
	}
	m.cancel()
	<-m.done
	return nil
}

// Wait returns when the FUSE server has exited (unmounted from here or by
// another process, or its connection aborted).
func (m *FileMount) Wait() { <-m.done }

// Done is closed when the FUSE server has exited.
func (m *FileMount) Done() <-chan struct{} { return m.done }

// cancelReads makes every Device read, in flight or future, fail.
func (m *FileMount) cancelReads() { m.cancel() }

type rootNode struct {
	fs.Inode
	name string
	file *fileNode
}

var _ fs.NodeOnAdder = (*rootNode)(nil)

func (r *rootNode) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, r.file, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild(r.name, ch, false)
}

func (r *rootNode) Getattr(ctx context.Context, fh fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	return 0
}

type fileNode struct {
	fs.Inode
	d         blockdev.Device
	ctx       context.Context // ends on unmount
	log       *slog.Logger
	pageCache bool
}

var (
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeOpener    = (*fileNode)(nil)
	_ fs.NodeReader    = (*fileNode)(nil)
)

func (f *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	size := f.d.Size()
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	out.Size = uint64(size)
	out.Blocks = uint64(size+511) / 512
	out.Blksize = 4096
	return 0
}

func (f *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if f.pageCache {
		return nil, gofuse.FOPEN_KEEP_CACHE, 0
	}
	return nil, gofuse.FOPEN_DIRECT_IO, 0
}

func (f *fileNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	size := f.d.Size()
	if off >= size {
		return gofuse.ReadResultData(nil), 0
	}
	if int64(len(dest)) > size-off {
		dest = dest[:size-off]
	}
	// The read ends when the kernel interrupts it or the mount goes away.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(f.ctx, cancel)
	defer stop()
	n, err := f.d.ReadAt(rctx, dest, off)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(dest)) {
		f.log.Warn("reading device for FUSE", slog.Int64("offset", off), slog.Int("length", len(dest)), slog.Any("err", err))
		return nil, syscall.EIO
	}
	return gofuse.ReadResultData(dest[:n]), 0
}
