package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/lode-dev/lode/internal/blockdev"
)

// Export is one named device. If Device also implements
// blockdev.WritableDevice (a blockdev.Overlay) and the server is not
// Config.ReadOnly, the export takes writes.
type Export struct {
	Device      blockdev.Device
	Description string // sent as NBD_INFO_DESCRIPTION when asked; optional
}

// Config configures a Server. The zero value is usable; see DefaultConfig.
type Config struct {
	// Log receives connection-level events. Nil discards.
	Log *slog.Logger
	// ReadOnly serves every export read-only even if it is writable.
	ReadOnly bool
	// MaxRequest bounds the payload of one READ or WRITE (default 32 MiB,
	// the largest request qemu and the Linux client send).
	MaxRequest uint32
	// MaxInflight bounds the requests served at once per connection
	// (default 16): memory per connection is at most MaxInflight*MaxRequest.
	MaxInflight int
	// HandshakeTimeout bounds the option haggling of a connection
	// (default 30 s) so a silent client cannot hold a goroutine forever.
	HandshakeTimeout time.Duration
	// TLS, if set, offers NBD_OPT_STARTTLS (the NBD protocol's TLS: the
	// client upgrades the connection during option haggling, as qemu and
	// libnbd's nbds:// URIs do) and then requires it: every option but
	// STARTTLS and ABORT is answered NBD_REP_ERR_TLS_REQD until the client
	// has upgraded, and NBD_OPT_EXPORT_NAME closes the connection (the
	// spec's "forced TLS"). Set ClientAuth and ClientCAs to require client
	// certificates: that is what authenticates an NBD client.
	TLS *tls.Config
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{MaxRequest: 32 << 20, MaxInflight: 16, HandshakeTimeout: 30 * time.Second}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxRequest == 0 {
		c.MaxRequest = d.MaxRequest
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = d.MaxInflight
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// Server serves a fixed set of exports. It is safe to call Serve on several
// listeners at once.
type Server struct {
	exports map[string]Export
	names   []string // sorted, for NBD_OPT_LIST
	c       Config
}

// NewServer returns a server for exports. An empty export name asked by a
// client selects the only export when there is exactly one.
func NewServer(exports map[string]Export, c Config) *Server {
	s := &Server{exports: make(map[string]Export, len(exports)), c: c.withDefaults()}
	for n, e := range exports {
		s.exports[n] = e
		s.names = append(s.names, n)
	}
	sort.Strings(s.names)
	return s
}

// Serve accepts connections on l until ctx is cancelled (then it returns
// nil after closing l and every connection and waiting for their requests)
// or Accept fails (then it returns that error, also after cleanup).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var err error
	for {
		conn, aerr := l.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accepting on %s: %w", l.Addr(), aerr)
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.ServeConn(ctx, conn)
		}()
	}
	cancel()
	wg.Wait()
	return err
}

// connState is the lifecycle of one connection.
type connState int

const (
	stateHandshake connState = iota
	stateOptions
	stateTransmission
	stateClosed
)

func (s connState) String() string {
	return [...]string{"handshake", "options", "transmission", "closed"}[s]
}

// legalMoves is the connection's transition table.
var legalMoves = map[connState][]connState{
	stateHandshake:    {stateOptions, stateClosed},
	stateOptions:      {stateTransmission, stateClosed},
	stateTransmission: {stateClosed},
}

type conn struct {
	s      *Server
	rw     net.Conn
	br     *bufio.Reader
	state  connState
	export Export
	name   string
	wdev   blockdev.WritableDevice // nil when read-only

	wmu sync.Mutex // serializes replies
	bw  *bufio.Writer

	tls bool // the connection was upgraded by NBD_OPT_STARTTLS
}

func (c *conn) move(to connState) error {
	for _, ok := range legalMoves[c.state] {
		if ok == to {
			c.state = to
			return nil
		}
	}
	return fmt.Errorf("nbd connection: illegal move %s → %s", c.state, to)
}

