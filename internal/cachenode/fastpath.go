package cachenode

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Timeouts of the node's connections, the same for the fast path and
// net/http.
const (
	idleTimeout   = 2 * time.Minute  // keep client pools warm between bursts
	headerTimeout = 10 * time.Second // slowloris bound once a request has begun
)

// fastServer is the shard fast path (package doc): it owns every accepted
// TCP connection while the connection's requests are shard GETs and PUTs
// parseFastRequest accepts, answering them itself; at the first request it
// declines it hands the connection, with the bytes already read, to net/http
// through handoff, for good.
type fastServer struct {
	s       *Server
	handoff *handoffListener

	closing atomic.Bool
	mu      sync.Mutex
	conns   map[*fastConn]struct{}
	wg      sync.WaitGroup
}

func newFastServer(s *Server, hl *handoffListener) *fastServer {
	return &fastServer{s: s, handoff: hl, conns: make(map[*fastConn]struct{})}
}

// serve accepts connections on l until l is closed (nil) or fails.
func (fs *fastServer) serve(l net.Listener) error {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if fs.closing.Load() {
				return nil
			}
			// Like net/http: retry after running out of file descriptors and
			// the like.
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				fs.s.log.Warn("accepting connection", slog.Any("err", err), slog.Duration("retry_in", backoff))
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		tc, ok := c.(*net.TCPConn)
		if !ok {
			fs.handoff.give(c)
			continue
		}
		fc := &fastConn{fs: fs, c: tc, tcp: tc}
		if fs.s.tls != nil { // mutual TLS (tls.go): the handshake runs in serve
			fc.c, fc.tcp = tls.Server(tc, fs.s.tls), nil
		}
		fs.mu.Lock()
		if fs.closing.Load() {
			fs.mu.Unlock()
			c.Close()
			continue
		}
		fs.conns[fc] = struct{}{}
		fs.wg.Add(1)
		fs.mu.Unlock()
		go fc.serve()
	}
}

// shutdown closes idle connections now and the others once their current
// response is written, waiting for them until ctx ends; then it closes what
// is left. The listener must be closed first.
func (fs *fastServer) shutdown(ctx context.Context) {
	fs.closing.Store(true)
	fs.mu.Lock()
	for fc := range fs.conns {
		fc.mu.Lock()
		if fc.idle {
			fc.c.SetReadDeadline(time.Unix(1, 0)) // wakes the read; serve sees closing
		}
		fc.mu.Unlock()
	}
	fs.mu.Unlock()
	done := make(chan struct{})
	go func() { fs.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	fs.mu.Lock()
	for fc := range fs.conns {
		fc.c.Close()
	}
	fs.mu.Unlock()
	<-done
}

// fastConn is one connection served by the fast path.
type fastConn struct {
	fs  *fastServer
	c   net.Conn     // the TCP connection, or TLS over it
	tcp *net.TCPConn // nil over TLS: no sendfile, no MSG_MORE
	br  *bufio.Reader

	mu   sync.Mutex
	idle bool // waiting for a request; shutdown may close it

	head    []byte // response head being built
	bufs    [][]byte
	first   []byte // writeBufs' first write
	refs    []shardRef
	date    []byte // Date header value of dateSec
	dateSec int64
}

func (fc *fastConn) serve() {
	handedOff := false
	defer func() {
		if !handedOff {
			fc.c.Close()
		}
		fc.fs.mu.Lock()
		delete(fc.fs.conns, fc)
		fc.fs.mu.Unlock()
		fc.fs.wg.Done()
	}()
	if tc, ok := fc.c.(*tls.Conn); ok && !fc.fs.s.handshake(tc) {
		return
	}
	fc.br = bufio.NewReaderSize(fc.c, maxFastHead)
	for {
		if fc.br.Buffered() == 0 {
			if !fc.setIdle(true) {
				return
			}
			fc.c.SetReadDeadline(time.Now().Add(fc.fs.s.idleTimeout))
			_, err := fc.br.Peek(1)
			if !fc.setIdle(false) || err != nil {
				return
			}
		}
		req, ok, err := fc.readHead()
		if err != nil {
			return
		}
		if !ok {
			// Not ours: net/http answers this request and every later one.
			if fc.fs.closing.Load() {
				return
			}
			fc.c.SetReadDeadline(time.Time{})
			handedOff = true
			fc.fs.s.handoffs.Inc()
			if fc.tcp == nil {
				fc.fs.handoff.give(&handedTLS{Conn: fc.c, r: fc.br})
			} else {
				fc.fs.handoff.give(&handedConn{TCPConn: fc.tcp, r: fc.br})
			}
			return
		}
		answer := fc.answer
		if req.put {
			answer = fc.put
		}
		if !answer(req) || req.close || fc.fs.closing.Load() {
			return
		}
	}
}

// setIdle marks the connection idle or busy; false when the server is
// shutting down (the connection should close).
func (fc *fastConn) setIdle(idle bool) bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.idle = idle
	return !fc.fs.closing.Load()
}

