package vhost

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev"
)

// Config tunes a Server.
type Config struct {
	// Log receives connection-level events. Nil discards.
	Log *slog.Logger
	// ReadOnly serves the device read-only even if it is a
	// blockdev.WritableDevice (the guest sees VIRTIO_BLK_F_RO).
	ReadOnly bool
	// Workers bounds the requests served at once per connection
	// (default 16): a request waiting on a slow fetch does not hold up
	// the others.
	Workers int
	// MaxRequest bounds the data of one read or write (default 32 MiB);
	// a longer one fails with VIRTIO_BLK_S_IOERR.
	MaxRequest uint32
	// Serial is the device's ID string (VIRTIO_BLK_T_GET_ID, at most 20
	// bytes; /sys/block/vda/serial in the guest).
	Serial string
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config { return Config{Workers: 16, MaxRequest: 32 << 20} }

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Workers <= 0 {
		c.Workers = d.Workers
	}
	if c.MaxRequest == 0 {
		c.MaxRequest = d.MaxRequest
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Server serves one block device to vhost-user front-ends.
type Server struct {
	blk *blk
	c   Config
}

// NewServer serves dev; it is writable when dev is a
// blockdev.WritableDevice and c.ReadOnly is false.
func NewServer(dev blockdev.Device, c Config) *Server {
	c = c.withDefaults()
	b := newBlk(dev, c.ReadOnly, c.MaxRequest, c.Serial)
	b.log = c.Log
	return &Server{blk: b, c: c}
}

// Serve accepts connections on l (a unix socket listener) until ctx is
// cancelled (then it returns nil after closing l and every connection and
// waiting for their requests) or Accept fails (then it returns that error,
// after the same cleanup).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	var err error
	for {
		c, aerr := l.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accepting on %s: %w", l.Addr(), aerr)
			}
			break
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			err = fmt.Errorf("accepting on %s: not a unix socket", l.Addr())
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, uc); err != nil {
				s.c.Log.Info("vhost-user connection ended", slog.Any("err", err))
			}
		}()
	}
	cancel()
	wg.Wait()
	return err
}

// ServeConn runs one front-end connection until it closes (nil) or
// breaks the protocol (an error wrapping ErrProtocol), then stops its
// queues, waits for their requests, unmaps the guest memory and closes
// conn. Cancelling ctx ends it too.
func (s *Server) ServeConn(ctx context.Context, conn *net.UnixConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	sess := &session{s: s, conn: conn, sem: make(chan struct{}, s.c.Workers), config: s.blk.config()}
	for i := range sess.queues {
		sess.queues[i] = &queue{index: i}
	}
	defer func() {
		// The front-end is gone: requests still waiting on the device
		// are abandoned before the queues wait for them.
		cancel()
		sess.close()
	}()
	for {
		m, fds, err := readMessage(conn)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if err := sess.handle(ctx, m, fds); err != nil {
			return err
		}
	}
}

// readMessage reads one message and the file descriptors that came with
// it. On an error every received descriptor is closed.
func readMessage(conn *net.UnixConn) (message, []int, error) {
	buf := make([]byte, headerSize, headerSize+64)
	oob := make([]byte, unix.CmsgSpace(4*(maxRegions+1)))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	var fds []int
	if oobn > 0 {
		cmsgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, cm := range cmsgs {
				if got, err := unix.ParseUnixRights(&cm); err == nil {
					fds = append(fds, got...)
				}
			}
		}
	}
	fail := func(err error) (message, []int, error) {
		closeFDs(fds)
		return message{}, nil, err
	}
	if err != nil {
		return fail(err)
	}
	if n == 0 {
		return fail(io.EOF)
	}
	if flags&unix.MSG_CTRUNC != 0 {
		return fail(fmt.Errorf("%w: too many file descriptors", ErrProtocol))
	}
	if _, err := io.ReadFull(conn, buf[n:]); err != nil {
		return fail(fmt.Errorf("reading a message header: %w", err))
	}
	size, err := messageSize(buf)
	if err != nil {
		return fail(err)
	}
	buf = append(buf, make([]byte, size)...)
	if _, err := io.ReadFull(conn, buf[headerSize:]); err != nil {
		return fail(fmt.Errorf("reading a %d-byte payload: %w", size, err))
	}
	m, err := parseMessage(buf, len(fds))
	if err != nil {
		return fail(err)
	}
	return m, fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// eventFile wraps a received eventfd for the runtime poller, so a kick
