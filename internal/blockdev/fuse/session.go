package fuse

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"syscall"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev"
)

// session.go is the FUSE server of the one-file filesystem: node 1 is the
// root directory, node 2 the file. Everything it answers is a function of
// the file's name and size, so a session carries no per-request or
// per-open state that a new process would need: that is what makes it
// possible to hand the /dev/fuse descriptor to another process (see
// handover.go).

const (
	rootNode = 1
	fileNode = 2
	// entryTTL is how long the kernel may cache names and attributes: the
	// file never changes while mounted.
	entryTTL = 3600
	// ourMaxWrite is the max_write we negotiate. Nothing is ever written
	// (the filesystem is read-only), and the kernel sizes the read buffer
	// it demands of us from it.
	ourMaxWrite   = 4096
	maxBackground = 64 // loop issues reads from kernel workers: keep several in flight
)

// initParams are the INIT results a session needs; a handed-over session
// gets them from the old process (the kernel sends INIT once).
type initParams struct {
	Minor    uint32 `json:"minor"`
	MaxWrite uint32 `json:"max_write"`
	MaxPages uint16 `json:"max_pages"`
	Flags    uint32 `json:"flags"`
}

// session serves one FUSE connection.
type session struct {
	fd   int // /dev/fuse, non-blocking
	efd  int // eventfd: readable when the reader must stop
	name string
	d    blockdev.Device
	size int64
	o    Options
	log  *slog.Logger

	initMu sync.Mutex
	init   initParams
	inited chan struct{} // closed once INIT is answered (or the session was adopted)

	rctx    context.Context // Device reads; cancelled by cancelReads
	rcancel context.CancelFunc

	mu       sync.Mutex
	inflight map[uint64]context.CancelFunc // READs by unique, for INTERRUPT
	handlers sync.WaitGroup

	readerDone chan struct{} // closed when the reader loop returns
	readerErr  error         // why it returned (nil: stopped for a handover)
	ended      chan struct{} // closed when the connection has ended (readerErr set)

}

// newSession serves fd, which it owns from here on (close closes it).
func newSession(fd int, name string, d blockdev.Device, o Options) (*session, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("making /dev/fuse non-blocking: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("creating the FUSE server's stop eventfd: %w", err)
	}
	s := &session{
		fd: fd, efd: efd, name: name, d: d, size: d.Size(), o: o, log: o.Log,
		inited:   make(chan struct{}),
		ended:    make(chan struct{}),
		inflight: map[uint64]context.CancelFunc{},
	}
	s.rctx, s.rcancel = context.WithCancel(context.Background())
	return s, nil
}

// start runs the reader loop.
func (s *session) start() {
	var b [8]byte
	unix.Read(s.efd, b[:]) // clear a stop signal of an earlier pause
	s.readerDone = make(chan struct{})
	go s.readLoop()
}

// close closes the descriptors; the reader must have returned.
func (s *session) close() {
	unix.Close(s.fd)
	unix.Close(s.efd)
}

// next waits until a request can be read or the reader must stop. The
// wait is poll(2) on both descriptors, not the runtime's poller: a
// process that opens the served file itself makes epoll_ctl send FUSE_POLL
// and wait for its answer while holding the epoll instance, which would
// deadlock a server whose reads wait in that same instance.
func (s *session) next() (stop bool, err error) {
	fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}, {Fd: int32(s.efd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("polling /dev/fuse: %w", err)
		}
		switch {
		case fds[1].Revents != 0:
			return true, nil
		case fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0:
			return false, syscall.ENODEV
		case fds[0].Revents&unix.POLLIN != 0:
			return false, nil
		}
	}
}

