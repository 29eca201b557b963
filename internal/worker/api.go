package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/lode-dev/lode/internal/agent"
	"github.com/lode-dev/lode/internal/blockdev"
	"github.com/lode-dev/lode/internal/blockdev/fuse"
	"github.com/lode-dev/lode/internal/blockdev/nbd"
	"github.com/lode-dev/lode/internal/catalog"
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/lode-dev/lode/internal/store"
)

// The control API (the routes are in handler).

// MountRequest is the body of POST /v1/mounts.
type MountRequest struct {
	Image  string `json:"image"`
	Tenant string `json:"tenant,omitempty"`
	Dir    string `json:"dir"`
	// Source, if set, is the source digest the image's manifest must
	// record: the mount is refused otherwise (the containerd snapshotter
	// mounts only what containerd asked for).
	Source string `json:"source,omitempty"`
}

// ExportRequest is the body of POST /v1/exports.
type ExportRequest struct {
	Image   string `json:"image"`
	Tenant  string `json:"tenant,omitempty"`
	Listen  string `json:"listen"`
	Export  string `json:"export,omitempty"`
	Overlay string `json:"overlay,omitempty"`
}

// ServedStatus is one mount or export in the API's answers.
type ServedStatus struct {
	Image    string      `json:"image"`
	Tenant   string      `json:"tenant"`
	Roots    []string    `json:"roots"`
	Manifest string      `json:"manifest"`
	Since    time.Time   `json:"since"`
	Dir      string      `json:"dir,omitempty"`
	Loop     string      `json:"loop,omitempty"`
	Listen   string      `json:"listen,omitempty"`
	Export   string      `json:"export,omitempty"`
	Overlay  string      `json:"overlay,omitempty"`
	Stats    ImageStatus `json:"stats"`
}

// ImageStatus is agent.Stats with stable JSON names.
type ImageStatus struct {
	ImageSize          int64            `json:"image_size"`
	ChunkCount         int              `json:"chunk_count"`
	BytesRead          int64            `json:"bytes_read"`
	DistinctChunksRead int64            `json:"distinct_chunks_read"`
	DistinctBytesRead  int64            `json:"distinct_bytes_read"`
	MemHits            int64            `json:"mem_hits"`
	Holes              int64            `json:"holes"`
	ReadAheads         int64            `json:"read_aheads"`
	FetchErrors        int64            `json:"fetch_errors"`
	VerifyFailures     int64            `json:"verify_failures"`
	FetchedBytes       int64            `json:"fetched_bytes"` // ciphertext from every tier below memory
	Tiers              []TierStatus     `json:"tiers"`
	Degraded           map[string]int64 `json:"degraded,omitempty"` // lazy loading degraded, by reason
	Filled             int64            `json:"filled,omitempty"`   // chunks the background fill fetched
}

// TierStatus is one tier's reads of a served image.
type TierStatus struct {
	Tier   string `json:"tier"`
	Hits   int64  `json:"hits"`
	Chunks int64  `json:"chunks"`
	Bytes  int64  `json:"bytes"`
}

// Status is GET /v1/status: everything the daemon serves.
type Status struct {
	Mounts         []ServedStatus `json:"mounts"`
	Exports        []ServedStatus `json:"exports"`
	MemCacheBytes  int64          `json:"mem_cache_bytes"`
	DiskCacheBytes int64          `json:"disk_cache_bytes"`
	DiskCacheFiles int            `json:"disk_cache_chunks"`
	// Services are the extra services' own status (AddService).
	Services []ServiceStatus `json:"services,omitempty"`
}