// readHead reads until the buffer holds a request head parseFastRequest
// accepts (ok) or declines (!ok), and consumes an accepted head.
func (fc *fastConn) readHead() (fastRequest, bool, error) {
	timed := false
	for {
		b, _ := fc.br.Peek(fc.br.Buffered())
		req, n, res := parseFastRequest(b)
		switch res {
		case parseOK:
			fc.br.Discard(n)
			return req, true, nil
		case parseDecline:
			return req, false, nil
		}
		if !timed {
			fc.c.SetReadDeadline(time.Now().Add(fc.fs.s.headerTimeout))
			timed = true
		}
		if _, err := fc.br.Peek(len(b) + 1); err != nil {
			return req, false, err
		}
	}
}

// answer serves one shard GET; false when the connection must close (the
// response broke off).
func (fc *fastConn) answer(req fastRequest) bool {
	s := fc.fs.s
	start := time.Now()
	fc.refs = fc.refs[:0]
	notFound := "shard not found\n"
	if req.idx >= 0 {
		if r, ok := s.store.openShared(shardKey{req.name, uint8(req.idx)}); ok {
			fc.refs = append(fc.refs, r)
		}
	} else {
		fc.refs = s.store.openAllInto(fc.refs, req.name, true)
		notFound = "no shards of chunk\n"
	}
	defer func() {
		for i, r := range fc.refs {
			r.close()
			fc.refs[i] = shardRef{}
		}
	}()
	fc.stampDate(start)
	ok := true
	if len(fc.refs) == 0 {
		head := fc.buildHead(http.StatusNotFound, int64(len(notFound)), "text/plain; charset=utf-8", req.close)
		head = append(head, notFound...)
		fc.head = head
		_, err := fc.c.Write(head)
		ok = err == nil
		s.getNotFound.Inc()
	} else {
		var size int64
		for _, r := range fc.refs {
			size += r.size
		}
		fc.head = fc.buildHead(http.StatusOK, size, "application/octet-stream", req.close)
		ok = fc.writeShards()
		s.getOK.Inc()
	}
	s.getLatency.Observe(time.Since(start).Seconds())
	return ok
}

// put serves a shard PUT like Server.put: reads the body (within the idle
// timeout), checks it and stores it; false when the connection must close.
func (fc *fastConn) put(req fastRequest) bool {
	s := fc.fs.s
	start := time.Now()
	fc.c.SetReadDeadline(start.Add(s.idleTimeout))
	data, release, err := s.bodies.read(context.Background(), fc.br, int64(req.length))
	defer release()
	if err != nil {
		return false
	}
	fc.stampDate(start)
	if err := checkPutShard(data, req.name, req.idx); err != nil {
		msg := err.Error() + "\n"
		fc.head = append(fc.buildHead(http.StatusBadRequest, int64(len(msg)), "text/plain; charset=utf-8", req.close), msg...)
		s.putBad.Inc()
	} else {
		s.store.put(shardKey{req.name, uint8(req.idx)}, data)
		s.leases.release(req.name)
		fc.head = fc.buildHead(http.StatusNoContent, 0, "", req.close)
		s.putOK.Inc()
	}
	_, err = fc.c.Write(fc.head)
	s.putLatency.Observe(time.Since(start).Seconds())
	return err == nil
}

// writeShards writes the response head and fc.refs: runs of memory shards
// with writeBufs, disk shards with sendfile (the bytes before a file sent
// with MSG_MORE, so they share its first packet).
func (fc *fastConn) writeShards() bool {
	bufs := append(fc.bufs[:0], fc.head)
	defer func() { fc.bufs = bufs[:0] }()
	for _, r := range fc.refs {
		if r.file == nil {
			bufs = append(bufs, r.data)
			continue
		}
		if fc.tcp == nil { // TLS: the file's bytes go through the cipher
			if err := fc.writeBufs(bufs); err != nil {
				return false
			}
			bufs = bufs[:0]
			if _, err := io.Copy(fc.c, io.NewSectionReader(r.file, 0, r.size)); err != nil {
				return false
			}
			continue
		}
		if len(bufs) > 0 {
			if err := fc.writeMore(bufs); err != nil {
				return false
			}
			bufs = bufs[:0]
		}
		if err := sendFileAt(fc.tcp, r.file, r.size); err != nil {
			return false
		}
	}
	if len(bufs) > 0 {
		if err := fc.writeBufs(bufs); err != nil {
			return false
		}
	}
	return true
}