// ServeConn runs one connection to completion and closes it. Serve calls
// it; it is exported for servers that accept connections themselves.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	defer nc.Close()
	c := &conn{s: s, rw: nc, br: bufio.NewReaderSize(nc, 64<<10), bw: bufio.NewWriterSize(nc, 64<<10)}
	log := s.c.Log.With(slog.String("remote", nc.RemoteAddr().String()))
	nc.SetDeadline(time.Now().Add(s.c.HandshakeTimeout))
	go_, err := c.handshake()
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			log.Debug("nbd handshake ended", slog.Any("err", err))
		}
		return
	}
	if !go_ {
		return
	}
	nc.SetDeadline(time.Time{})
	log = log.With(slog.String("export", c.name))
	log.Debug("nbd transmission started")
	if err := c.transmit(ctx); err != nil && ctx.Err() == nil {
		log.Info("nbd connection ended", slog.Any("err", err))
	}
}

// handshake runs the fixed newstyle handshake and option haggling. It
// reports whether the connection entered transmission.
func (c *conn) handshake() (bool, error) {
	var b []byte
	b = binary.BigEndian.AppendUint64(b, nbdMagic)
	b = binary.BigEndian.AppendUint64(b, optMagic)
	b = binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	if _, err := c.rw.Write(b); err != nil {
		return false, fmt.Errorf("writing greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return false, fmt.Errorf("reading client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^uint32(flagFixedNewstyle|flagNoZeroes) != 0 || clientFlags&flagFixedNewstyle == 0 {
		return false, fmt.Errorf("client flags %#x: %w", clientFlags, ErrBadHandshake)
	}
	noZeroes := clientFlags&flagNoZeroes != 0
	if err := c.move(stateOptions); err != nil {
		return false, err
	}
	hdr := make([]byte, optHeaderSize)
	for {
		if _, err := io.ReadFull(c.br, hdr); err != nil {
			return false, fmt.Errorf("reading option header: %w", err)
		}
		opt, length, err := parseOptionHeader(hdr)
		if err != nil {
			return false, err
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return false, fmt.Errorf("reading option %d data: %w", opt, err)
		}
		done, err := c.option(opt, data, noZeroes)
		if err != nil {
			return false, err
		}
		if ferr := c.bw.Flush(); ferr != nil {
			return false, fmt.Errorf("writing option %d reply: %w", opt, ferr)
		}
		if done {
			if c.state == stateTransmission {
				return true, nil
			}
			return false, c.move(stateClosed)
		}
	}
}

// lookup resolves an export name; "" is the only export if there is one.
func (c *conn) lookup(name string) (Export, string, bool) {
	if name == "" && len(c.s.names) == 1 {
		name = c.s.names[0]
	}
	e, ok := c.s.exports[name]
	return e, name, ok
}

func (c *conn) flags(e Export) uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagCanMultiConn)
	if c.writable(e) == nil {
		f |= tflagReadOnly
	} else {
		f |= tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes
	}
	return f
}

func (c *conn) writable(e Export) blockdev.WritableDevice {
	if c.s.c.ReadOnly {
		return nil
	}
	w, _ := e.Device.(blockdev.WritableDevice)
	return w
}

func (c *conn) reply(opt, typ uint32, data []byte) {
	c.bw.Write(appendOptionReply(nil, opt, typ, data))
}