func statusOf(s *served) ServedStatus {
	st := s.im.Stats()
	out := ServedStatus{
		Image: s.image, Tenant: s.tenant, Manifest: s.manifestID, Since: s.since,
		Dir: s.dir, Listen: s.listen, Export: s.export, Overlay: s.overlay,
		Stats: ImageStatus{
			ImageSize: st.ImageSize, ChunkCount: st.ChunkCount, BytesRead: st.BytesRead,
			DistinctChunksRead: st.DistinctChunksRead, DistinctBytesRead: st.DistinctBytesRead,
			MemHits: st.MemHits, Holes: st.Holes, ReadAheads: st.ReadAheads,
			FetchErrors: st.FetchErrors, VerifyFailures: st.VerifyFailures, Tiers: []TierStatus{},
			Degraded: st.Degraded, Filled: st.Filled,
		},
	}
	if s.mount != nil {
		out.Loop = s.mount.Loop()
	}
	for _, r := range s.attached() {
		out.Roots = append(out.Roots, string(r))
	}
	for _, t := range st.Tiers {
		out.Stats.Tiers = append(out.Stats.Tiers, TierStatus{Tier: t.Tier, Hits: t.Hits, Chunks: t.Chunks, Bytes: t.Bytes})
		out.Stats.FetchedBytes += t.Bytes
	}
	return out
}

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(d.reg))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("POST /v1/mounts", d.postMount)
	mux.HandleFunc("DELETE /v1/mounts", d.deleteMount)
	mux.HandleFunc("GET /v1/mounts", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.status().Mounts) })
	mux.HandleFunc("POST /v1/exports", d.postExport)
	mux.HandleFunc("DELETE /v1/exports", d.deleteExport)
	mux.HandleFunc("GET /v1/exports", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.status().Exports) })
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, d.status()) })
	mux.HandleFunc("POST /v1/takeover", d.postTakeover)
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

type apiError struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, apiError{Error: err.Error()})
}

// errCode maps an error to an HTTP status.
func errCode(err error) int {
	var ce *codedError
	switch {
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, catalog.ErrNoImage), errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, fuse.ErrBusy):
		return http.StatusConflict
	case errors.Is(err, agent.ErrTooManyStarts):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func (d *Daemon) status() Status {
	d.mu.Lock()
	var ms, es []*served
	for _, s := range d.mounts {
		if s.im != nil && (s.mount != nil) {
			ms = append(ms, s)
		}
	}
	for _, s := range d.exports {
		if s.im != nil && s.nbdDone != nil {
			es = append(es, s)
		}
	}
	d.mu.Unlock()
	out := Status{Mounts: []ServedStatus{}, Exports: []ServedStatus{}}
	for _, s := range ms {
		out.Mounts = append(out.Mounts, statusOf(s))
	}
	for _, s := range es {
		out.Exports = append(out.Exports, statusOf(s))
	}
	sort.Slice(out.Mounts, func(i, j int) bool { return out.Mounts[i].Dir < out.Mounts[j].Dir })
	sort.Slice(out.Exports, func(i, j int) bool { return out.Exports[i].Listen < out.Exports[j].Listen })
	if d.stack.Mem != nil {
		out.MemCacheBytes = d.stack.Mem.Bytes()
	}
	if d.stack.Disk != nil {
		out.DiskCacheBytes, out.DiskCacheFiles = d.stack.Disk.Bytes(), d.stack.Disk.Len()
	}
	out.Services = d.servicesStatus()
	return out
}

// reserve claims key in table (a dir or a listen address) while the image
// is being opened, so concurrent requests for it conflict.
func (d *Daemon) reserve(table map[string]*served, key string, s *served) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return errors.New("the agent is shutting down")
	}
	if _, ok := table[key]; ok {
		return fmt.Errorf("%s is already served by this agent: %w", key, fuse.ErrBusy)
	}
	table[key] = s
	return nil
}

func (d *Daemon) release(table map[string]*served, key string, s *served) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if table[key] == s {
		delete(table, key)
	}
}

func (d *Daemon) postMount(w http.ResponseWriter, r *http.Request) {
	var req MountRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decoding the mount request: %w", err))
		return
	}
	if req.Tenant == "" {
		req.Tenant = d.tenant
	}
	if req.Image == "" || !filepath.IsAbs(req.Dir) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("a mount needs an image and an absolute dir, got image %q dir %q", req.Image, req.Dir))
		return
	}
	s, err := d.startMount(r.Context(), req, filepath.Clean(req.Dir))
	if err != nil {
		writeError(w, errCode(err), err)
		return
	}
	writeJSON(w, http.StatusCreated, statusOf(s))
}

