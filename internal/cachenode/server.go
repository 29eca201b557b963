package cachenode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lode-dev/lode/internal/chunk"
	"github.com/lode-dev/lode/internal/fleetproto"
	"github.com/lode-dev/lode/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// ServerConfig configures one cache node.
type ServerConfig struct {
	// MemBytes is the memory budget for shards (bytes, > 0). DESIGN.md
	// suggests about 10% of the node's total budget.
	MemBytes int64
	// DiskDir, when set, holds shards evicted from memory; a node restarted
	// with the same directory reuses its contents.
	DiskDir string
	// DiskBytes is the disk budget (required with DiskDir).
	DiskBytes int64
	// Log receives operational messages; nil discards them.
	Log *slog.Logger
	// Registry receives the node's metrics and is served on /metrics; nil
	// uses a fresh private registry.
	Registry *prometheus.Registry
	// TLS, if set, makes every connection mutual TLS (tls.go): a client
	// without a certificate this configuration accepts is refused at the
	// handshake. Use certs.Reloader.ServerConfig(certs.RoleWorker).
	TLS *tls.Config
	// PutBudget bounds the bytes of PUT bodies being read at once (default
	// 256 MiB); bodies are read incrementally into it (body.go).
	PutBudget int64
}

// Validate reports every problem with c at once.
func (c ServerConfig) Validate() error {
	var errs []error
	if c.MemBytes <= 0 {
		errs = append(errs, fmt.Errorf("memory budget %d: must be positive", c.MemBytes))
	}
	if c.DiskDir != "" && c.DiskBytes <= 0 {
		errs = append(errs, fmt.Errorf("disk budget %d for %s: must be positive", c.DiskBytes, c.DiskDir))
	}
	if c.DiskDir == "" && c.DiskBytes > 0 {
		errs = append(errs, errors.New("disk budget without a disk directory"))
	}
	return errors.Join(errs...)
}

// Server is a cache node: an http.Handler for the shard API over a
// byte-budgeted shard store. It stores whatever well-formed shards it is
// given (ciphertext; it never sees keys) and never talks to other nodes.
//
// API (docs/fleet.md):
//
//	GET  /v1/shards/{chunk}          200 every shard held of the chunk, | 404
//	                                 concatenated in index order
//	GET  /v1/shards/{chunk}/{index}  200 shard bytes | 404
//	HEAD /v1/shards/{chunk}/{index}  200 with Content-Length | 404
//	PUT  /v1/shards/{chunk}/{index}  204 | 400 bad path or shard | 413 too large
//	POST /v1/leases/{chunk}?ttl_ms=N 201 origin lease granted | 409 held (lease.go)
//	GET  /healthz                    200 "ok"
//	GET  /metrics                    Prometheus text format
//
// {chunk} is 64 lower-case hex digits, {index} a decimal in 0..MaxShards-1
// without leading zeros. A PUT body must be a shard whose header names the
// same chunk and index. Shards are self-delimiting (the header gives the
// payload size), so a concatenation needs no framing.
type Server struct {
	log     *slog.Logger
	m       *ServerMetrics
	store   *nodeStore
	leases  *leases
	metrics http.Handler

	// The fast path's series, resolved once.
	getOK, getNotFound, putOK, putBad prometheus.Counter
	getLatency, putLatency            prometheus.Observer
	// Connection timeouts (idleTimeout, headerTimeout; tests shorten them).
	idleTimeout, headerTimeout time.Duration
	// handoffs counts connections the fast path passed to net/http.
	handoffs prometheus.Counter

	tls        *tls.Config
	tlsRefused prometheus.Counter // connections refused at the TLS handshake
	bodies     *bodyBudget
}

// NewServer creates a node; with a DiskDir it scans the directory first.
func NewServer(c ServerConfig) (*Server, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("configuring cache node: %w", err)
	}
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(slog.String("component", "cachenode"))
	reg := c.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := NewServerMetrics(reg)
	handoffs := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "lode_cachenode_handoffs_total",
		Help: "Connections the shard fast path passed to net/http at a request it does not serve (/metrics, /healthz, HEAD, chunked or oversized PUTs, unusual headers).",
	})
	if err := reg.Register(handoffs); err != nil {
		return nil, fmt.Errorf("registering cache node metrics: %w", err)
	}
	tlsRefused := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "lode_cachenode_tls_refused_total",
		Help: "Connections refused at the TLS handshake (no, forged, expired or non-worker client certificate).",
	})
	if err := reg.Register(tlsRefused); err != nil {
		return nil, fmt.Errorf("registering cache node metrics: %w", err)
	}
	st, err := newNodeStore(c.MemBytes, c.DiskDir, c.DiskBytes, log, m)
	if err != nil {
		return nil, err
	}
	return &Server{
		log: log, m: m, store: st, leases: newLeases(), metrics: metrics.Handler(reg),
		getOK:       m.requests.WithLabelValues(http.MethodGet, "200"),
		getNotFound: m.requests.WithLabelValues(http.MethodGet, "404"),
		getLatency:  m.latency.WithLabelValues(http.MethodGet),
		putOK:       m.requests.WithLabelValues(http.MethodPut, "204"),
		putBad:      m.requests.WithLabelValues(http.MethodPut, "400"),
		putLatency:  m.latency.WithLabelValues(http.MethodPut),
		idleTimeout: idleTimeout, headerTimeout: headerTimeout,
		handoffs: handoffs,
		tls:      c.TLS, tlsRefused: tlsRefused, bodies: newBodyBudget(c.PutBudget),
	}, nil
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// ReadFrom passes io.Copy through to net/http's ReadFrom, which sends a
// file (or an io.LimitedReader of one) with sendfile(2).
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) { return io.Copy(w.ResponseWriter, r) }

