package vm

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"time"
)

// eventKind is what a status line of the init reports.
type eventKind int

const (
	evInit  eventKind = iota + 1 // the init started (proc mounted)
	evStart                      // the command is about to start
	evExit                       // the command exited
	evError                      // the init could not set up the root
)

// event is one status line of the init.
type event struct {
	kind   eventKind
	uptime time.Duration // guest uptime at the line (not for evError)
	status int           // evExit: the command's exit status
	msg    string        // evError: what failed
}

// parseStatus parses what follows the marker on a status line: "init UP",
// "start UP", "exit STATUS UP" or "error MESSAGE". ok is false for
// anything else, which is then ordinary output.
func parseStatus(rest string) (ev event, ok bool) {
	f := strings.Fields(rest)
	if len(f) == 0 {
		return event{}, false
	}
	switch f[0] {
	case "init", "start":
		if len(f) != 2 {
			return event{}, false
		}
		up, ok := parseUptime(f[1])
		if !ok {
			return event{}, false
		}
		k := evInit
		if f[0] == "start" {
			k = evStart
		}
		return event{kind: k, uptime: up}, true
	case "exit":
		if len(f) != 3 {
			return event{}, false
		}
		st, err := strconv.Atoi(f[1])
		if err != nil || st < 0 || st > 255 {
			return event{}, false
		}
		up, ok := parseUptime(f[2])
		if !ok {
			return event{}, false
		}
		return event{kind: evExit, status: st, uptime: up}, true
	case "error":
		return event{kind: evError, msg: strings.Join(f[1:], " ")}, true
	}
	return event{}, false
}

// parseUptime parses /proc/uptime's first field, seconds with a fraction.
func parseUptime(s string) (time.Duration, bool) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v > 1e9 {
		return 0, false
	}
	return time.Duration(v * float64(time.Second)), true
}

// maxLine bounds the bytes of one console line held back: a longer line
// is passed on in pieces (keeping a marker's length back so a status line
// is still recognized).
const maxLine = 4096

// console splits the guest's serial output into lines, recognizes the
// init's status lines by the marker, and writes the command's output
// (lines between "start" and "exit") to out, or every line if verbose.
// The guest is untrusted: nothing it prints is more than text to pass on
// or a status line, and no line grows past maxLine in memory.
type console struct {
	marker  []byte
	verbose bool
	out     io.Writer
	onEvent func(event)

	buf     []byte
	running bool // between start and exit
	ended   bool
	tail    []string // the last lines seen, for error messages
}

func newConsole(marker string, verbose bool, out io.Writer, onEvent func(event)) *console {
	return &console{marker: []byte(marker), verbose: verbose, out: out, onEvent: onEvent}
}

// Write takes console bytes; it never fails (a failing out is ignored so
// the VM's output keeps being drained).
func (c *console) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.buf = append(c.buf, p...)
			if len(c.buf) > maxLine {
				keep := len(c.marker) + 64
				c.emit(c.buf[:len(c.buf)-keep])
				c.buf = append(c.buf[:0], c.buf[len(c.buf)-keep:]...)
			}
			break
		}
		c.buf = append(c.buf, p[:i]...)
		p = p[i+1:]
		c.line(c.buf)
		c.buf = c.buf[:0]
	}
	return n, nil
}

// Flush handles a last line without a newline.
func (c *console) Flush() {
	if len(c.buf) > 0 {
		c.line(c.buf)
		c.buf = c.buf[:0]
	}
}

func (c *console) emit(b []byte) {
	if c.verbose || (c.running && !c.ended) {
		c.out.Write(b)
	}
}

func (c *console) line(l []byte) {
	l = bytes.TrimSuffix(l, []byte("\r"))
	c.remember(string(l))
	if i := bytes.Index(l, c.marker); i >= 0 {
		if ev, ok := parseStatus(string(l[i+len(c.marker):])); ok {
			if c.verbose {
				c.out.Write(append(l[:len(l):len(l)], '\n'))
			} else if i > 0 {
				c.emit(l[:i]) // output that did not end with a newline
			}
			switch ev.kind {
			case evStart:
				c.running = true
			case evExit, evError:
				c.ended = true
			}
			if c.onEvent != nil {
				c.onEvent(ev)
			}
			return
		}
	}
	c.emit(append(l[:len(l):len(l)], '\n'))
}

const tailLines = 20

func (c *console) remember(l string) {
	if len(l) > 256 {
		l = l[:256]
	}
	if len(c.tail) == tailLines {
		copy(c.tail, c.tail[1:])
		c.tail = c.tail[:tailLines-1]
	}
	c.tail = append(c.tail, l)
}

// Tail returns the last console lines, oldest first.
func (c *console) Tail() []string { return append([]string(nil), c.tail...) }