// codedError is an error that answers with code.
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// startMount mounts req's image at dir and registers the mount (POST
// /v1/mounts and MountImage).
func (d *Daemon) startMount(ctx context.Context, req MountRequest, dir string) (*served, error) {
	placeholder := &served{}
	if err := d.reserve(d.mounts, dir, placeholder); err != nil {
		return nil, &codedError{http.StatusConflict, err}
	}
	s, err := d.mountImage(ctx, req, dir)
	if err != nil {
		d.release(d.mounts, dir, placeholder)
		d.log.Warn("mount failed", slog.String("image", req.Tenant+"/"+req.Image), slog.String("dir", dir), slog.Any("err", err))
		return nil, err
	}
	d.mu.Lock()
	closing := d.closing
	if !closing {
		d.mounts[dir] = s
	}
	d.mu.Unlock()
	if closing {
		s.close()
		return nil, &codedError{http.StatusServiceUnavailable, errShuttingDown}
	}
	d.watchMount(s)
	d.log.Info("mounted", slog.String("image", s.name()), slog.String("dir", dir), slog.String("loop", s.mount.Loop()))
	return s, nil
}

// watchMount forgets s once its mount is gone: unmounted from outside
// (lode umount DIR), or handed over to a new agent.
func (d *Daemon) watchMount(s *served) {
	go func() {
		s.mount.Wait()
		d.release(d.mounts, s.dir, s)
		s.close()
	}()
}

func (d *Daemon) mountImage(ctx context.Context, req MountRequest, dir string) (*served, error) {
	return d.startServed(ctx, req.Tenant, req.Image, func(s *served) error {
		if req.Source != "" && s.m.SourceDigest != req.Source {
			return &codedError{http.StatusConflict, fmt.Errorf("image %s records source %q, not %q: %w", s.name(), s.m.SourceDigest, req.Source, ErrSourceMismatch)}
		}
		s.dir = dir
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating mount point %s: %w", dir, err)
		}
		mo := fuse.MountOptions{StateDir: d.o.StateDir}
		mo.Log = d.base
		m, err := fuse.MountImage(ctx, dir, s.im, mo)
		if err != nil {
			return fmt.Errorf("mounting %s at %s: %w", s.name(), dir, err)
		}
		s.mount = m
		return nil
	})
}

// startServed is the start of a mount or an export: it takes an admission
// slot, opens the image, marks it starting and runs start on it. On
// success the slot is held through the start's first reads (the start
// gate); on failure the image is closed and the slot released.
func (d *Daemon) startServed(ctx context.Context, tenant, image string, start func(*served) error) (*served, error) {
	release, err := d.admit.Acquire(ctx, tenant+"/"+image)
	if err != nil {
		return nil, err
	}
	s, err := d.open(ctx, tenant, image)
	if err != nil {
		release()
		return nil, err
	}
	d.markStarting(s.im)
	if err := start(s); err != nil {
		s.close()
		release()
		return nil, err
	}
	d.startGate().Hold(release, s.im, nil)
	return s, nil
}

func (d *Daemon) deleteMount(w http.ResponseWriter, r *http.Request) {
	dir := filepath.Clean(r.URL.Query().Get("dir"))
	d.stopServed(w, d.mounts, dir, func(s *served) bool { return s.mount != nil },
		fmt.Errorf("%s is not mounted by this agent", dir), "unmounting "+dir, "unmounted", slog.String("dir", dir))
}