// readLoop reads requests until the connection ends or stop is called.
// Only this goroutine reads, so an INTERRUPT is always read after the READ
// it names has been registered.
func (s *session) readLoop() {
	defer close(s.readerDone)
	defer func() {
		if s.readerErr != nil {
			close(s.ended)
		}
	}()
	s.initMu.Lock()
	bufLen := max(8192, inHeaderLen+readInLen+int(max(s.init.MaxWrite, ourMaxWrite))) + 4096
	s.initMu.Unlock()
	buf := make([]byte, bufLen)
	for {
		stop, err := s.next()
		if stop {
			s.readerErr = nil
			return
		}
		n := 0
		if err == nil {
			n, err = unix.Read(s.fd, buf)
		}
		switch {
		case err == nil:
		case errors.Is(err, syscall.EAGAIN):
			continue // another reader of the description took it
		case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.EINTR):
			continue // the request was interrupted before we took it
		case errors.Is(err, syscall.ENODEV):
			s.readerErr = fmt.Errorf("FUSE connection of %s: %w", s.name, syscall.ENODEV)
			return
		default:
			s.readerErr = fmt.Errorf("reading /dev/fuse for %s: %w", s.name, err)
			s.log.Error("FUSE server stopped", slog.Any("err", err))
			return
		}
		req, err := parseRequest(buf[:n])
		if err != nil {
			s.log.Warn("bad FUSE request", slog.Any("err", err))
			if n >= inHeaderLen {
				if u := ne.Uint64(buf[8:]); u != 0 && !noReply(ne.Uint32(buf[4:])) {
					s.replyErr(u, syscall.EIO)
				}
			}
			continue
		}
		if s.o.Debug {
			s.log.Debug("FUSE request", slog.Uint64("op", uint64(req.op)), slog.Uint64("unique", req.unique),
				slog.Uint64("node", req.node), slog.Int64("offset", req.offset), slog.Uint64("size", uint64(req.size)))
		}
		s.dispatch(req)
	}
}

// stop makes the reader loop return without taking another request, then
// waits until every request already taken has been answered. Requests the
// kernel queues meanwhile stay queued for whoever reads the descriptor
// next. It returns the reader's error if the connection had already ended.
func (s *session) stop() error {
	var one [8]byte
	ne.PutUint64(one[:], 1)
	if _, err := unix.Write(s.efd, one[:]); err != nil {
		return fmt.Errorf("signalling the FUSE reader to stop: %w", err)
	}
	<-s.readerDone
	s.handlers.Wait()
	return s.readerErr
}

// wait returns when the reader loop has ended and every request is
// answered.
func (s *session) wait() {
	<-s.readerDone
	s.handlers.Wait()
}

// cancelReads makes every Device read, in flight or future, fail.
func (s *session) cancelReads() { s.rcancel() }

func (s *session) dispatch(r request) {
	switch r.op {
	case opInit:
		s.doInit(r)
	case opLookup:
		if r.node != rootNode || r.name != s.name {
			s.replyErr(r.unique, syscall.ENOENT)
			return
		}
		out := gofuse.EntryOut{NodeId: fileNode, Generation: 1, EntryValid: entryTTL, AttrValid: entryTTL, Attr: s.attr(fileNode)}
		s.reply(r.unique, appendStruct(nil, out))
	case opGetattr:
		if r.node != rootNode && r.node != fileNode {
			s.replyErr(r.unique, syscall.ENOENT)
			return
		}
		s.reply(r.unique, appendStruct(nil, gofuse.AttrOut{AttrValid: entryTTL, Attr: s.attr(r.node)}))
	case opOpen:
		switch {
		case r.node != fileNode:
			s.replyErr(r.unique, syscall.EISDIR)
		case r.flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0:
			s.replyErr(r.unique, syscall.EROFS)
		default:
			flags := uint32(gofuse.FOPEN_DIRECT_IO)
			if s.o.PageCache {
				flags = gofuse.FOPEN_KEEP_CACHE
			}
			s.reply(r.unique, appendStruct(nil, gofuse.OpenOut{Fh: 1, OpenFlags: flags}))
		}
	case opOpendir:
		if r.node != rootNode {
			s.replyErr(r.unique, syscall.ENOTDIR)
			return
		}
		s.reply(r.unique, appendStruct(nil, gofuse.OpenOut{Fh: 1}))
	case opReaddir:
		s.doReaddir(r)
	case opRead:
		s.startRead(r)
	case opRelease, opReleasedir, opFlush, opAccess, opDestroy:
		s.reply(r.unique, nil)
	case opStatfs:
		s.reply(r.unique, appendStruct(nil, gofuse.StatfsOut{
			Blocks: uint64(s.size+4095) / 4096, Files: 2, Bsize: 4096, Frsize: 4096, NameLen: 255,
		}))
	case opInterrupt:
		s.mu.Lock()
		cancel := s.inflight[r.target]
		s.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		// An INTERRUPT of a request we do not hold (answered, or taken
		// by the process that handed this session over) needs nothing.
	case opForget, opBatchForget:
		// Both nodes live as long as the mount.
	default:
		s.replyErr(r.unique, syscall.ENOSYS)
	}
}