// firstWrite is how much of a response from memory goes out in a first,
// small write (net/http's buffer size). Writing a 128 KiB shard and its
// head with one writev cost the node 20–25% more CPU per request than this
// under wrk at 16 and 64 connections (and lower throughput than net/http):
// the first packet leaves, and the client starts reading, only after the
// whole copy into the socket.
const firstWrite = 4096

// writeBufs writes bufs: their first firstWrite bytes with one write, the
// rest with one write or writev.
func (fc *fastConn) writeBufs(bufs [][]byte) error {
	first := fc.first[:0]
	for len(bufs) > 0 && len(first) < firstWrite {
		n := min(len(bufs[0]), firstWrite-len(first))
		first = append(first, bufs[0][:n]...)
		if bufs[0] = bufs[0][n:]; len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
	}
	fc.first = first
	if _, err := fc.c.Write(first); err != nil {
		return err
	}
	switch len(bufs) {
	case 0:
		return nil
	case 1:
		_, err := fc.c.Write(bufs[0])
		return err
	}
	nb := net.Buffers(bufs)
	_, err := nb.WriteTo(fc.c)
	return err
}

// writeMore writes bufs with MSG_MORE: the kernel holds them back to fill
// a packet with what follows (a sendfile).
func (fc *fastConn) writeMore(bufs [][]byte) error {
	rc, err := fc.tcp.SyscallConn()
	if err != nil {
		return err
	}
	for _, b := range bufs {
		for len(b) > 0 {
			var werr error
			err := rc.Write(func(fd uintptr) bool {
				var n int
				n, werr = syscall.SendmsgN(int(fd), b, nil, nil, syscall.MSG_MORE|syscall.MSG_NOSIGNAL)
				if werr == syscall.EAGAIN {
					return false
				}
				if werr == nil {
					b = b[n:]
				}
				return true
			})
			if err == nil {
				err = werr
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// sendFileAt sends the first size bytes of f on c with sendfile(2) at
// explicit offsets, so concurrent responses can share f.
func sendFileAt(c *net.TCPConn, f *os.File, size int64) error {
	dst, err := c.SyscallConn()
	if err != nil {
		return err
	}
	src, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var off int64
	var serr error
	cerr := src.Control(func(sfd uintptr) {
		werr := dst.Write(func(dfd uintptr) bool {
			for off < size {
				n, err := syscall.Sendfile(int(dfd), int(sfd), &off, int(size-off))
				switch {
				case err == syscall.EAGAIN:
					return false // wait until the socket is writable
				case err == syscall.EINTR:
				case err != nil:
					serr = err
					return true
				case n == 0:
					serr = io.ErrUnexpectedEOF // the file shrank
					return true
				}
			}
			return true
		})
		if serr == nil {
			serr = werr
		}
	})
	if serr == nil {
		serr = cerr
	}
	return serr
}

// stampDate refreshes the cached Date value when the second has changed.
func (fc *fastConn) stampDate(now time.Time) {
	if sec := now.Unix(); sec != fc.dateSec || fc.date == nil {
		fc.date = now.UTC().AppendFormat(fc.date[:0], http.TimeFormat)
		fc.dateSec = sec
	}
}

// buildHead is net/http's response head for the same answer (status line,
// Content-Length and Content-Type but for a 204, Date, and for errors the
// nosniff header http.Error sets), in fc.head's buffer.
func (fc *fastConn) buildHead(code int, size int64, ctype string, close bool) []byte {
	b := fc.head[:0]
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(code)...)
	if close {
		b = append(b, "\r\nConnection: close"...)
	}
	if code != http.StatusNoContent {
		b = append(b, "\r\nContent-Length: "...)
		b = strconv.AppendInt(b, size, 10)
		b = append(b, "\r\nContent-Type: "...)
		b = append(b, ctype...)
	}
	b = append(b, "\r\nDate: "...)
	b = append(b, fc.date...)
	if code >= 400 {
		b = append(b, "\r\nX-Content-Type-Options: nosniff"...)
	}
	return append(b, "\r\n\r\n"...)
}

// handoffListener is the listener net/http serves: it yields the
// connections the fast path declined.
type handoffListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// give passes c to net/http, or closes it once net/http has stopped.
func (l *handoffListener) give(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

// handedConn is a connection handed to net/http: reads start with the bytes
// the fast path had buffered. It keeps the methods net/http looks for on a
// *net.TCPConn: ReadFrom (sendfile) and CloseWrite.
type handedConn struct {
	*net.TCPConn
	r *bufio.Reader
}

func (c *handedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// WriteTo must not reach the TCPConn's, which would skip the buffered bytes.
func (c *handedConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c.r})
}