// stopServed removes the entry key of table (a mount or an export that has
// finished starting), closes it and answers with its last status; notFound
// answers a key that names nothing started.
func (d *Daemon) stopServed(w http.ResponseWriter, table map[string]*served, key string, started func(*served) bool,
	notFound error, doing, done string, where slog.Attr) {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, errors.New("the agent is shutting down or being taken over"))
		return
	}
	s, ok := table[key]
	if ok && started(s) {
		delete(table, key)
	}
	d.mu.Unlock()
	if !ok || !started(s) {
		writeError(w, http.StatusNotFound, notFound)
		return
	}
	st := statusOf(s)
	if err := s.close(); err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("%s: %w", doing, err))
		return
	}
	d.log.Info(done, slog.String("image", s.name()), where)
	writeJSON(w, http.StatusOK, st)
}

func (d *Daemon) postExport(w http.ResponseWriter, r *http.Request) {
	var req ExportRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decoding the export request: %w", err))
		return
	}
	if req.Tenant == "" {
		req.Tenant = d.tenant
	}
	if req.Image == "" || req.Listen == "" {
		writeError(w, http.StatusBadRequest, fmt.Errorf("an export needs an image and a listen address, got image %q listen %q", req.Image, req.Listen))
		return
	}
	placeholder := &served{}
	if err := d.reserve(d.exports, req.Listen, placeholder); err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	s, err := d.startExport(r.Context(), req)
	if err != nil {
		d.release(d.exports, req.Listen, placeholder)
		writeError(w, errCode(err), err)
		return
	}
	d.mu.Lock()
	closing := d.closing
	if !closing {
		d.exports[req.Listen] = s
	}
	d.mu.Unlock()
	if closing {
		s.close()
		writeError(w, http.StatusServiceUnavailable, errors.New("the agent is shutting down"))
		return
	}
	d.log.Info("exporting", slog.String("image", s.name()), slog.String("listen", s.listen), slog.String("export", s.export))
	writeJSON(w, http.StatusCreated, statusOf(s))
}

func (d *Daemon) startExport(ctx context.Context, req ExportRequest) (*served, error) {
	// NBD has no authentication: the agent's exports stay on this machine
	// (issue #19). A network export needs lode serve-nbd with TLS.
	if !nbd.IsLoopback(req.Listen) {
		return nil, fmt.Errorf("exporting on %s: the agent exports only on unix sockets and loopback; for a network export run lode serve-nbd with --tls-cert, --tls-key and --tls-ca: %w", req.Listen, nbd.ErrUnauthenticated)
	}
	return d.startServed(ctx, req.Tenant, req.Image, func(s *served) error {
		s.listen, s.export, s.overlay = req.Listen, req.Export, req.Overlay
		if s.export == "" {
			s.export = req.Image
		}
		var dev blockdev.Device = s.im
		if req.Overlay != "" {
			ov, err := blockdev.NewOverlay(s.im, req.Overlay)
			if err != nil {
				return fmt.Errorf("opening overlay %s: %w", req.Overlay, err)
			}
			s.ov, dev = ov, ov
		}
		l, err := Listen(req.Listen)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", req.Listen, err)
		}
		c := nbd.DefaultConfig()
		c.Log = d.base
		srv := nbd.NewServer(map[string]nbd.Export{s.export: {Device: dev, Description: s.name()}}, c)
		nctx, cancel := context.WithCancel(context.Background())
		s.stopNBD, s.nbdDone = cancel, make(chan struct{})
		go func() {
			defer close(s.nbdDone)
			if err := srv.Serve(nctx, l); err != nil {
				d.log.Error("NBD export stopped", slog.String("image", s.name()), slog.String("listen", s.listen), slog.Any("err", err))
			}
			if p, ok := strings.CutPrefix(s.listen, "unix:"); ok {
				os.Remove(p)
			}
		}()
		return nil
	})
}

func (d *Daemon) deleteExport(w http.ResponseWriter, r *http.Request) {
	addr := r.URL.Query().Get("listen")
	d.stopServed(w, d.exports, addr, func(s *served) bool { return s.nbdDone != nil },
		fmt.Errorf("no export on %s", addr), "stopping the export on "+addr, "export stopped", slog.String("listen", addr))
}