func (s *session) doInit(r request) {
	if r.major != kernelMajor || r.minor < minMinor {
		s.log.Error("unsupported FUSE protocol", slog.Uint64("major", uint64(r.major)), slog.Uint64("minor", uint64(r.minor)))
		s.replyErr(r.unique, syscall.EPROTO)
		return
	}
	want := uint32(gofuse.CAP_ASYNC_READ | gofuse.CAP_BIG_WRITES | gofuse.CAP_FILE_OPS | gofuse.CAP_MAX_PAGES |
		gofuse.CAP_PARALLEL_DIROPS | gofuse.CAP_AUTO_INVAL_DATA)
	pages := (s.o.MaxRead + 4095) / 4096
	p := initParams{Minor: min(r.minor, ourMinor), MaxWrite: ourMaxWrite, MaxPages: uint16(pages), Flags: r.flags & want}
	out := gofuse.InitOut{
		Major: kernelMajor, Minor: p.Minor,
		MaxReadAhead:        min(r.maxReadAhead, uint32(s.o.MaxRead)),
		Flags:               p.Flags,
		MaxBackground:       maxBackground,
		CongestionThreshold: maxBackground * 3 / 4,
		MaxWrite:            p.MaxWrite,
		TimeGran:            1,
		MaxPages:            p.MaxPages,
	}
	s.initMu.Lock()
	s.init = p
	s.initMu.Unlock()
	s.reply(r.unique, appendStruct(nil, out))
	select {
	case <-s.inited:
	default:
		close(s.inited)
	}
}

func (s *session) attr(node uint64) gofuse.Attr {
	if node == rootNode {
		return gofuse.Attr{Ino: rootNode, Mode: syscall.S_IFDIR | 0o555, Nlink: 2, Blksize: 4096}
	}
	return gofuse.Attr{
		Ino: fileNode, Mode: syscall.S_IFREG | 0o444, Nlink: 1,
		Size: uint64(s.size), Blocks: uint64(s.size+511) / 512, Blksize: 4096,
	}
}

func (s *session) doReaddir(r request) {
	if r.node != rootNode {
		s.replyErr(r.unique, syscall.ENOTDIR)
		return
	}
	ents := []struct {
		ino  uint64
		typ  uint32
		name string
	}{{rootNode, syscall.DT_DIR, "."}, {rootNode, syscall.DT_DIR, ".."}, {fileNode, syscall.DT_REG, s.name}}
	var b []byte
	for i := r.offset; i < int64(len(ents)); i++ {
		e := ents[i]
		if len(b)+direntLen(e.name) > int(r.size) {
			break
		}
		b = appendDirent(b, e.ino, uint64(i+1), e.typ, e.name)
	}
	s.reply(r.unique, b)
}

// readBufList keeps READ reply buffers between requests, for every session
// of the process. Unlike a sync.Pool it is not emptied by a garbage
// collection: a cold start grows the heap fast, the collector runs every
// few reads, and a pool refilled after each hands out a fresh 1 MiB buffer
// whose pages all fault in again (a quarter of the agent's page faults in
// a cold start, docs/coldstart.md). Bounded: at most cap buffers are kept.
type readBufList chan *[]byte