// loop's read can be interrupted.
func eventFile(fd int, name string) (*os.File, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("setting %s nonblocking: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// numQueues is the queues the device offers.
const numQueues = 1

// session is one front-end connection: what it negotiated and set up.
// Only the message loop touches its fields.
type session struct {
	s        *Server
	conn     *net.UnixConn
	sem      chan struct{} // worker slots, shared by the queues
	config   []byte
	features uint64
	protocol uint64
	mem      *guestMemory
	queues   [numQueues]*queue
}

func (ss *session) log() *slog.Logger { return ss.s.c.Log }

// handle runs one message and sends its reply, if any. It takes ownership
// of fds. An error ends the connection.
func (ss *session) handle(ctx context.Context, m message, fds []int) error {
	var reply []byte
	var herr error // a failed request (acked as 1 when the front-end asks)
	q := func() (*queue, error) {
		if m.Index >= numQueues {
			return nil, fmt.Errorf("%w: %s for queue %d of %d", ErrProtocol, m.Req, m.Index, numQueues)
		}
		return ss.queues[m.Index], nil
	}
	switch m.Req {
	case reqGetFeatures:
		reply = replyU64(m.Req, ss.s.blk.features())
	case reqSetFeatures:
		if m.U64&^ss.s.blk.features() != 0 {
			herr = fmt.Errorf("features %#x not offered", m.U64&^ss.s.blk.features())
		}
		ss.features = m.U64
	case reqGetProtocolFeatures:
		reply = replyU64(m.Req, protoMQ|protoReplyAck|protoConfig)
	case reqSetProtocolFeatures:
		ss.protocol = m.U64 & (protoMQ | protoReplyAck | protoConfig)
	case reqGetQueueNum:
		reply = replyU64(m.Req, numQueues)
	case reqGetMaxMemSlots:
		reply = replyU64(m.Req, maxRegions)
	case reqSetOwner:
	case reqResetOwner:
		ss.stopAll()
		for _, q := range ss.queues {
			q.reset()
		}
		ss.features = 0
	case reqSetMemTable:
		herr = ss.setMemTable(ctx, m.Regions, fds)
		fds = nil
	case reqSetVringNum:
		qu, err := q()
		if err != nil {
			closeFDs(fds)
			return err
		}
		if m.Num == 0 || m.Num > maxQueueSize || m.Num&(m.Num-1) != 0 {
			herr = fmt.Errorf("queue size %d", m.Num)
			break
		}
		qu.num = uint16(m.Num)
	case reqSetVringAddr:
		qu, err := q()
		if err != nil {
			return err
		}
		wasRunning := qu.running()
		qu.stop()
		qu.addr, qu.hasAddr = m.Addr, true
		if wasRunning {
			herr = qu.start(ctx, ss)
		}
	case reqSetVringBase:
		qu, err := q()
		if err != nil {
			return err
		}
		qu.base = uint16(m.Num)
	case reqGetVringBase:
		qu, err := q()
		if err != nil {
			return err
		}
		qu.stop()
		if qu.kick != nil {
			qu.kick.Close()
			qu.kick = nil
		}
		reply = replyState(m.Req, m.Index, uint32(qu.base))
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		qu, err := q()
		if err != nil {
			closeFDs(fds)
			return err
		}
		var f *os.File
		if len(fds) == 1 {
			fd := fds[0]
			fds = nil // eventFile owns it now, even when it fails
			if f, err = eventFile(fd, m.Req.String()); err != nil {
				herr = err
				break
			}
		}
		switch m.Req {
		case reqSetVringKick:
			qu.stop()
			if qu.kick != nil {
				qu.kick.Close()
			}
			qu.kick = f
			if f == nil {
				herr = errors.New("polling mode (no kick fd) is not supported")
				break
			}
			herr = qu.start(ctx, ss)
		case reqSetVringCall:
			qu.setCall(f)
		case reqSetVringErr:
			if qu.errFile != nil {
				qu.errFile.Close()
			}
			qu.errFile = f
		}
	case reqSetVringEnable:
		qu, err := q()
		if err != nil {
			return err
		}
		qu.enabled = m.Num != 0
	case reqGetConfig:
		reply = replyConfig(m, ss.config[m.CfgOffset:m.CfgOffset+m.CfgSize])
	case reqSetConfig:
		herr = errors.New("the configuration is read-only")
	default:
		// Nothing that was not negotiated: acked as failed when the
		// front-end asks, ignored otherwise.
		herr = fmt.Errorf("request %s not supported", m.Req)
	}
	closeFDs(fds)
	if herr != nil {
		ss.log().Warn("vhost-user request failed", slog.String("request", m.Req.String()), slog.Any("err", herr))
	}
	if reply == nil && m.needReply() && ss.protocol&protoReplyAck != 0 {
		var v uint64
		if herr != nil {
			v = 1
		}
		reply = replyU64(m.Req, v)
	}
	if reply != nil {
		if _, err := ss.conn.Write(reply); err != nil {
			return fmt.Errorf("replying to %s: %w", m.Req, err)
		}
	}
	return nil
}

// setMemTable replaces the guest memory: running queues are stopped,
// re-placed in the new mapping and restarted.
func (ss *session) setMemTable(ctx context.Context, regs []memRegion, fds []int) error {
	defer closeFDs(fds) // the mappings keep the memory
	mem, err := mapMemory(regs, fds)
	if err != nil {
		return err
	}
	var running []*queue
	for _, q := range ss.queues {
		if q.running() {
			running = append(running, q)
		}
		q.stop()
	}
	ss.mem.unmap()
	ss.mem = mem
	var errs []error
	for _, q := range running {
		errs = append(errs, q.start(ctx, ss))
	}
	return errors.Join(errs...)
}

func (ss *session) stopAll() {
	for _, q := range ss.queues {
		q.stop()
	}
}

// close ends the session: stops the queues (waiting for their requests),
// closes their descriptors and unmaps the memory.
func (ss *session) close() {
	ss.stopAll()
	for _, q := range ss.queues {
		q.reset()
	}
	ss.mem.unmap()
	ss.mem = nil
	ss.conn.Close()
}

// queue is one virtqueue's setup and, while started, its kick loop.
type queue struct {
	index   int
	num     uint16
	addr    vringAddr
	hasAddr bool
	base    uint16 // next available index to serve when (re)started
	enabled bool
	kick    *os.File
	errFile *os.File

	callMu sync.Mutex // guards call: completions signal while the loop replaces it
	call   *os.File

	ring     *vring        // non-nil while started
	done     chan struct{} // closed when the kick loop returned
	inflight sync.WaitGroup
}

func (q *queue) running() bool { return q.ring != nil }

func (q *queue) setCall(f *os.File) {
	q.callMu.Lock()
	old := q.call
	q.call = f
	q.callMu.Unlock()
	if old != nil {
		old.Close()
	}
}

// signal tells the driver that used entries are there.
func (q *queue) signal() {
	q.callMu.Lock()
	defer q.callMu.Unlock()
	if q.call != nil {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		q.call.Write(one[:])
	}
}

// start places the ring and starts its kick loop, if everything it needs
// is set; otherwise it does nothing.
func (q *queue) start(ctx context.Context, ss *session) error {
	if q.ring != nil || q.kick == nil || !q.hasAddr || q.num == 0 || ss.mem == nil {
		return nil
	}
	r, err := newVring(ss.mem, q.num, q.addr)
	if err != nil {
		return fmt.Errorf("starting queue %d: %w", q.index, err)
	}
	r.lastAvail = q.base
	q.ring, q.done = r, make(chan struct{})
	kick, mem, log := q.kick, ss.mem, ss.log().With(slog.Int("queue", q.index))
	q.kick.SetReadDeadline(time.Time{})
	go func() {
		defer close(q.done)
		if err := q.loop(ctx, ss.s.blk, ss.sem, mem, r, kick); err != nil {
			log.Error("vhost-user queue stopped", slog.Any("err", err))
		}
	}()
	return nil
}

// stop ends the kick loop and waits for the requests in flight; the next
// available index is kept in base.
func (q *queue) stop() {
	if q.ring == nil {
		return
	}
	q.kick.SetReadDeadline(time.Now())
	<-q.done
	q.inflight.Wait()
	q.base = q.ring.lastAvail
	q.ring, q.done = nil, nil
}

// reset closes the queue's descriptors and forgets its setup (the queue
// must be stopped).
func (q *queue) reset() {
	for _, f := range []*os.File{q.kick, q.errFile} {
		if f != nil {
			f.Close()
		}
	}
	q.setCall(nil)
	*q = queue{index: q.index}
}

// loop serves the ring until the kick file's deadline passes (stop) or
// the ring turns out broken. Each request runs on a worker slot of sem;
// the loop blocks while all are taken.
func (q *queue) loop(ctx context.Context, b *blk, sem chan struct{}, mem *guestMemory, r *vring, kick *os.File) error {
	var buf [8]byte
	for {
		n, err := r.pending()
		if err != nil {
			return err
		}
		for ; n > 0; n-- {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
			head := r.pop()
			c, err := walkChain(mem, r.desc, r.num, head, segMax+2)
			if err != nil {
				<-sem
				if head < r.num {
					r.push(head, 0)
					q.signal()
				}
				return err
			}
			q.inflight.Add(1)
			go func() {
				defer q.inflight.Done()
				written := b.serve(ctx, c)
				<-sem
				r.push(head, written)
				q.signal()
			}()
		}
		if _, err := kick.Read(buf[:]); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("reading the kick eventfd: %w", err)
		}
	}
}
