package fuse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

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
	// Debug logs every FUSE request (to Log, at debug level).
	Debug bool
}

func (o Options) withDefaults() Options {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.MaxRead <= 0 {
		o.MaxRead = 1 << 20
	}
	o.MaxRead = min(o.MaxRead, 1<<20)
	return o
}

// initTimeout bounds the wait for the kernel's INIT after mount(2).
const initTimeout = 10 * time.Second

// FileMount is a FUSE filesystem exposing one read-only regular file.
type FileMount struct {
	mnt, name string
	s         *session
	stopCtx   func() bool   // detaches ctx from the session
	done      chan struct{} // closed when the server has exited
	handed    chan struct{} // closed when the session went to another process
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
	fd, err := mountFUSE(mnt, o.MaxRead)
	if err != nil {
		return nil, err
	}
	s, err := newSession(fd, name, d, o)
	if err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		unix.Close(fd)
		return nil, fmt.Errorf("serving FUSE at %s: %w", mnt, err)
	}
	s.start()
	select {
	case <-s.inited:
	case <-s.readerDone:
		unix.Unmount(mnt, unix.MNT_DETACH)
		s.close()
		return nil, fmt.Errorf("serving FUSE at %s: the connection ended before INIT: %w", mnt, s.readerErr)
	case <-time.After(initTimeout):
		unix.Unmount(mnt, unix.MNT_DETACH) // ends the connection, and so the reader
		s.wait()
		s.close()
		return nil, fmt.Errorf("serving FUSE at %s: no INIT from the kernel within %v", mnt, initTimeout)
	}
	primePoll(filepath.Join(mnt, name))
	return newFileMount(ctx, mnt, s), nil
}

// primePoll has the kernel ask the new connection its one FUSE_POLL now,
// through poll(2) on a raw descriptor, so that the server's ENOSYS answer
// turns polling off for the connection. Otherwise the first os.Open of the
// file in this process would send it from epoll_ctl on the Go runtime's
// epoll instance, holding that instance and the caller's P while waiting
// for an answer that itself needs a P: with every other P blocked in the
// runtime's netpoll on the same instance, the process deadlocks. Best
// effort: if it fails, a later open asks instead.
func primePoll(path string) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	unix.Close(fd)
}

// newFileMount wraps a serving session.
func newFileMount(ctx context.Context, mnt string, s *session) *FileMount {
	m := &FileMount{mnt: mnt, name: s.name, s: s, done: make(chan struct{}), handed: make(chan struct{})}
	live.Store(mnt, struct{}{})
	m.stopCtx = context.AfterFunc(ctx, s.cancelReads)
	go m.watch()
	return m
}

// watch closes done when the session ends for good: the connection ended
// (unmounted or aborted), or the session was handed over.
func (m *FileMount) watch() {
	select {
	case <-m.s.ended:
		m.s.handlers.Wait()
	case <-m.handed: // pause already waited for the handlers
	}
	m.stopCtx()
	m.s.cancelReads()
	m.s.close()
	live.Delete(m.mnt)
	close(m.done)
}

// pause stops serving for a handover: when it returns, every request
// taken from the kernel has been answered and none will be taken until
// resume. It fails if the connection has ended.
func (m *FileMount) pause() error {
	select {
	case <-m.done:
		return fmt.Errorf("handing over FUSE at %s: the server has exited", m.mnt)
	default:
	}
	if err := m.s.stop(); err != nil {
		return fmt.Errorf("handing over FUSE at %s: %w", m.mnt, err)
	}
	return nil
}

// resume serves again after a pause whose handover failed.
func (m *FileMount) resume() { m.s.start() }

// handedOver ends this side after a successful handover: the descriptor
// is closed here (the other process holds its own), nothing is unmounted.
func (m *FileMount) handedOver() {
	close(m.handed)
	<-m.done
}

// mountFUSE opens /dev/fuse (non-blocking, so a reader that is told to
// stop never takes a request: see session.next) and mounts it
// read-only at mnt with mount(2): lode runs as root, no fusermount.
func mountFUSE(mnt string, maxRead int) (int, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("opening /dev/fuse: %w", err)
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=%d,default_permissions,max_read=%d",
		fd, os.Geteuid(), os.Getegid(), maxRead)
	if err := unix.Mount("lode", mnt, "fuse.lode", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_RDONLY, data); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mounting FUSE at %s: %w", mnt, err)
	}
	return fd, nil
}

// ErrBadName reports a file name that is not a single path element.
var ErrBadName = errors.New("fuse: file name must be one path element")

// Path returns the served file's path, mnt/name.
func (m *FileMount) Path() string { return filepath.Join(m.mnt, m.name) }

// Dir returns the FUSE mount point.
func (m *FileMount) Dir() string { return m.mnt }

// Unmount cancels reads in flight and unmounts the FUSE filesystem. It
// fails with EBUSY while the file is open (a loop device over it, say).
// After a handover it does nothing.
func (m *FileMount) Unmount() error {
	select {
	case <-m.done:
		return nil
	default:
	}
	if err := unix.Unmount(m.mnt, 0); err != nil {
		return fmt.Errorf("unmounting FUSE at %s: %w", m.mnt, err)
	}
	m.s.cancelReads()
	<-m.done
	return nil
}

// Wait returns when the FUSE server has exited (unmounted from here or by
// another process, its connection aborted, or handed over).
func (m *FileMount) Wait() { <-m.done }

// Done is closed when the FUSE server has exited.
func (m *FileMount) Done() <-chan struct{} { return m.done }

// cancelReads makes every Device read, in flight or future, fail.
func (m *FileMount) cancelReads() { m.s.cancelReads() }
