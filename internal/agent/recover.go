package agent

import (
	"fmt"
	"log/slog"
	"runtime/debug"
)

// The recover boundaries of the read path (issue #19, "blast radius"). The
// read path slices plaintext by lengths a manifest states, and a manifest is
// tenant input: every length is checked before slicing, and these boundaries
// make sure that a check we missed costs one read, not the process serving
// every tenant's mounts. A recovered panic is a bug: it is logged with its
// stack and counted (lode_agent_read_panics_total) so it is seen and fixed.

// recoverRead is deferred by Image.ReadAt: on a panic it sets the read's
// result to (0, an error wrapping ErrIO and ErrPanic).
func (a *Agent) recoverRead(image string, off int64, n *int, err *error) {
	r := recover()
	if r == nil {
		return
	}
	*n = 0
	*err = fmt.Errorf("reading image %s at offset %d: %w: %w: %v", image, off, ErrIO, ErrPanic, r)
	a.notePanic("read", r, slog.String("image", image), slog.Int64("offset", off))
}

// fetchSafe is fetch with a recover boundary: a panic while fetching or
// opening c's chunk (in the fetch goroutine, where no reader's recover could
// catch it) becomes c's error, which every waiting reader gets as EIO.
func (a *Agent) fetchSafe(c *call, buf []byte) (ct []byte) {
	defer func() {
		if r := recover(); r != nil {
			c.plain, c.tier = nil, -1
			c.err = fmt.Errorf("fetching chunk %s: %w: %w: %v", c.ref.Name, ErrIO, ErrPanic, r)
			a.notePanic("fetch", r, slog.String("chunk", c.ref.Name.String()), slog.String("image", c.image))
			ct = nil
		}
	}()
	return a.fetch(c, buf)
}

func (a *Agent) notePanic(where string, r any, attrs ...any) {
	inc(a.am.panics)
	attrs = append(attrs, slog.String("where", where), slog.Any("panic", r), slog.String("stack", string(debug.Stack())))
	a.log.Error("recovered a panic in the read path; failing this read with EIO", attrs...)
}