var readBufs = make(readBufList, 8)

// get returns a buffer of at least n bytes, reused or new.
func (l readBufList) get(n int) *[]byte {
	select {
	case bp := <-l:
		if len(*bp) >= n {
			return bp
		}
	default:
	}
	b := make([]byte, n)
	return &b
}

// WarmReadBuffers writes up to n READ reply buffers of maxRead bytes
// (0: the default MaxRead) into the process's list ahead of the first
// reads, so that a long-lived server's first start does not pay the first
// write of their pages (a page fault per 4 KiB; several microseconds each
// in a VM). The agent daemon calls it at start (lode agent --warm-memory).
func WarmReadBuffers(n, maxRead int) {
	if maxRead <= 0 {
		maxRead = Options{}.withDefaults().MaxRead
	}
	for i := 0; i < min(n, cap(readBufs)) && len(readBufs) < cap(readBufs); i++ {
		b := make([]byte, maxRead)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 0
		}
		readBufs.put(&b)
	}
}

// put keeps bp for reuse, or drops it when the list is full.
func (l readBufList) put(bp *[]byte) {
	select {
	case l <- bp:
	default:
	}
}

// startRead answers a READ on its own goroutine, with a context that an
// INTERRUPT of the request or cancelReads ends.
func (s *session) startRead(r request) {
	if r.node != fileNode {
		s.replyErr(r.unique, syscall.EISDIR)
		return
	}
	ctx, cancel := context.WithCancel(s.rctx)
	s.mu.Lock()
	s.inflight[r.unique] = cancel
	s.mu.Unlock()
	s.handlers.Add(1)
	go func() {
		defer s.handlers.Done()
		s.doRead(ctx, r)
		s.mu.Lock()
		delete(s.inflight, r.unique)
		s.mu.Unlock()
		cancel()
	}()
}

func (s *session) doRead(ctx context.Context, r request) {
	if r.offset >= s.size || r.size == 0 {
		s.reply(r.unique, nil)
		return
	}
	n := int64(r.size)
	if n > s.size-r.offset {
		n = s.size - r.offset
	}
	bp := readBufs.get(s.o.MaxRead)
	defer readBufs.put(bp)
	dest := *bp
	if int64(len(dest)) < n {
		dest = make([]byte, n)
	}
	dest = dest[:n]
	got, err := s.d.ReadAt(ctx, dest, r.offset)
	if err != nil && !(errors.Is(err, io.EOF) && got == len(dest)) {
		if ctx.Err() != nil && s.rctx.Err() == nil {
			s.replyErr(r.unique, syscall.EINTR) // interrupted: the caller has a signal
			return
		}
		s.log.Warn("reading device for FUSE", slog.Int64("offset", r.offset), slog.Int("length", len(dest)), slog.Any("err", err))
		s.replyErr(r.unique, syscall.EIO)
		return
	}
	s.reply(r.unique, dest[:got])
}

// reply writes a successful answer with body.
func (s *session) reply(unique uint64, body []byte) {
	var hdr [outHeadLen]byte
	h := appendOutHeader(hdr[:0], unique, 0, len(body))
	s.write(unique, h, body)
}

func (s *session) replyErr(unique uint64, errno syscall.Errno) {
	var hdr [outHeadLen]byte
	s.write(unique, appendOutHeader(hdr[:0], unique, int32(errno), 0), nil)
}

func (s *session) write(unique uint64, h, body []byte) {
	iov := [][]byte{h}
	if len(body) > 0 {
		iov = append(iov, body)
	}
	for {
		_, err := unix.Writev(s.fd, iov)
		switch {
		case err == nil:
			return
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOENT):
			return // the kernel gave up on the request (interrupted)
		case errors.Is(err, unix.ENODEV):
			return // the connection is gone
		default:
			s.log.Warn("writing a FUSE reply", slog.Uint64("unique", unique), slog.Any("err", err))
			return
		}
	}
}