// option handles one option; done reports the end of haggling (GO,
// EXPORT_NAME, ABORT). An error closes the connection.
func (c *conn) option(opt uint32, data []byte, noZeroes bool) (done bool, err error) {
	if c.s.c.TLS != nil && !c.tls {
		switch opt {
		case optStartTLS:
			return false, c.startTLS(data)
		case optAbort:
		case optExportName: // cannot be refused with a reply
			return false, fmt.Errorf("NBD_OPT_EXPORT_NAME before STARTTLS: %w", ErrTLSRequired)
		default:
			c.reply(opt, repErrTLSReqd, []byte("TLS required: use NBD_OPT_STARTTLS"))
			return false, nil
		}
	}
	switch opt {
	case optExportName:
		e, name, ok := c.lookup(string(data))
		if !ok {
			return false, fmt.Errorf("NBD_OPT_EXPORT_NAME of unknown export %q", data)
		}
		var b []byte
		b = binary.BigEndian.AppendUint64(b, uint64(e.Device.Size()))
		b = binary.BigEndian.AppendUint16(b, c.flags(e))
		if !noZeroes {
			b = append(b, make([]byte, 124)...)
		}
		c.bw.Write(b)
		c.enter(e, name)
		return true, c.move(stateTransmission)
	case optAbort:
		c.reply(opt, repAck, nil)
		return true, nil
	case optList:
		if len(data) != 0 {
			c.reply(opt, repErrInvalid, nil)
			return false, nil
		}
		for _, n := range c.s.names {
			c.reply(opt, repServer, append(binary.BigEndian.AppendUint32(nil, uint32(len(n))), n...))
		}
		c.reply(opt, repAck, nil)
		return false, nil
	case optInfo, optGo:
		name, infos, err := parseInfoRequest(data)
		if err != nil {
			c.reply(opt, repErrInvalid, nil)
			return false, nil
		}
		e, full, ok := c.lookup(name)
		if !ok {
			c.reply(opt, repErrUnknown, []byte("unknown export"))
			return false, nil
		}
		c.sendInfo(opt, e, full, infos)
		c.reply(opt, repAck, nil)
		if opt == optInfo {
			return false, nil
		}
		c.enter(e, full)
		return true, c.move(stateTransmission)
	case optStartTLS:
		if c.tls {
			c.reply(opt, repErrInvalid, []byte("TLS already negotiated"))
		} else {
			c.reply(opt, repErrPolicy, nil) // no TLS configured
		}
		return false, nil
	default: // structured replies, meta contexts, extended headers…
		c.reply(opt, repErrUnsup, nil)
		return false, nil
	}
}

// startTLS acknowledges NBD_OPT_STARTTLS and runs the TLS handshake on
// the connection; every later byte, both ways, goes through TLS. A failed
// handshake closes the connection.
func (c *conn) startTLS(data []byte) error {
	if len(data) != 0 {
		c.reply(optStartTLS, repErrInvalid, nil)
		return nil
	}
	c.reply(optStartTLS, repAck, nil)
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("writing STARTTLS reply: %w", err)
	}
	if c.br.Buffered() != 0 {
		// Bytes sent after the option, before the handshake: a client
		// injecting plaintext into what will be the TLS stream.
		return fmt.Errorf("STARTTLS: %d plaintext bytes after the option: %w", c.br.Buffered(), ErrBadHandshake)
	}
	tc := tls.Server(c.rw, c.s.c.TLS)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("STARTTLS: TLS handshake: %w", err)
	}
	c.rw, c.tls = tc, true
	c.br = bufio.NewReaderSize(tc, 64<<10)
	c.bw = bufio.NewWriterSize(tc, 64<<10)
	return nil
}

func (c *conn) enter(e Export, name string) {
	c.export, c.name, c.wdev = e, name, c.writable(e)
}

func (c *conn) sendInfo(opt uint32, e Export, name string, infos []uint16) {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, infoExport)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Device.Size()))
	b = binary.BigEndian.AppendUint16(b, c.flags(e))
	c.reply(opt, repInfo, b)
	for _, t := range infos {
		switch t {
		case infoName:
			c.reply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoName), name...))
		case infoDescription:
			if e.Description != "" {
				c.reply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoDescription), e.Description...))
			}
		case infoBlockSize:
			b := binary.BigEndian.AppendUint16(nil, infoBlockSize)
			b = binary.BigEndian.AppendUint32(b, 1)    // minimum: any byte range works
			b = binary.BigEndian.AppendUint32(b, 4096) // preferred: the overlay's block
			b = binary.BigEndian.AppendUint32(b, c.s.c.MaxRequest)
			c.reply(opt, repInfo, b)
		}
	}
}
