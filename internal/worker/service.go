package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// A Service is an extra server that runs with a daemon's lifecycle on a
// unix socket of its own (mode 0600): the containerd snapshotter's gRPC
// server is one. Run listens on Socket once the control socket serves and
// calls Serve in a goroutine; ctx ends when the daemon shuts down or is
// taken over (before the new daemon listens on the same sockets), and
// Serve must then return. A gRPC server's Serve is
//
//	func(ctx context.Context, l net.Listener) error {
//		go func() { <-ctx.Done(); s.GracefulStop() }()
//		return s.Serve(l)
//	}
type Service struct {
	Name   string // for logs
	Socket string
	Serve  func(ctx context.Context, l net.Listener) error
	// Status, if set, is the service's part of the daemon's status: a
	// value for GET /v1/status and the lines lode agent status prints.
	Status func(ctx context.Context) (v any, text string)
}

// ServiceStatus is a service's part of Status.
type ServiceStatus struct {
	Name   string `json:"name"`
	Status any    `json:"status,omitempty"`
	Text   string `json:"text,omitempty"`
}

// ErrSourceMismatch refuses a mount whose image's manifest does not record
// the source digest the request names (MountRequest.Source).
var ErrSourceMismatch = errors.New("the image was not built from the requested source")

func (d *Daemon) servicesStatus() []ServiceStatus {
	d.mu.Lock()
	services := append([]Service(nil), d.services...)
	d.mu.Unlock()
	var out []ServiceStatus
	for _, s := range services {
		if s.Status != nil {
			v, text := s.Status(context.Background())
			out = append(out, ServiceStatus{Name: s.Name, Status: v, Text: text})
		}
	}
	return out
}

// Registerer is the daemon's metrics registry, for its services' metrics.
func (d *Daemon) Registerer() prometheus.Registerer { return d.reg }

// AddService registers s with d; call it before Run.
func (d *Daemon) AddService(s Service) {
	d.mu.Lock()
	d.services = append(d.services, s)
	d.mu.Unlock()
}

// startServices listens on every service's socket and serves it; stop
// ends them all and waits (it may be called more than once).
func (d *Daemon) startServices() (stop func(), err error) {
	d.mu.Lock()
	services := append([]Service(nil), d.services...)
	d.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}
	for _, s := range services {
		l, err := listenSocket(s.Socket)
		if err != nil {
			stop()
			return nil, fmt.Errorf("service %s: %w", s.Name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Serve(ctx, l); err != nil && ctx.Err() == nil {
				d.log.Error("service stopped", slog.String("service", s.Name), slog.String("socket", s.Socket), slog.Any("err", err))
			}
			l.Close()
		}()
	}
	return stop, nil
}

// MountImage mounts tenant's image read-only at dir through the daemon,
// as POST /v1/mounts does: the mount shares the daemon's caches, appears in
// its status, follows repoints and is handed over by a takeover. release
// unmounts it (an error if it was already unmounted from outside).
func (d *Daemon) MountImage(ctx context.Context, tenant, image, dir string) (release func() error, err error) {
	return d.Mount(ctx, MountRequest{Image: image, Tenant: tenant, Dir: dir})
}

// Mount is MountImage for a full request (MountRequest.Source).
func (d *Daemon) Mount(ctx context.Context, req MountRequest) (release func() error, err error) {
	tenant, image, dir := req.Tenant, req.Image, req.Dir
	if tenant == "" {
		tenant = d.tenant
	}
	if image == "" || !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("a mount needs an image and an absolute dir, got image %q dir %q", image, dir)
	}
	dir = filepath.Clean(dir)
	s, err := d.startMount(ctx, MountRequest{Image: image, Tenant: tenant, Dir: dir, Source: req.Source}, dir)
	if err != nil {
		return nil, err
	}
	return func() error {
		d.mu.Lock()
		if d.mounts[dir] != s {
			d.mu.Unlock()
			return fmt.Errorf("%s is no longer mounted by this agent", dir)
		}
		delete(d.mounts, dir)
		d.mu.Unlock()
		return s.close()
	}, nil
}

// Unmount unmounts the daemon's mount at dir, however it was made (also
// one taken over from an earlier daemon).
func (d *Daemon) Unmount(dir string) error {
	dir = filepath.Clean(dir)
	d.mu.Lock()
	s, ok := d.mounts[dir]
	if ok && s.mount != nil {
		delete(d.mounts, dir)
	}
	d.mu.Unlock()
	if !ok || s.mount == nil {
		return fmt.Errorf("%s is not mounted by this agent", dir)
	}
	return s.close()
}

// Listen listens on addr: HOST:PORT, or unix:PATH (a stale socket at PATH
// is replaced; any other file there is an error). A unix socket is mode
// 0600: only its owner (root, for a worker) may connect.
func Listen(addr string) (net.Listener, error) { return ListenMode(addr, 0o600) }

// umaskMu orders ListenMode's umask changes.
var umaskMu sync.Mutex

// ListenMode is Listen with the unix socket's mode (--socket-mode). The
// socket is created under umask 0177, so it is never, even for a moment,
// connectable by others, then set to mode.
func ListenMode(addr string, mode os.FileMode) (net.Listener, error) {
	p, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(p); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("unix:%s exists and is not a socket", p)
		}
		os.Remove(p)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	umaskMu.Lock()
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", p)
	syscall.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(p, mode.Perm()); err != nil {
		l.Close()
		return nil, fmt.Errorf("setting mode %04o on %s: %w", mode.Perm(), p, err)
	}
	return l, nil
}

// LimitMemory sets the Go runtime's soft memory limit to budget plus a
// fixed allowance for everything that is not cache (buffers in flight, the
// runtime, metrics), unless GOMEMLIMIT is set. Without it the heap grows to
// about twice the live caches before a collection: the reliability soak
// measured an agent with a 64 MiB memory cache at 231 MiB and a cache node
// with a 128 MiB budget at 291 MiB.
func LimitMemory(budget int64, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" || budget <= 0 {
		return
	}
	const allowance = 192 << 20
	debug.SetMemoryLimit(budget + allowance)
	log.Debug("memory limit set", "bytes", budget+allowance)
}

var errShuttingDown = errors.New("the agent is shutting down")
