package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/lode-dev/lode/internal/blockdev/fuse"
)

// Takeover: a new agent takes a running one's mounts and exports, so an
// upgrade does not unmount anything (docs/operations.md, "Upgrades").
//
// The new agent sends POST /v1/takeover on the old one's socket; the old
// one answers 101 and the connection becomes a sequence of length-prefixed
// JSON messages (fuse.WriteMessage): hello (new → old), plan (old → new),
// one fuse.HandOver per mount (the /dev/fuse descriptor travels with it,
// the new side acknowledges), then done (old → new) with the exports the
// new agent restarts once the old one has stopped them and released the
// socket.

const takeoverProtocol = "lode-takeover/1"

type takeoverHello struct {
	Version int `json:"version"`
	PID     int `json:"pid"`
}

type takeoverPlan struct {
	Mounts int `json:"mounts"`
}

// takeoverMount travels with each mount: what the new agent needs to
// reopen the same image.
type takeoverMount struct {
	Tenant   string    `json:"tenant"`
	Image    string    `json:"image"`
	Manifest string    `json:"manifest"`
	Roots    []string  `json:"roots"`
	Since    time.Time `json:"since"`
}

type takeoverDone struct {
	Handed  int             `json:"handed"`
	Failed  []string        `json:"failed,omitempty"` // dirs the old agent unmounts as it exits
	Exports []ExportRequest `json:"exports"`
}

// afterTakenOver returns nil, at once or (--after-takeover=wait) when ctx
// ends; nothing is unmounted either way.
func (d *Daemon) afterTakenOver(ctx context.Context) error {
	if d.o.AfterTakeover == "wait" {
		d.log.Info("taken over by a new agent: waiting for a signal to exit (nothing is unmounted)")
		<-ctx.Done()
	}
	d.log.Info("taken over by a new agent: exiting without unmounting")
	return nil
}

// socketAnswers reports whether something accepts on the unix socket path.
func socketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// postTakeover is the old agent's side: it refuses new work, switches the
// connection to the takeover protocol and hands everything over.
func (d *Daemon) postTakeover(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		writeError(w, http.StatusConflict, errors.New("the agent is shutting down or already being taken over"))
		return
	}
	d.closing = true // no new mounts, exports or unmounts from here on
	d.mu.Unlock()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		d.reopen()
		writeError(w, http.StatusInternalServerError, fmt.Errorf("taking the connection over: %w", err))
		return
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		conn.Close()
		d.reopen()
		return
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + takeoverProtocol + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		uc.Close()
		d.reopen()
		return
	}
	go d.handOver(uc)
}

// reopen takes requests again after a takeover that did not happen.
func (d *Daemon) reopen() {
	d.mu.Lock()
	d.closing = false
	d.mu.Unlock()
}

// handOver runs the old agent's side of the takeover protocol on c.
func (d *Daemon) handOver(c *net.UnixConn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	var hello takeoverHello
	if err := fuse.ReadMessage(c, &hello); err != nil {
		d.log.Warn("takeover: no hello from the new agent", slog.Any("err", err))
		d.reopen()
		return
	}
	c.SetDeadline(time.Time{})
	d.log.Info("handing everything over to a new agent", slog.Int("pid", hello.PID))
	d.mu.Lock()
	var ms, es []*served
	for _, s := range d.mounts {
		if s.im != nil && s.mount != nil {
			ms = append(ms, s)
		}
	}
	for _, s := range d.exports {
		if s.im != nil && s.nbdDone != nil {
			es = append(es, s)
		}
	}
	d.mu.Unlock()
	if err := fuse.WriteMessage(c, takeoverPlan{Mounts: len(ms)}); err != nil {
		d.log.Warn("takeover: the new agent went away", slog.Any("err", err))
		d.reopen()
		return
	}
	done := takeoverDone{Exports: []ExportRequest{}}
	for _, s := range ms {
		meta := takeoverMount{Tenant: s.tenant, Image: s.image, Manifest: s.manifestID, Since: s.since}
		for _, r := range s.attached() {
			meta.Roots = append(meta.Roots, string(r))
		}
		if err := s.mount.HandOver(ctx, c, meta); err != nil {
			d.log.Error("takeover: handing a mount over failed; it is unmounted when this agent exits",
				slog.String("dir", s.dir), slog.String("image", s.name()), slog.Any("err", err))
			done.Failed = append(done.Failed, s.dir)
			continue
		}
		done.Handed++
		d.log.Info("mount handed over", slog.String("dir", s.dir), slog.String("image", s.name()))
	}
	if len(ms) > 0 && done.Handed == 0 {
		// The new agent took nothing (gone, or refusing): keep serving.
		d.log.Error("takeover: no mount was taken over; serving on")
		d.reopen()
		return
	}
	// NBD is stateless between requests: stop the exports so that the new
	// agent can listen on their addresses; clients reconnect.
	for _, s := range es {
		done.Exports = append(done.Exports, ExportRequest{Image: s.image, Tenant: s.tenant, Listen: s.listen, Export: s.export, Overlay: s.overlay})
		d.release(d.exports, s.listen, s)
		s.close()
	}
	d.apiStopped.Store(true)
	if d.stopAPI != nil {
		d.stopAPI() // unlinks the socket: the new agent listens on it next
	}
	if err := fuse.WriteMessage(c, done); err != nil {
		d.log.Error("takeover: telling the new agent it is done", slog.Any("err", err))
	}
	d.log.Info("taken over", slog.Int("mounts", done.Handed), slog.Int("failed", len(done.Failed)), slog.Int("exports", len(done.Exports)))
	close(d.takenOver)
}