// Unwrap serves http.ResponseController.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP implements the API above.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
		return
	case "/metrics":
		s.metrics.ServeHTTP(w, r)
		return
	}
	if strings.HasPrefix(r.URL.Path, fleetproto.LeasePrefix) {
		s.serveLease(w, r)
		return
	}
	if !strings.HasPrefix(r.URL.Path, fleetproto.ShardPrefix) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
	s.serveShard(sw, r)
	s.m.requests.WithLabelValues(r.Method, strconv.Itoa(sw.code)).Inc()
	s.m.latency.WithLabelValues(r.Method).Observe(time.Since(start).Seconds())
}

func (s *Server) serveShard(w http.ResponseWriter, r *http.Request) {
	// Escaped forms (%2F, %41…) are refused rather than decoded: a shard
	// path has exactly one spelling.
	if r.URL.RawPath != "" || r.URL.RawQuery != "" {
		http.Error(w, "shard path must not be escaped or carry a query", http.StatusBadRequest)
		return
	}
	n, i, err := fleetproto.ParseShardPath(r.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if i < 0 {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		s.getAll(w, n)
		return
	}
	k := shardKey{n, uint8(i)}
	switch r.Method {
	case http.MethodGet:
		ref, ok := s.store.open(k)
		if !ok {
			http.Error(w, "shard not found", http.StatusNotFound)
			return
		}
		defer ref.close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(ref.size, 10))
		w.WriteHeader(http.StatusOK)
		writeShard(w, ref)
	case http.MethodHead:
		size, ok := s.store.has(k)
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(http.StatusOK)
	case http.MethodPut:
		s.put(w, r, n, i, k)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// getAll answers with every shard of n the node holds, concatenated (each
// is self-delimiting). Shards held only on disk are checked (header and
// length) before the status line is sent and then copied from their files
// with sendfile; memory shards are written from memory.
func (s *Server) getAll(w http.ResponseWriter, n chunk.Name) {
	refs := s.store.openAll(n)
	defer func() {
		for _, r := range refs {
			r.close()
		}
	}()
	if len(refs) == 0 {
		http.Error(w, "no shards of chunk", http.StatusNotFound)
		return
	}
	var size int64
	for _, r := range refs {
		size += r.size
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	for _, r := range refs {
		if !writeShard(w, r) {
			return
		}
	}
}

// writeShard sends one shard's bytes after the status line; false when the
// response broke off (the client then sees a short body, never wrong
// bytes). Errors are not logged: most are clients that went away.
func writeShard(w http.ResponseWriter, r shardRef) bool {
	n, err := r.writeTo(w)
	return err == nil && n == r.size
}

func (s *Server) put(w http.ResponseWriter, r *http.Request, n chunk.Name, i int, k shardKey) {
	if r.ContentLength > fleetproto.MaxShardSize {
		http.Error(w, fmt.Sprintf("shard of %d bytes exceeds %d", r.ContentLength, fleetproto.MaxShardSize), http.StatusRequestEntityTooLarge)
		return
	}
	body := http.MaxBytesReader(w, r.Body, fleetproto.MaxShardSize)
	data, release, err := s.bodies.read(r.Context(), body, r.ContentLength)
	defer release()
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) || errors.Is(err, errBodyTooLarge) {
			http.Error(w, fmt.Sprintf("shard exceeds %d bytes", fleetproto.MaxShardSize), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "reading shard body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := checkPutShard(data, n, i); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.store.put(k, data)
	s.leases.release(n)
	w.WriteHeader(http.StatusNoContent)
}

// checkPutShard checks a PUT body: a well-formed shard whose header names
// chunk n, shard i.
func checkPutShard(data []byte, n chunk.Name, i int) error {
	h, _, err := fleetproto.ParseShard(data)
	if err != nil {
		return err
	}
	if h.Name != n || h.Index != i {
		return fmt.Errorf("shard header names chunk %s shard %d, path chunk %s shard %d", h.Name, h.Index, n, i)
	}
	return nil
}

// Serve answers HTTP on l until ctx is cancelled, then shuts down gracefully
// (in-flight requests get up to 5 s). Shard GETs and PUTs are answered by
// the fast path (fastpath.go), everything else by net/http.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hl := newHandoffListener(l.Addr())
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.headerTimeout,
		IdleTimeout:       s.idleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	fs := newFastServer(s, hl)
	httpc := make(chan error, 1)
	go func() { httpc <- hs.Serve(hl) }()
	fastc := make(chan error, 1)
	go func() { fastc <- fs.serve(l) }()
	var err error
	select {
	case err = <-fastc:
		err = fmt.Errorf("serving cache node on %s: %w", l.Addr(), err)
		fastc <- nil
	case <-ctx.Done():
	}
	fs.closing.Store(true)
	l.Close()
	<-fastc
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { fs.shutdown(sctx) })
	if serr := hs.Shutdown(sctx); serr != nil && err == nil {
		err = fmt.Errorf("shutting down cache node on %s: %w", l.Addr(), serr)
	}
	wg.Wait()
	<-httpc
	s.store.closeFiles()
	return err
}
