package fuse

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lode-dev/lode/internal/blockdev"
)

// handover.go passes a live image mount to another process: the /dev/fuse
// descriptor over a unix socket (SCM_RIGHTS) with what the new server must
// know. The kernel sends INIT once per connection, so the negotiated
// parameters travel with the descriptor; the loop device and the ext4
// mount are kernel objects and simply stay.
//
// Losslessness: the old side stops its reader (session.stop), which takes
// no request once told to stop and returns only when every request it did
// take has been answered. Requests the kernel queues from then on wait in
// the connection's pending queue until the new side reads them: a reader
// sees a pause, never an error.

const handoverVersion = 1

// maxMessage bounds one message on a handover connection.
const maxMessage = 1 << 20

// handoverMsg is what the old side sends with the descriptor.
type handoverMsg struct {
	Version   int             `json:"version"`
	Dir       string          `json:"dir"`
	FUSEDir   string          `json:"fuse_dir"`
	Loop      string          `json:"loop"`
	Name      string          `json:"name"`
	Size      int64           `json:"size"`
	Init      initParams      `json:"init"`
	MaxRead   int             `json:"max_read"`
	PageCache bool            `json:"page_cache"`
	Meta      json.RawMessage `json:"meta,omitempty"`
}

// handoverAck is the new side's answer.
type handoverAck struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// ErrHandover reports a handover the other side refused or broke off.
var ErrHandover = errors.New("fuse: handover failed")

// HandOver passes m to the process at the other end of c, which adopts it
// with ReceiveHandover and Handover.Adopt. meta (JSON-encoded, may be nil)
// travels with it: what the new process needs to reopen the same Device.
// On success m no longer serves, and Close and Wait return at once
// without unmounting anything. On failure (refused, broken connection,
// ctx ended) m serves again, and the error wraps ErrHandover.
func (m *ImageMount) HandOver(ctx context.Context, c *net.UnixConn, meta any) error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	select {
	case <-m.closed:
		return fmt.Errorf("handing over %s: closed: %w", m.st.Dir, ErrHandover)
	default:
	}
	metaJSON, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("handing over %s: encoding meta: %w", m.st.Dir, err)
	}
	stop := deadlineFrom(ctx, c)
	defer stop()
	if err := m.fm.pause(); err != nil {
		return fmt.Errorf("handing over %s: %w: %w", m.st.Dir, err, ErrHandover)
	}
	s := m.fm.s
	msg := handoverMsg{
		Version: handoverVersion, Dir: m.st.Dir, FUSEDir: m.st.FUSEDir, Loop: m.st.Loop,
		Name: s.name, Size: s.size, Init: s.init, MaxRead: s.o.MaxRead, PageCache: s.o.PageCache, Meta: metaJSON,
	}
	err = writeMessage(c, msg, s.fd)
	var ack handoverAck
	if err == nil {
		_, err = readMessage(c, &ack)
	}
	if err == nil && !ack.OK {
		err = fmt.Errorf("refused: %s", ack.Error)
	}
	if err != nil {
		m.fm.resume()
		m.writeState() // the other side may have written its pid
		m.log.Warn("handover failed, serving again", "err", err)
		return fmt.Errorf("handing over %s: %w: %w", m.st.Dir, err, ErrHandover)
	}
	m.fm.handedOver()
	close(m.closed)
	m.log.Info("image mount handed over")
	return nil
}

// Handover is a mount received by ReceiveHandover, not served yet: Adopt
// serves it, Reject sends it back.
type Handover struct {
	msg handoverMsg
	fd  int
	c   *net.UnixConn
}

// Dir is where the image is mounted.
func (h *Handover) Dir() string { return h.msg.Dir }

// Size is the image's size: the Device given to Adopt must have it.
func (h *Handover) Size() int64 { return h.msg.Size }

// Meta is what the old side passed to HandOver.
func (h *Handover) Meta() json.RawMessage { return h.msg.Meta }

// ReceiveHandover reads one mount sent by HandOver from c. The caller
// must Adopt or Reject it; until then the mount's reads wait.
func ReceiveHandover(ctx context.Context, c *net.UnixConn) (*Handover, error) {
	stop := deadlineFrom(ctx, c)
	defer stop()
	var msg handoverMsg
	fd, err := readMessage(c, &msg)
	if err != nil {
		return nil, fmt.Errorf("receiving a mount handover: %w", err)
	}
	h := &Handover{msg: msg, fd: fd, c: c}
	var bad error
	switch {
	case fd < 0:
		bad = errors.New("no /dev/fuse descriptor came with it")
	case msg.Version != handoverVersion:
		bad = fmt.Errorf("version %d, want %d", msg.Version, handoverVersion)
	case !filepath.IsAbs(msg.Dir) || !filepath.IsAbs(msg.FUSEDir) || msg.Name != filepath.Base(msg.Name) || msg.Name == "" || msg.Name == "." || msg.Name == "..":
		bad = fmt.Errorf("bad paths dir %q fuse %q name %q", msg.Dir, msg.FUSEDir, msg.Name)
	case msg.Size <= 0 || msg.MaxRead <= 0 || msg.MaxRead > 1<<20 || msg.Init.Minor < minMinor:
		bad = fmt.Errorf("bad parameters size %d max_read %d minor %d", msg.Size, msg.MaxRead, msg.Init.Minor)
	}
	if bad != nil {
		err := fmt.Errorf("receiving a mount handover of %s: %w", msg.Dir, bad)
		h.Reject(err)
		return nil, err
	}
	return h, nil
}