// takeOver is the new agent's side: it takes every mount of the agent
// serving on the socket and returns the exports to restart once it
// listens there itself.
func (d *Daemon) takeOver(ctx context.Context) ([]ExportRequest, error) {
	fail := func(err error) ([]ExportRequest, error) {
		return nil, fmt.Errorf("taking over from the agent on %s: %w", d.o.Socket, err)
	}
	conn, err := net.DialTimeout("unix", d.o.Socket, 5*time.Second)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	c := conn.(*net.UnixConn)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "POST /v1/takeover HTTP/1.1\r\nHost: lode-agent\r\nContent-Length: 0\r\n\r\n"); err != nil {
		return fail(err)
	}
	// The old agent sends nothing after its answer until our hello, so
	// the buffered reader cannot swallow a descriptor.
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fail(fmt.Errorf("reading its answer: %w", err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		var ae apiError
		if json.Unmarshal(b, &ae) == nil && ae.Error != "" {
			return fail(errors.New(ae.Error))
		}
		return fail(fmt.Errorf("%s (an agent that predates takeover: drain and stop it first)", resp.Status))
	}
	if br.Buffered() > 0 {
		return fail(errors.New("unexpected bytes after the switch"))
	}
	c.SetDeadline(time.Time{})
	if err := fuse.WriteMessage(c, takeoverHello{Version: 1, PID: os.Getpid()}); err != nil {
		return fail(err)
	}
	var plan takeoverPlan
	if err := fuse.ReadMessage(c, &plan); err != nil {
		return fail(err)
	}
	tctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	adopted := 0
	for range plan.Mounts {
		h, err := fuse.ReceiveHandover(tctx, c)
		if err != nil && adopted > 0 {
			// Keep what was adopted: failing would unmount it.
			d.log.Error("takeover broke off", slog.Int("adopted", adopted), slog.Any("err", err))
			return nil, nil
		}
		if err != nil {
			return fail(err)
		}
		if err := d.adopt(tctx, h); err != nil {
			d.log.Error("takeover: adopting a mount failed; the old agent unmounts it", slog.String("dir", h.Dir()), slog.Any("err", err))
			continue
		}
		adopted++
	}
	var done takeoverDone
	if err := fuse.ReadMessage(c, &done); err != nil {
		if adopted > 0 {
			d.log.Error("takeover broke off", slog.Int("adopted", adopted), slog.Any("err", err))
			return nil, nil
		}
		return fail(err)
	}
	d.log.Info("took over", slog.Int("mounts", done.Handed), slog.Any("failed", done.Failed), slog.Int("exports", len(done.Exports)))
	return done.Exports, nil
}

// adopt serves one mount handed over by the old agent, reading the same
// image (same manifest) through this agent.
func (d *Daemon) adopt(ctx context.Context, h *fuse.Handover) error {
	var meta takeoverMount
	if err := json.Unmarshal(h.Meta(), &meta); err != nil || meta.Image == "" {
		err = fmt.Errorf("decoding the mount's image: %v", err)
		h.Reject(err)
		return err
	}
	s, err := d.open(ctx, meta.Tenant, meta.Image)
	if err != nil {
		h.Reject(err)
		return err
	}
	if s.manifestID != meta.Manifest {
		s.close()
		err := fmt.Errorf("image %s now names manifest %s, the mount serves %s", s.name(), s.manifestID, meta.Manifest)
		h.Reject(err)
		return err
	}
	mo := fuse.MountOptions{StateDir: d.o.StateDir}
	mo.Log = d.base
	m, err := h.Adopt(s.im, mo)
	if err != nil {
		s.close()
		return err
	}
	s.dir, s.mount = h.Dir(), m
	if !meta.Since.IsZero() {
		s.since = meta.Since
	}
	d.mu.Lock()
	d.mounts[s.dir] = s
	d.mu.Unlock()
	d.watchMount(s)
	d.log.Info("mount taken over", slog.String("dir", s.dir), slog.String("image", s.name()), slog.String("loop", m.Loop()))
	return nil
}

// restartExports starts the exports the old agent stopped, on the same
// addresses.
func (d *Daemon) restartExports(ctx context.Context, exports []ExportRequest) {
	for _, req := range exports {
		s, err := d.startExport(ctx, req)
		if err != nil {
			d.log.Error("takeover: restarting an export", slog.String("image", req.Tenant+"/"+req.Image), slog.String("listen", req.Listen), slog.Any("err", err))
			continue
		}
		d.mu.Lock()
		d.exports[req.Listen] = s
		d.mu.Unlock()
		d.log.Info("export restarted", slog.String("image", s.name()), slog.String("listen", s.listen))
	}
}