// Reject tells the old side to serve the mount again.
func (h *Handover) Reject(reason error) error {
	if h.fd >= 0 {
		unix.Close(h.fd)
		h.fd = -1
	}
	return writeMessage(h.c, handoverAck{Error: reason.Error()}, -1)
}

// Adopt serves the mount with d, which must be the same image (same
// size; the caller opens it from Meta), records this process in the
// mount's state (o.StateDir must be the old side's), and tells the old
// side it may go. The mount's readers see a pause, no error.
func (h *Handover) Adopt(d blockdev.Device, o MountOptions) (*ImageMount, error) {
	o = o.withDefaults()
	o.MaxRead, o.PageCache = h.msg.MaxRead, h.msg.PageCache
	entry := entryDir(o.StateDir, h.msg.Dir)
	var bad error
	switch {
	case d.Size() != h.msg.Size:
		bad = fmt.Errorf("the device has %d bytes, the mount %d", d.Size(), h.msg.Size)
	case filepath.Join(entry, "fuse") != h.msg.FUSEDir:
		bad = fmt.Errorf("FUSE dir %s is not in state dir %s", h.msg.FUSEDir, o.StateDir)
	}
	if bad != nil {
		err := fmt.Errorf("adopting the mount at %s: %w", h.msg.Dir, bad)
		h.Reject(err)
		return nil, err
	}
	s, err := newSession(h.fd, h.msg.Name, d, o.Options)
	if err != nil {
		err = fmt.Errorf("adopting the mount at %s: %w", h.msg.Dir, err)
		h.Reject(err)
		return nil, err
	}
	s.init = h.msg.Init
	close(s.inited)
	st := state{Dir: h.msg.Dir, FUSEDir: h.msg.FUSEDir, Loop: h.msg.Loop, PID: os.Getpid(), StartTime: processStart(os.Getpid())}
	m := &ImageMount{st: st, entry: entry, o: o, log: o.Log.With("dir", st.Dir), closed: make(chan struct{})}
	if err := m.writeState(); err != nil {
		err = fmt.Errorf("adopting the mount at %s: %w", h.msg.Dir, err)
		unix.Close(s.efd)
		h.Reject(err)
		return nil, err
	}
	if err := writeMessage(h.c, handoverAck{OK: true}, -1); err != nil {
		// The old side serves again (and rewrites the state).
		s.close()
		return nil, fmt.Errorf("adopting the mount at %s: acknowledging: %w", h.msg.Dir, err)
	}
	h.fd = -1
	s.start()
	m.fm = newFileMount(context.Background(), h.msg.FUSEDir, s)
	m.log.Info("image mount adopted", "loop", st.Loop, "size", h.msg.Size)
	go func() {
		m.fm.Wait()
		m.Close()
	}()
	return m, nil
}

// deadlineFrom applies ctx's deadline and cancellation to c.
func deadlineFrom(ctx context.Context, c net.Conn) (stop func()) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	s := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	return func() {
		s()
		c.SetDeadline(time.Time{})
	}
}

// WriteMessage writes v as one length-prefixed JSON message, the framing
// of a handover connection, so a caller can exchange its own messages
// between handovers on the same connection.
func WriteMessage(c *net.UnixConn, v any) error { return writeMessage(c, v, -1) }

// ReadMessage reads one message written by WriteMessage. A descriptor
// sent with it (there should be none) is closed.
func ReadMessage(c *net.UnixConn, v any) error {
	fd, err := readMessage(c, v)
	if fd >= 0 {
		unix.Close(fd)
	}
	return err
}

func writeMessage(c *net.UnixConn, v any, fd int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding a handover message: %w", err)
	}
	if len(b) > maxMessage {
		return fmt.Errorf("handover message of %d bytes: too long", len(b))
	}
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	frame = append(frame, b...)
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	n, _, err := c.WriteMsgUnix(frame, oob, nil)
	if err == nil && n < len(frame) {
		_, err = c.Write(frame[n:])
	}
	if err != nil {
		return fmt.Errorf("writing a handover message: %w", err)
	}
	return nil
}

// readMessage reads one message and the descriptor that came with its
// first byte (-1 if none).
func readMessage(c *net.UnixConn, v any) (fd int, err error) {
	fd = -1
	var hdr [4]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(hdr[:], oob)
	if err != nil {
		return -1, fmt.Errorf("reading a handover message: %w", err)
	}
	if oobn > 0 {
		fds, perr := parseRights(oob[:oobn])
		for i, f := range fds {
			if i == 0 {
				fd = f
			} else {
				unix.Close(f)
			}
		}
		if perr != nil {
			err = perr
		}
	}
	if err == nil && flags&unix.MSG_CTRUNC != 0 {
		err = errors.New("reading a handover message: control data truncated")
	}
	if err == nil && n < len(hdr) {
		_, err = io.ReadFull(c, hdr[n:])
	}
	var body []byte
	if err == nil {
		size := binary.BigEndian.Uint32(hdr[:])
		if size > maxMessage {
			err = fmt.Errorf("reading a handover message: %d bytes is too long", size)
		} else {
			body = make([]byte, size)
			_, err = io.ReadFull(c, body)
		}
	}
	if err == nil {
		err = json.Unmarshal(body, v)
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("reading a handover message: %w", err)
	}
	return fd, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parsing control data: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		f, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, f...)
	}
	return fds, nil
}
